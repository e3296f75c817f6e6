"""Finished points of a session: their verdicts, the journal, the report at the end."""

from __future__ import annotations

import dataclasses
import math
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pytest_greenllm.config import Settings, slo_for
from pytest_greenllm.gate import INCONCLUSIVE, point_verdict
from pytest_greenllm.history import History, load_history
from pytest_greenllm.knobs import KnobPoint
from pytest_greenllm.noise import NoiseProfile
from pytest_greenllm.point_slos import certifying_requests, judge_slos, percentile_limits
from pytest_greenllm.record import PointRecord, PointResult, Report, Verdicts, energy_regressions
from pytest_greenllm.report import Journal, check_setup, write_report
from pytest_greenllm.verdicts import Regression, Slo, goodput
from pytest_greenllm.workloads import request_count

AUTOSAVE_DIR = ".greenllm"


@dataclass
class Results:
    """The session's finished points, the journal they go to, and the baseline."""

    settings: Settings
    journal: Journal
    baseline: Report | None = None
    resumed: dict[str, PointRecord] = field(default_factory=dict)
    # The default SLOs describe GPU serving; on the CPU backend only the user's apply.
    default_slos_apply: bool = True
    records: list[PointRecord] = field(default_factory=list)
    # A parallel worker's points go to the controller, which alone writes the journal.
    writes_journal: bool = True
    # The box's run-to-run noise (greenllm calibrate), which the gate adds to the repeats'.
    noise: NoiseProfile | None = None

    def slo_for(self, workload: str) -> Slo:
        """The SLO a point of ``workload`` is held to here: on the CPU only the user's."""
        if not self.settings.slos_given and not self.default_slos_apply:
            return Slo()
        return slo_for(self.settings, workload)

    def passes_for(self, point: KnobPoint) -> int:
        """The fewest passes of ``point``'s requests per repeat: 1; with requests 'auto' and
        a p99 SLO to check, enough for the requests pooled over the fewest repeats to
        certify it (point_slos.py). More passes, not more requests a pass: in a closed loop
        every request of a pass is sent at once, and a longer queue would raise the TTFT
        being judged."""
        if self.settings.requests is not None or not percentile_limits(self.slo_for(point.workload.name)):
            return 1
        count = request_count(point.batch, self.settings.requests)
        needed = certifying_requests(self.settings.slo_confidence)
        return math.ceil(needed / (count * self.settings.repeats))

    def judge(self, record: PointRecord) -> Verdicts:
        """SLOs (every request of every repeat pooled), goodput and, with a baseline, the
        regression test of one point."""
        slo = self.slo_for(record.point.workload.name)
        ttft: list[float] = []
        tpot: list[float | None] = []
        e2el: list[float] = []
        duration = 0.0
        requests = 0
        energy: float | None = 0.0
        for repeat in record.repeats:
            requests += repeat.metrics.requests
            ttft += repeat.metrics.request_ttft_ms
            tpot += repeat.metrics.request_tpot_ms
            e2el += repeat.metrics.request_e2el_ms
            duration += repeat.metrics.duration_s
            energy = None if repeat.energy is None or energy is None else energy + repeat.energy.energy_j
        return Verdicts(
            (),
            tuple(self._regressions(record)),
            goodput(ttft, tpot, e2el, duration, slo, energy, requests),
            judge_slos(record.repeats, slo, self.settings.slo_confidence),
        )

    def _regressions(self, record: PointRecord) -> list[Regression]:
        base = None if self.baseline is None else self.baseline.point(record.id)
        if base is None:
            return []
        # A sequential run is judged with the boundary of every look it could have taken,
        # so that its error rates hold however many it took (gate.py).
        noise = None if self.noise is None else self.noise.metrics
        return energy_regressions(
            base.summary, record.summary, self.settings.energy_tolerance, self.settings.looks, noise
        )

    def settled(self, result: PointResult) -> bool:
        """Whether the energy verdict of a point's repeats so far needs no more repeats:
        no baseline to compare with, or the verdict is not inconclusive."""
        regressions = self._regressions(PointRecord.of(result))
        return point_verdict([r.outcome for r in regressions]) != INCONCLUSIVE

    def record(self, result: PointResult) -> PointRecord:
        """Judge a finished point, keep it, and append it to the journal at once."""
        unjudged = PointRecord.of(result)
        record = dataclasses.replace(unjudged, verdicts=self.judge(unjudged))
        self.keep(record)
        return record

    def keep(self, record: PointRecord) -> None:
        """Keep a judged point (here, or by a parallel worker) and journal it at once."""
        self.records.append(record)
        if self.writes_journal:
            self.journal.append(record)

    def all_points(self, order: list[str]) -> list[PointRecord]:
        """Resumed and new points, each once, in matrix order."""
        by_id = {**self.resumed, **{r.id: r for r in self.records}}
        return [by_id[i] for i in order if i in by_id]

    def baseline_coverage(self, order: list[str]) -> tuple[list[str], list[str]]:
        """(points measured now but not in the baseline, baseline points not measured now)."""
        if self.baseline is None:
            return [], []
        measured = {r.id for r in self.all_points(order)}
        base = {p.id for p in self.baseline.points}
        return sorted(measured - base), sorted(base - measured)


def load_baseline(path: Path, fingerprint: dict[str, Any], allow_mismatch: bool) -> tuple[History, list[str]]:
    """The baseline: one report, or a folder's recent matching reports pooled; the baseline
    of another setup is refused (SetupMismatch). Returns it and notes to print."""
    history = load_history(path, fingerprint, allow_mismatch)
    # What this run does not know yet (the meter's method, until its first window) is no
    # difference to report.
    unknown = {key for key, value in fingerprint.items() if value is None}
    base = {key: value for key, value in history.report.fingerprint.items() if key not in unknown}
    known = {key: value for key, value in fingerprint.items() if key not in unknown}
    differences = check_setup(base, known, str(path), allow=True)
    notes = history.lines() + [f"baseline differs: {line}" for line in differences]
    return history, notes


def autosave_path(root: Path, git: dict[str, Any] | None) -> Path:
    """``.greenllm/<commit>-<time>.json``, like pytest-benchmark's autosave."""
    commit = (git or {}).get("commit", "nogit")[:12]
    dirty = "-dirty" if (git or {}).get("dirty") else ""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return root / AUTOSAVE_DIR / f"{commit}{dirty}-{stamp}.json"


def write_reports(
    report: Report, json_path: Path | None, root: Path, git: dict[str, Any] | None
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Write the report where asked and its autosaved copy, each whatever became of the
    other; returns the paths written and (path, why) for those that could not be."""
    written: list[Path] = []
    failed: list[tuple[Path, str]] = []
    for path in (p for p in (json_path, autosave_path(root, git)) if p is not None):
        try:
            write_report(path, report)
        except OSError as e:
            failed.append((path, e.strerror or str(e)))
        else:
            written.append(path)
    return written, failed


def check_writable(directory: Path) -> str | None:
    """Why files cannot be written in ``directory`` (made if missing), or None if they can."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".greenllm-probe-"):
            pass
    except OSError as e:
        return e.strerror or str(e)
    return None
