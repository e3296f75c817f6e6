"""``greenllm recommend``: the best configuration per objective, and the Pareto frontier.

The paper's RQ4: among points that meet the SLOs, the least energy per token, the least
average power and the most throughput are usually three different configurations.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tabulate import tabulate

from pytest_greenllm.verdicts import Slo, slo_violations

OBJECTIVES = (
    ("least energy per token", "j_per_output_token", min),
    ("least average power", "avg_power_w", min),
    ("most throughput", "output_throughput", max),
)


class PlotUnavailable(ImportError):
    """matplotlib is missing; the message names the extra to install."""


@dataclass
class Recommendation:
    """What a report recommends."""

    passing: list[dict[str, Any]]  # points that meet the SLOs
    failing: list[str]
    best: list[tuple[str, dict[str, Any] | None]]  # (objective, point) in OBJECTIVES order
    frontier: list[dict[str, Any]]  # J/token vs TBT p99, ascending TBT


def _meets(point: dict[str, Any], slo: Slo | None) -> bool:
    if slo is None:
        return bool(point["verdicts"].get("slo_met", True))
    return not slo_violations(point["summary"], slo)


def pareto_frontier(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Points no other point beats on both J/output-token and p99 TBT (lower is better)."""
    usable = [
        p for p in points
        if p["summary"].get("j_per_output_token") is not None and p["summary"].get("itl_p99_ms") is not None
    ]
    usable.sort(key=lambda p: (p["summary"]["itl_p99_ms"], p["summary"]["j_per_output_token"]))
    frontier: list[dict[str, Any]] = []
    for p in usable:
        if not frontier or p["summary"]["j_per_output_token"] < frontier[-1]["summary"]["j_per_output_token"]:
            frontier.append(p)
    return frontier


def recommend(report: dict[str, Any], slo: Slo | None = None) -> Recommendation:
    """Best points per objective among those meeting ``slo`` (default: the report's verdicts)."""
    passing = [p for p in report["points"] if _meets(p, slo)]
    failing = [p["id"] for p in report["points"] if not _meets(p, slo)]
    best: list[tuple[str, dict[str, Any] | None]] = []
    for name, key, pick in OBJECTIVES:
        candidates = [p for p in passing if p["summary"].get(key) is not None]
        best.append((name, pick(candidates, key=lambda p: p["summary"][key]) if candidates else None))
    return Recommendation(passing, failing, best, pareto_frontier(passing))


def render(rec: Recommendation) -> str:
    """The recommendation as tables."""
    def row(p: dict[str, Any]) -> tuple[Any, ...]:
        s = p["summary"]
        return (p["id"], s["j_per_output_token"], s["avg_power_w"], s["output_throughput"],
                s["ttft_p99_ms"], s["itl_p99_ms"])

    headers = ("point", "J/tok", "avg W", "out tok/s", "TTFT p99 ms", "TBT p99 ms")
    lines = []
    best_rows = [(name, *row(p)) if p else (name, "no point meets the SLOs") for name, p in rec.best]
    lines.append(tabulate(best_rows, headers=("objective", *headers), floatfmt=".4g", missingval="-"))
    lines.append("")
    lines.append("Pareto frontier (J/output-token vs p99 TBT):")
    lines.append(tabulate([row(p) for p in rec.frontier], headers=headers, floatfmt=".4g", missingval="-"))
    lines.append("")
    lines.append(f"{len(rec.passing)} points meet the SLOs, {len(rec.failing)} do not"
                 + (f": {', '.join(rec.failing)}" if rec.failing else ""))
    return "\n".join(lines)


def plot(rec: Recommendation, report: dict[str, Any], path: Path) -> None:
    """J/output-token against p99 TBT, every point, the frontier drawn, as an image."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise PlotUnavailable(
            "plotting needs matplotlib: pip install 'pytest-greenllm[plot]'"
        ) from e
    figure, axes = plt.subplots(figsize=(7, 4.5))
    passing = {p["id"] for p in rec.passing}
    for p in report["points"]:
        s = p["summary"]
        if s.get("j_per_output_token") is None or s.get("itl_p99_ms") is None:
            continue
        ok = p["id"] in passing
        axes.scatter(s["itl_p99_ms"], s["j_per_output_token"], c="tab:green" if ok else "tab:gray",
                     marker="o" if ok else "x")
        axes.annotate(p["id"], (s["itl_p99_ms"], s["j_per_output_token"]), fontsize=7)
    if rec.frontier:
        axes.plot([p["summary"]["itl_p99_ms"] for p in rec.frontier],
                  [p["summary"]["j_per_output_token"] for p in rec.frontier], "g--", label="Pareto frontier")
        axes.legend()
    axes.set_xlabel("p99 time between tokens (ms)")
    axes.set_ylabel("energy per output token (J)")
    title = "pytest-greenllm"
    if report.get("device") == "fake":
        title += " — FAKE DEVICE: simulated energy"
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
