"""``greenllm compare``: every point two reports share, with deltas and verdicts."""

from __future__ import annotations

from dataclasses import dataclass, field

from tabulate import tabulate

from pytest_greenllm.gate import INCONCLUSIVE, OK, REGRESSED, point_verdict
from pytest_greenllm.noise import NoiseProfile
from pytest_greenllm.record import (
    AVG_POWER,
    J_PER_TOKEN,
    OUTPUT_THROUGHPUT,
    TBT_P99,
    TTFT_P99,
    Report,
    Summary,
    SummaryMetric,
    energy_regressions,
)
from pytest_greenllm.report import ReportError, check_setup
from pytest_greenllm.verdicts import Regression


class CompareError(ReportError):
    """Two reports that cannot be compared; the message says why (exit status 2)."""


# The changes every comparison row shows, in column order.
DELTAS = (J_PER_TOKEN, AVG_POWER, TTFT_P99, TBT_P99, OUTPUT_THROUGHPUT)


@dataclass(frozen=True)
class Row:
    """One point both reports hold."""

    id: str
    base_j_per_token: float | None  # Units: J/token.
    head_j_per_token: float | None  # Units: J/token.
    deltas: tuple[float | None, ...]  # relative change of each of DELTAS; None: unknown
    verdict: str  # REGRESSED, improved, ok, inconclusive or 'no energy'
    method: str  # of the regression test, '-' without one
    repeats: str  # baseline vs head repeats judged, '-' without a test


@dataclass
class Comparison:
    """The outcome of comparing a head report with a base report."""

    rows: list[Row]
    only_base: list[str]
    only_head: list[str]
    notes: list[str] = field(default_factory=list)  # fingerprint differences, listed first

    @property
    def regressed(self) -> list[str]:
        return [r.id for r in self.rows if r.verdict == "REGRESSED"]

    @property
    def inconclusive(self) -> list[str]:
        return [r.id for r in self.rows if r.verdict == INCONCLUSIVE]


def _delta(metric: SummaryMetric, base: Summary, head: Summary) -> float | None:
    before, now = metric.of(base), metric.of(head)
    if before is None or now is None or before == 0:
        return None
    return now / before - 1


def _verdict(regressions: list[Regression], tolerance: float) -> str:
    verdict = point_verdict([r.outcome for r in regressions])
    if verdict is None:
        return "no energy"
    if verdict == REGRESSED:
        return "REGRESSED"
    if verdict == OK and all(r.increase < -tolerance for r in regressions):
        return "improved"
    return verdict


def recorded_looks(report: Report) -> tuple[int, ...]:
    """The repeat counts the plugin judged ``report``'s points at (sequential repeats), so
    that a comparison reaches the verdict the plugin did; () for a fixed count or a report
    that does not say."""
    looks = report.settings.get("looks")
    if isinstance(looks, list) and looks and all(isinstance(n, int) and n >= 1 for n in looks):
        return tuple(looks)
    return ()


def compare_reports(
    base: Report,
    head: Report,
    tolerance: float,
    allow_mismatch: bool = False,
    noise: NoiseProfile | None = None,
) -> Comparison:
    """Judge J/output-token and average power of shared points over their repeats, with the
    gate of gate.py, at the looks ``head`` records (recorded_looks). A ``base`` pooled from
    several reports (``summary.runs``) and a ``noise`` profile add the run-to-run noise."""
    differences = check_setup(base.fingerprint, head.fingerprint, "the base", allow=allow_mismatch)
    base_points = {p.id: p.summary for p in base.points}
    head_points = {p.id: p.summary for p in head.points}
    shared = [i for i in head_points if i in base_points]
    if not shared:
        raise CompareError("the reports share no knob point: nothing to compare")
    rows = []
    looks = recorded_looks(head)
    profile = None if noise is None else noise.metrics
    for point_id in shared:
        b, h = base_points[point_id], head_points[point_id]
        regressions = energy_regressions(
            b, h, tolerance, looks if len(h.j_per_output_token_repeats) in looks else (), profile
        )
        counts = {f"{r.repeats[0]} vs {r.repeats[1]}" for r in regressions if r.repeats}
        rows.append(
            Row(
                point_id,
                J_PER_TOKEN.of(b),
                J_PER_TOKEN.of(h),
                tuple(_delta(metric, b, h) for metric in DELTAS),
                _verdict(regressions, tolerance),
                regressions[0].method if regressions else "-",
                ", ".join(sorted(counts)) or "-",
            )
        )
    notes = [f"setups differ: {line}" for line in differences]
    return Comparison(
        rows,
        sorted(set(base_points) - set(head_points)),
        sorted(set(head_points) - set(base_points)),
        notes,
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"


def render(comparison: Comparison, markdown: bool) -> str:
    """The comparison as a plain or a GitHub-flavoured markdown table, notes first."""
    headers = (
        "point",
        "J/tok base",
        "J/tok head",
        "J/tok",
        "avg W",
        "TTFT p99",
        "TBT p99",
        "out tok/s",
        "repeats",
        "verdict",
    )
    rows = [
        (
            r.id,
            r.base_j_per_token,
            r.head_j_per_token,
            *(_pct(delta) for delta in r.deltas),
            r.repeats,
            f"**{r.verdict}**" if markdown and r.verdict == "REGRESSED" else r.verdict,
        )
        for r in comparison.rows
    ]
    lines = [f"- {note}" if markdown else note for note in comparison.notes]
    if markdown:
        lines.insert(0, "### Energy comparison (pytest-greenllm)")
    table = tabulate(
        rows, headers=headers, tablefmt="github" if markdown else "simple", floatfmt=".4g", missingval="-"
    )
    lines += ["", table, ""] if markdown else [table]
    regressed = comparison.regressed
    lines.append(
        f"{len(regressed)} of {len(comparison.rows)} shared points regressed"
        + (f": {', '.join(regressed)}" if regressed else "")
    )
    methods = sorted({r.method for r in comparison.rows if r.method != "-"})
    if methods:
        lines.append(f"energy judged by the gate of docs/gate.md, noise from: {', '.join(methods)}")
    inconclusive = comparison.inconclusive
    if inconclusive:
        lines.append(
            f"{len(inconclusive)} inconclusive (the repeats are too few for their noise; more "
            f"repeats, or --greenllm-repeats=auto, settle them): {', '.join(inconclusive)}"
        )
    if comparison.only_base:
        lines.append(f"only in base (not compared): {', '.join(comparison.only_base)}")
    if comparison.only_head:
        lines.append(f"only in head (not compared): {', '.join(comparison.only_head)}")
    return "\n".join(lines)
