"""Finished points of a session: their verdicts, the journal, the report at the end."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pytest_greenllm.config import Settings, slo_for
from pytest_greenllm.history import load_history
from pytest_greenllm.report import (
    Journal,
    fingerprint_differences,
    point_record,
    write_atomic,
)
from pytest_greenllm.runner import PointResult
from pytest_greenllm.verdicts import (
    Regression,
    Slo,
    Violation,
    energy_regressions,
    goodput,
    slo_violations,
)

AUTOSAVE_DIR = ".greenllm"


@dataclass
class Verdict:
    """What one point's figures say against the SLO and the baseline."""

    violations: list[Violation]
    regressions: list[Regression]  # every metric compared, regressed or not
    goodput: dict[str, Any]

    def failures(self, point_id: str) -> list[str]:
        """One line per missed SLO or regression."""
        lines = [v.message(point_id) for v in self.violations]
        lines += [r.message(point_id) for r in self.regressions if r.regressed]
        return lines

    def as_dict(self) -> dict[str, Any]:
        return {
            "slo_met": not self.violations,
            "slo_violations": self.violations,
            "regressions": self.regressions,
            "regressed": any(r.regressed for r in self.regressions),
            "goodput": self.goodput,
        }


@dataclass
class Results:
    """The session's finished points, the journal they go to, and the baseline."""

    settings: Settings
    journal: Journal
    baseline: dict[str, Any] | None = None
    resumed: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The default SLOs describe GPU serving; on the CPU backend only the user's apply.
    default_slos_apply: bool = True
    records: list[dict[str, Any]] = field(default_factory=list)

    def judge(self, result: PointResult, summary: dict[str, Any]) -> Verdict:
        """SLO, goodput and, with a baseline, the regression test of one point."""
        point = result.point
        slo = slo_for(self.settings, point.workload.name)
        if not self.settings.slos_given and not self.default_slos_apply:
            slo = Slo()
        ttft: list[float] = []
        tpot: list[float | None] = []
        e2el: list[float] = []
        duration = 0.0
        energy: float | None = 0.0
        for repeat in result.repeats:
            ttft += repeat.metrics.request_ttft_ms
            tpot += repeat.metrics.request_tpot_ms
            e2el += repeat.metrics.request_e2el_ms
            duration += repeat.metrics.duration_s
            energy = None if repeat.energy is None or energy is None else energy + repeat.energy.energy_j
        good = goodput(ttft, tpot, e2el, duration, slo, energy)
        return Verdict(
            slo_violations(summary, slo),
            self._regressions(point.id, summary),
            {
                "good_requests": good.good_requests,
                "requests": good.requests,
                "share": good.share,
                "requests_per_s": good.requests_per_s,
                "j_per_good_request": good.j_per_good_request,
            },
        )

    def _regressions(self, point_id: str, summary: dict[str, Any]) -> list[Regression]:
        if self.baseline is None:
            return []
        base = next((p for p in self.baseline["points"] if p["id"] == point_id), None)
        if base is None:
            return []
        return energy_regressions(base["summary"], summary, self.settings.energy_tolerance)

    def record(self, result: PointResult) -> tuple[dict[str, Any], Verdict]:
        """Judge a finished point, keep it, and append it to the journal at once."""
        provisional = point_record(result, {})
        verdict = self.judge(result, provisional["summary"])
        record = point_record(result, verdict.as_dict())
        self.records.append(record)
        self.journal.append(record)
        return record, verdict

    def all_points(self, order: list[str]) -> list[dict[str, Any]]:
        """Resumed and new points, each once, in matrix order."""
        by_id = {**self.resumed, **{r["id"]: r for r in self.records}}
        return [by_id[i] for i in order if i in by_id]

    def baseline_coverage(self, order: list[str]) -> tuple[list[str], list[str]]:
        """(points measured now but not in the baseline, baseline points not measured now)."""
        if self.baseline is None:
            return [], []
        measured = {r["id"] for r in self.all_points(order)}
        base = {p["id"] for p in self.baseline["points"]}
        return sorted(measured - base), sorted(base - measured)


def load_baseline(path: Path, fingerprint: dict[str, Any], allow_mismatch: bool) -> tuple[dict[str, Any], list[str]]:
    """The baseline: one report, or a folder's recent matching reports pooled; the baseline
    of another setup is refused (ValueError). Returns it and notes to print."""
    history = load_history(
        path, fingerprint, allow_mismatch, mismatch_flag="--greenllm-allow-mismatch"
    )
    energy, other = fingerprint_differences(history.report["fingerprint"], fingerprint)
    notes = history.lines() + [f"baseline differs: {line}" for line in energy + other]
    return history.report, notes


def autosave_path(root: Path, git: dict[str, Any] | None) -> Path:
    """``.greenllm/<commit>-<time>.json``, like pytest-benchmark's autosave."""
    commit = (git or {}).get("commit", "nogit")[:12]
    dirty = "-dirty" if (git or {}).get("dirty") else ""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return root / AUTOSAVE_DIR / f"{commit}{dirty}-{stamp}.json"


def write_reports(
    report: dict[str, Any], json_path: Path | None, root: Path, git: dict[str, Any] | None
) -> list[Path]:
    """Write the report where asked and its autosaved copy; returns the paths written."""
    paths = [p for p in (json_path, autosave_path(root, git)) if p is not None]
    for path in paths:
        write_atomic(path, report)
    return paths

