"""A baseline from history: the most recent matching reports of a folder, pooled.

A CI gate judged against one earlier run inherits that run's noise. Pooling the repeats of
the last N reports whose setup matches (the windowed statistics Bencher sets its thresholds
with) gives the regression test a reference distribution with more power against noise.
Reports from another setup (GPU model, device kind, power limit, model) are refused and
named, as are files that are not reports.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_greenllm.report import ReportError, fingerprint_differences, load_report

DEFAULT_HISTORY = 5
POOLED = ("j_per_output_token", "avg_power_w")


class HistoryError(ValueError):
    """No usable baseline; the message says what was found and why it was refused."""


@dataclass
class History:
    """The baseline to compare with, and how it was put together."""

    report: dict[str, Any]  # a report-shaped dict; summaries hold the pooled repeats
    used: list[Path]
    refused: list[tuple[Path, str]] = field(default_factory=list)

    def lines(self) -> list[str]:
        """What was used and refused, to print above a comparison."""
        out = [f"baseline: {', '.join(str(p) for p in self.used)}"]
        out += [f"refused {path}: {why}" for path, why in self.refused]
        return out


def _pool(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report whose points hold every report's repeats of the gated metrics."""
    points: dict[str, dict[str, Any]] = {}
    for report in reports:
        for point in report["points"]:
            pooled = points.setdefault(
                point["id"], {"id": point["id"], "summary": dict(point["summary"]), "sources": 0}
            )
            pooled["sources"] += 1
            if pooled["sources"] == 1:
                continue
            for metric in POOLED:
                key = f"{metric}_repeats"
                pooled["summary"][key] = list(pooled["summary"].get(key) or []) + list(
                    point["summary"].get(key) or []
                )
    for pooled in points.values():
        for metric in POOLED:
            values = pooled["summary"].get(f"{metric}_repeats") or []
            pooled["summary"][metric] = statistics.fmean(values) if values else None
    newest = reports[0]
    return {**newest, "points": list(points.values())}


def load_history(
    path: Path,
    head_fingerprint: dict[str, Any],
    allow_mismatch: bool = False,
    limit: int = DEFAULT_HISTORY,
    mismatch_flag: str = "--allow-mismatch",
) -> History:
    """The baseline at ``path``: one report, or the ``limit`` most recent matching reports of
    a folder (searched recursively, journals ignored)."""
    if path.is_file():
        report = load_report(path)
        energy, _ = fingerprint_differences(report["fingerprint"], head_fingerprint)
        if energy and not allow_mismatch:
            raise HistoryError(
                f"{path} was measured on another setup ({'; '.join(energy)}); comparing energy "
                f"across it means nothing ({mismatch_flag} to compare anyway)"
            )
        return History(report, [path])
    if not path.is_dir():
        raise HistoryError(f"{path}: no such report or folder")
    candidates: list[tuple[str, Path, dict[str, Any]]] = []
    refused: list[tuple[Path, str]] = []
    for file in sorted(path.rglob("*.json")):
        try:
            report = load_report(file)
        except ReportError as e:
            refused.append((file, str(e).removeprefix(f"{file}: ")))
            continue
        energy, _ = fingerprint_differences(report["fingerprint"], head_fingerprint)
        if energy and not allow_mismatch:
            refused.append((file, f"another setup ({'; '.join(energy)})"))
            continue
        candidates.append((str(report.get("created", "")), file, report))
    if not candidates:
        found = "; ".join(f"{p}: {why}" for p, why in refused) or "no reports"
        raise HistoryError(f"{path}: no usable baseline report ({found})")
    candidates.sort(key=lambda c: c[0], reverse=True)
    chosen = candidates[:limit]
    return History(_pool([c[2] for c in chosen]), [c[1] for c in chosen], refused)
