"""``greenllm recommend``: the best configuration per objective, and the Pareto frontier.

The paper's RQ4: among points that meet the SLOs, the least energy per token, the least
average power and the most throughput are usually three different configurations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tabulate import tabulate

from pytest_greenllm.point_slos import judge_slos
from pytest_greenllm.record import (
    AVG_POWER,
    J_PER_TOKEN,
    OUTPUT_THROUGHPUT,
    TBT_P99,
    TTFT_P99,
    Objective,
    PointRecord,
    Report,
    best_per_objective,
)
from pytest_greenllm.slo_verdicts import DEFAULT_CONFIDENCE, INCONCLUSIVE, VIOLATED, point_slo_verdict
from pytest_greenllm.verdicts import Slo

COLUMNS = (J_PER_TOKEN, AVG_POWER, OUTPUT_THROUGHPUT, TTFT_P99, TBT_P99)


class PlotUnavailable(ImportError):
    """matplotlib is missing; the message names the extra to install."""


@dataclass
class Recommendation:
    """What a report recommends."""

    passing: list[PointRecord]  # points not shown to violate the SLOs
    failing: list[str]
    best: list[tuple[Objective, PointRecord | None]]  # in OBJECTIVES order
    frontier: list[PointRecord]  # J/token vs TBT p99, ascending TBT
    unsure: list[str] = field(default_factory=list)  # passing, but not certified to meet them
    confidence: float = DEFAULT_CONFIDENCE


def _slo(point: PointRecord, slo: Slo | None, confidence: float) -> str | None:
    """met, violated or inconclusive: the report's verdict, or ``slo`` judged afresh over
    the point's requests (point_slos.py)."""
    if slo is None:
        return point.slo
    return point_slo_verdict([v.verdict for v in judge_slos(point.repeats, slo, confidence)])


def _meets(point: PointRecord, slo: Slo | None, confidence: float) -> bool:
    """Not shown to violate an SLO; an inconclusive point is a candidate, marked as such."""
    return _slo(point, slo, confidence) != VIOLATED


def _frontier_xy(point: PointRecord) -> tuple[float, float] | None:
    tbt, energy = TBT_P99.of(point.summary), J_PER_TOKEN.of(point.summary)
    return None if tbt is None or energy is None else (tbt, energy)


def pareto_frontier(points: list[PointRecord]) -> list[PointRecord]:
    """Points no other point beats on both J/output-token and p99 TBT (lower is better)."""
    usable = [(xy, p) for p in points if (xy := _frontier_xy(p)) is not None]
    usable.sort(key=lambda xyp: xyp[0])
    frontier: list[PointRecord] = []
    lowest = float("inf")
    for (_, energy), p in usable:
        if energy < lowest:
            frontier.append(p)
            lowest = energy
    return frontier


def recommend(report: Report, slo: Slo | None = None) -> Recommendation:
    """Best points per objective among those not violating ``slo`` (default: the report's
    verdicts), at the confidence the report was judged at."""
    confidence = report.settings.get("slo_confidence")
    if not isinstance(confidence, float) or not 0.5 < confidence < 1:
        confidence = DEFAULT_CONFIDENCE
    verdicts = {p.id: _slo(p, slo, confidence) for p in report.points}
    passing = [p for p in report.points if verdicts[p.id] != VIOLATED]
    failing = [p.id for p in report.points if verdicts[p.id] == VIOLATED]
    unsure = [p.id for p in passing if verdicts[p.id] == INCONCLUSIVE]
    return Recommendation(
        passing, failing, best_per_objective(passing), pareto_frontier(passing), unsure, confidence
    )


def render(rec: Recommendation) -> str:
    """The recommendation as tables."""

    def row(p: PointRecord) -> tuple[object, ...]:
        return (p.id, *(metric.of(p.summary) for metric in COLUMNS))

    headers = ("point", *(metric.header for metric in COLUMNS))
    lines = []
    best_rows = [
        (objective.name, *row(p)) if p else (objective.name, "no point meets the SLOs")
        for objective, p in rec.best
    ]
    lines.append(tabulate(best_rows, headers=("objective", *headers), floatfmt=".4g", missingval="-"))
    lines.append("")
    lines.append("Pareto frontier (J/output-token vs p99 TBT):")
    lines.append(tabulate([row(p) for p in rec.frontier], headers=headers, floatfmt=".4g", missingval="-"))
    lines.append("")
    lines.append(
        f"{len(rec.passing) - len(rec.unsure)} points meet the SLOs at {rec.confidence:.0%} confidence, "
        f"{len(rec.failing)} violate them" + (f": {', '.join(rec.failing)}" if rec.failing else "")
    )
    if rec.unsure:
        lines.append(
            f"{len(rec.unsure)} are candidates whose SLOs are inconclusive (too few requests to "
            f"certify; --greenllm-requests=auto takes enough): {', '.join(rec.unsure)}"
        )
    return "\n".join(lines)


def plot(rec: Recommendation, report: Report, path: Path) -> None:
    """J/output-token against p99 TBT, every point, the frontier drawn, as an image."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise PlotUnavailable("plotting needs matplotlib: pip install 'pytest-greenllm[plot]'") from e
    figure, axes = plt.subplots(figsize=(7, 4.5))
    passing = {p.id for p in rec.passing}
    for p in report.points:
        xy = _frontier_xy(p)
        if xy is None:
            continue
        ok = p.id in passing
        axes.scatter(*xy, c="tab:green" if ok else "tab:gray", marker="o" if ok else "x")
        axes.annotate(p.id, xy, fontsize=7)
    if rec.frontier:
        line = [xy for p in rec.frontier if (xy := _frontier_xy(p)) is not None]
        axes.plot([x for x, _ in line], [y for _, y in line], "g--", label="Pareto frontier")
        axes.legend()
    axes.set_xlabel("p99 time between tokens (ms)")
    axes.set_ylabel("energy per output token (J)")
    title = "pytest-greenllm"
    if report.device == "fake":
        title += " — FAKE DEVICE: simulated energy"
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
