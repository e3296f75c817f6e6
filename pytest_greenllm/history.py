"""A baseline from history: the most recent matching reports of a folder, pooled.

A CI gate judged against one earlier run inherits that run's noise. Pooling the repeats of
the last N reports whose setup matches (the windowed statistics Bencher sets its thresholds
with) gives the regression test a reference distribution with more power against noise.
Reports from another setup (GPU model, device kind, power limit, model) are refused and
named, as are files that are not reports.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_greenllm.record import GATED_METRICS, PointRecord, Report
from pytest_greenllm.report import ReportError, SetupMismatch, check_setup, load_report

DEFAULT_HISTORY = 5


class HistoryError(ReportError):
    """No usable baseline; the message says what was found and why it was refused."""


@dataclass
class History:
    """The baseline to compare with, and how it was put together."""

    report: Report  # the newest report; its points' summaries hold the pooled repeats
    used: list[Path]
    refused: list[tuple[Path, str]] = field(default_factory=list)

    def lines(self) -> list[str]:
        """What was used and refused, to print above a comparison."""
        out = [f"baseline: {', '.join(str(p) for p in self.used)}"]
        out += [f"refused {path}: {why}" for path, why in self.refused]
        return out


def _pool(reports: list[Report]) -> Report:
    """The newest report, each of its points holding every report's repeats of the gated
    metrics (and their means), grouped by report in ``summary.runs``; points only older
    reports have are added."""
    pooled: dict[str, tuple[PointRecord, dict[str, list[float | None]], list[int]]] = {}
    for report in reports:
        for point in report.points:
            _, repeats, runs = pooled.setdefault(point.id, (point, {}, []))
            sizes = {len(metric.repeats(point.summary)) for metric in GATED_METRICS}
            if len(sizes) != 1:
                raise HistoryError(f"point {point.id}: its gated metrics have different repeat counts")
            runs.append(sizes.pop())
            for metric in GATED_METRICS:
                repeats.setdefault(metric.key, []).extend(metric.repeats(point.summary))
    points = []
    for point, repeats, runs in pooled.values():
        changes: dict[str, Any] = {"runs": tuple(runs)}
        for metric in GATED_METRICS:
            values = repeats[metric.key]
            known = [v for v in values if v is not None]
            changes[metric.key] = statistics.fmean(known) if known else None
            changes[metric.repeats_key or metric.key] = tuple(values)
        points.append(dataclasses.replace(point, summary=dataclasses.replace(point.summary, **changes)))
    return dataclasses.replace(reports[0], points=tuple(points))


def load_history(
    path: Path,
    head_fingerprint: dict[str, Any],
    allow_mismatch: bool = False,
    limit: int = DEFAULT_HISTORY,
) -> History:
    """The baseline at ``path``: one report, or the ``limit`` most recent matching reports of
    a folder (searched recursively, journals ignored)."""
    if path.is_file():
        report = load_report(path)
        check_setup(report.fingerprint, head_fingerprint, str(path), allow=allow_mismatch)
        return History(report, [path])
    if not path.is_dir():
        raise HistoryError(f"{path}: no such report or folder")
    candidates: list[tuple[str, Path, Report]] = []
    refused: list[tuple[Path, str]] = []
    for file in sorted(path.rglob("*.json")):
        try:
            report = load_report(file)
            check_setup(report.fingerprint, head_fingerprint, str(file), allow=allow_mismatch)
        except SetupMismatch as e:
            refused.append((file, f"another setup ({'; '.join(e.differences)})"))
            continue
        except ReportError as e:
            refused.append((file, str(e).removeprefix(f"{file}: ")))
            continue
        candidates.append((report.created, file, report))
    if not candidates:
        found = "; ".join(f"{p}: {why}" for p, why in refused) or "no reports"
        raise HistoryError(f"{path}: no usable baseline report ({found})")
    candidates.sort(key=lambda c: c[0], reverse=True)
    chosen = candidates[:limit]
    return History(_pool([c[2] for c in chosen]), [c[1] for c in chosen], refused)
