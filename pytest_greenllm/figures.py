"""The paper's figures, drawn from a report with matplotlib: one small function per family.

Each family draws what the sweep's axes allow and says why it drew nothing otherwise:

- RQ1 (``rq1-<workload>``): power, J/output-token, TTFT p99, TBT p99 and output throughput
  against the GPU clock; one line per combination of the other swept knobs.
- RQ2 (``rq2-<workload>``): the same against tensor parallelism.
- RQ3 (``rq3-<workload>``): a batch x clock heatmap of J/output-token, one panel per
  combination of the other swept knobs (TP first), cells that miss their SLOs hatched and a
  line between meeting and missing cells.
- ``pareto``: J/output-token against TBT p99, every point, each workload's Pareto frontier
  (``recommend.pareto_frontier``) over its points that meet their SLOs.
- ``phases``: the prefill/decode split of each point that has one: J per prefill token, J per
  decode token and prefill's share, ± their standard errors, or why they are not identified.
- ``power-limit-<workload>``: the RQ1 panels against the GPU power limit.

matplotlib is the ``plot`` extra: this module imports it only inside :func:`build_figures`,
which raises ``PlotUnavailable`` without it. Figures are ``matplotlib.figure.Figure``
objects made without pyplot, so no global figure list grows and nothing needs closing.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from pytest_greenllm.knobs import AXES_BY_FIELD, Axis
from pytest_greenllm.recommend import PlotUnavailable, pareto_frontier
from pytest_greenllm.record import (
    AVG_POWER,
    J_PER_TOKEN,
    OUTPUT_THROUGHPUT,
    TBT_P99,
    TTFT_P99,
    PointRecord,
    Report,
    SummaryMetric,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FAKE_BANNER = "FAKE DEVICE: simulated energy, not a measurement"
# Okabe & Ito's palette, which reads for every common colour-vision deficiency; yellow last,
# as it is faint on white.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#56B4E9", "#E69F00", "#000000", "#F0E442")
# With the colours, so that lines stay apart in greyscale print.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", ":", "-.")
HEATMAP_CMAP = "viridis"  # perceptually uniform, and monotonic in lightness when printed grey
PANEL_METRICS = (AVG_POWER, J_PER_TOKEN, TTFT_P99, TBT_P99, OUTPUT_THROUGHPUT)
# A line family's x: where a point sits on its axis (None: nowhere, e.g. default clocks).
XValue: TypeAlias = Callable[[PointRecord, Report], float | None]


@dataclass(frozen=True)
class NamedFigure:
    """One drawn figure: ``id`` names it in the page (the element id) and on disk (the PNG)."""

    id: str
    family: str  # rq1, rq2, rq3, pareto, phases, power-limit
    title: str
    caption: str
    figure: Figure


@dataclass(frozen=True)
class Omission:
    """A family the report cannot draw, and why, in one line."""

    family: str
    reason: str


@dataclass(frozen=True)
class FigureSet:
    """Every family of a report: the figures drawn, in page order, and those left out."""

    figures: tuple[NamedFigure, ...]
    omitted: tuple[Omission, ...]

    def of(self, family: str) -> tuple[list[NamedFigure], Omission | None]:
        """The figures of one family, or why there are none."""
        drawn = [f for f in self.figures if f.family == family]
        return drawn, next((o for o in self.omitted if o.family == family), None)


Drawn: TypeAlias = "list[NamedFigure] | Omission"


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError as e:
        raise PlotUnavailable("plotting needs matplotlib: pip install 'pytest-greenllm[plot]'") from e
    return matplotlib


def build_figures(report: Report) -> FigureSet:
    """Every figure family of ``report``; PlotUnavailable without matplotlib."""
    _matplotlib()
    figures: list[NamedFigure] = []
    omitted: list[Omission] = []
    for family in (rq1_clock, rq2_tp, rq3_heatmap, pareto, phases, power_limit):
        drawn = family(report)
        if isinstance(drawn, Omission):
            omitted.append(drawn)
        else:
            figures.extend(drawn)
    return FigureSet(tuple(figures), tuple(omitted))


# --- the sweep's shape ---------------------------------------------------------------------


def slug(text: str) -> str:
    """``text`` as an HTML id and file-name part: letters, digits, '-' and '_' only."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "x"


def distinct(points: Sequence[PointRecord], field: str) -> list[Any]:
    """The values ``points`` take on the axis ``field``: numbers ascending (None, the
    setting left alone, last), anything else in run order."""
    values = list(dict.fromkeys(p.point.value(AXES_BY_FIELD[field]) for p in points))
    if all(v is None or isinstance(v, int) for v in values):
        values.sort(key=lambda v: (v is None, v or 0))
    return values


def value_label(field: str, value: Any) -> str:
    """An axis value as the figures name it: 'tp2', 'b8', '1410 MHz', '300 W', 'S'."""
    if field == "tp":
        return f"tp{value}"
    if field == "batch":
        return f"b{value}"
    if field == "freq_mhz":
        return "default clocks" if value is None else f"{value} MHz"
    if field == "power_limit_w":
        return "default limit" if value is None else f"{value} W"
    return str(AXES_BY_FIELD[field].label(value))


def _varying(points: Sequence[PointRecord], exclude: Sequence[str]) -> list[Axis]:
    fields = ("tp", "batch", "power_limit_w", "freq_mhz", "load", "workload")
    return [AXES_BY_FIELD[f] for f in fields if f not in exclude and len(distinct(points, f)) > 1]


def _key(point: PointRecord, axes: Sequence[Axis]) -> tuple[Hashable, ...]:
    return tuple(point.point.value(axis) for axis in axes)


def _key_label(key: tuple[Hashable, ...], axes: Sequence[Axis]) -> str:
    return " · ".join(value_label(a.field, v) for a, v in zip(axes, key)) or "all points"


def _by_workload(report: Report) -> dict[str, list[PointRecord]]:
    groups: dict[str, list[PointRecord]] = {}
    for p in report.points:
        groups.setdefault(p.point.workload.name, []).append(p)
    return groups


def clock_mhz(point: PointRecord, _: Report | None = None) -> float | None:
    """The clock the point ran at (the locked one, snapped), None at default clocks. Units: MHz."""
    mhz = point.locked_clock_mhz if point.locked_clock_mhz is not None else point.point.freq_mhz
    return None if mhz is None else float(mhz)


def limit_w(point: PointRecord, report: Report) -> float | None:
    """The power limit the point ran under: the one its GPUs reported, else the one asked
    for; left alone, the GPUs' limit before the sweep (the fingerprint's). Units: W."""
    if point.power_limit_w is not None:
        return point.power_limit_w
    if point.point.power_limit_w is not None:
        return float(point.point.power_limit_w)
    before = report.fingerprint.get("power_limit_w")
    return float(before) if isinstance(before, (int, float)) and not isinstance(before, bool) else None


# --- drawing helpers -----------------------------------------------------------------------


def _new_figure(report: Report, width_in: float, height_in: float, title: str) -> Figure:
    from matplotlib.figure import Figure
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    fake = report.device == "fake"
    # Banner and title sit above the layout's box, placed by hand: constrained layout
    # places a suptitle at the figure's top whatever its box, under the banner.
    banner_in, title_in = (0.42 if fake else 0.0), 0.36
    top = 1 - (banner_in + title_in) / height_in
    figure = Figure(figsize=(width_in, height_in), layout=ConstrainedLayoutEngine(rect=(0, 0, 1, top)))
    figure.text(0.5, 1 - (banner_in + 0.06) / height_in, title, ha="center", va="top", fontsize=12)
    if fake:
        # Every figure may travel alone (a slide, a PNG): the warning goes inside each one.
        figure.text(
            0.5,
            0.995,
            FAKE_BANNER,
            ha="center",
            va="top",
            fontsize=11,
            fontweight="bold",
            color="white",
            bbox={"boxstyle": "square,pad=0.3", "facecolor": "#B2182B", "edgecolor": "none"},
        )
    return figure


def _style(index: int) -> dict[str, Any]:
    return {
        "color": PALETTE[index % len(PALETTE)],
        "marker": MARKERS[index % len(MARKERS)],
        "linestyle": LINESTYLES[index % len(LINESTYLES)],
    }


def _ylabel(metric: SummaryMetric) -> str:
    return f"{metric.label} ({metric.unit})"


def _no_data(axes: Axes) -> None:
    axes.text(0.5, 0.5, "no data", transform=axes.transAxes, ha="center", va="center", color="#555555")


# --- RQ1, RQ2 and the power-limit axis: metrics against one knob ---------------------------


def _lines(
    report: Report,
    family: str,
    field: str,
    x_of: XValue,
    x_label: str,
    what: str,
    log2_x: bool = False,
) -> Drawn:
    """One figure per workload: a panel per metric against ``field``'s placed value, a line
    per combination of the other swept knobs."""
    placed = sorted({x for p in report.points if (x := x_of(p, report)) is not None})
    if len(placed) < 2:
        shown = ", ".join(value_label(field, v) for v in distinct(report.points, field))
        return Omission(family, f"{what} left out: the sweep has one {AXES_BY_FIELD[field].header} ({shown})")
    out = []
    for workload, points in _by_workload(report).items():
        series_axes = _varying(points, (field, "workload"))
        series: dict[tuple[Hashable, ...], list[PointRecord]] = {}
        for p in points:
            series.setdefault(_key(p, series_axes), []).append(p)
        figure = _new_figure(report, 11.5, 6.6, f"{what}: workload {workload}")
        grid = figure.subplots(2, 3)
        panels = list(grid.flat)
        for axes, metric in zip(panels, PANEL_METRICS):
            drew = False
            for index, (key, members) in enumerate(series.items()):
                xy = sorted(
                    (x, y)
                    for p in members
                    if (x := x_of(p, report)) is not None and (y := metric.of(p.summary)) is not None
                )
                if xy:
                    drew = True
                    axes.plot(
                        [x for x, _ in xy],
                        [y for _, y in xy],
                        label=_key_label(key, series_axes),
                        linewidth=1.6,
                        markersize=6,
                        **_style(index),
                    )
            if not drew:
                _no_data(axes)
            axes.set_xlabel(x_label)
            axes.set_ylabel(_ylabel(metric))
            axes.grid(True, alpha=0.3)
            if log2_x:
                axes.set_xscale("log", base=2)
            axes.set_xticks(placed, [f"{x:g}" for x in placed])
        legend = panels[-1]
        legend.axis("off")
        handles, labels = panels[0].get_legend_handles_labels()
        if not handles:
            for axes in panels[1:-1]:
                handles, labels = axes.get_legend_handles_labels()
                if handles:
                    break
        if handles:
            title = " · ".join(a.header for a in series_axes) or None
            legend.legend(handles, labels, loc="center", title=title, fontsize=9, frameon=False)
        out.append(
            NamedFigure(
                f"{family}-{slug(workload)}",
                family,
                f"{what}: workload {workload}",
                f"Workload {workload}: {', '.join(m.label for m in PANEL_METRICS)} against "
                f"{x_label}; one line per {_series_noun(series_axes)}.",
                figure,
            )
        )
    return out


def _series_noun(axes: Sequence[Axis]) -> str:
    return " and ".join(a.header for a in axes) or "point"


def rq1_clock(report: Report) -> Drawn:
    """RQ1: the metrics against the GPU clock, per workload."""
    return _lines(
        report, "rq1", "freq_mhz", clock_mhz, "GPU SM clock (MHz)", "RQ1 (metrics against the GPU clock)"
    )


def _tp(point: PointRecord, _: Report) -> float:
    return float(point.point.tp)


def rq2_tp(report: Report) -> Drawn:
    """RQ2: the metrics against tensor parallelism, per workload."""
    return _lines(
        report,
        "rq2",
        "tp",
        _tp,
        "tensor parallelism (GPUs)",
        "RQ2 (metrics against tensor parallelism)",
        True,
    )


def power_limit(report: Report) -> Drawn:
    """The metrics against the GPU power limit, per workload."""
    return _lines(
        report,
        "power-limit",
        "power_limit_w",
        limit_w,
        "GPU power limit (W)",
        "Power limit (metrics against the GPU power limit)",
    )


# --- RQ3: batch x clock ----------------------------------------------------------------------


def _cell_energy(point: PointRecord | None) -> float:
    value = None if point is None else J_PER_TOKEN.of(point.summary)
    return math.nan if value is None else value  # NaN: imshow leaves the cell blank


def rq3_heatmap(report: Report) -> Drawn:
    """RQ3: J/output-token over batch x clock, per workload, a panel per other knob
    combination; cells that miss their SLOs are hatched, with a line between meeting and
    missing cells."""
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    what = "RQ3 (energy over batch size x GPU clock)"
    batches, clocks = distinct(report.points, "batch"), distinct(report.points, "freq_mhz")
    if len(batches) < 2 and len(clocks) < 2:
        return Omission(
            "rq3",
            f"{what} left out: the sweep has one batch size ({batches[0]}) and one clock "
            f"({value_label('freq_mhz', clocks[0])})",
        )
    if all(J_PER_TOKEN.of(p.summary) is None for p in report.points):
        return Omission(
            "rq3", f"{what} left out: no point has an energy per output token (device {report.device})"
        )
    out = []
    for workload, points in _by_workload(report).items():
        panel_axes = _varying(points, ("batch", "freq_mhz", "workload"))
        panels: dict[tuple[Hashable, ...], list[PointRecord]] = {}
        for p in points:
            panels.setdefault(_key(p, panel_axes), []).append(p)
        values = [v for p in points if (v := J_PER_TOKEN.of(p.summary)) is not None]
        norm = Normalize(min(values, default=0.0), max(values, default=1.0))
        columns = min(math.ceil(math.sqrt(len(panels))), 3)
        rows = -(-len(panels) // columns)
        width = max(4.2, 1.1 * len(clocks) + 2.2)
        height = max(3.4, 0.75 * len(batches) + 2.2)
        figure = _new_figure(
            report, width * columns + 1.2, height * rows + 0.9, f"{what}: workload {workload}"
        )
        grid = figure.subplots(rows, columns, squeeze=False)
        image = None
        for axes, (key, members) in zip(grid.flat, panels.items()):
            cell = {(batches.index(p.point.batch), clocks.index(p.point.freq_mhz)): p for p in members}
            matrix = [
                [_cell_energy(cell.get((r, c))) for c in range(len(clocks))] for r in range(len(batches))
            ]
            image = axes.imshow(matrix, cmap=HEATMAP_CMAP, norm=norm, origin="lower", aspect="auto")
            for (r, c), p in cell.items():
                value = J_PER_TOKEN.of(p.summary)
                if not p.slo_met:
                    # White hatching vanishes on viridis's bright end, black on its dark end.
                    bright = value is not None and norm(value) > 0.6
                    axes.add_patch(
                        Rectangle(
                            (c - 0.5, r - 0.5),
                            1,
                            1,
                            fill=False,
                            hatch="///",
                            edgecolor="black" if bright else "white",
                            linewidth=0,
                        )
                    )
                text = "n/a" if value is None else f"{value:.3g}"
                text += "" if p.slo_met else "\nmisses SLO"
                # On a box of its own: readable over any colour and over the hatching.
                axes.text(
                    c,
                    r,
                    text,
                    ha="center",
                    va="center",
                    fontsize=9,
                    bbox={
                        "boxstyle": "round,pad=0.25",
                        "facecolor": "white",
                        "alpha": 0.85,
                        "edgecolor": "none",
                    },
                )
            for r in range(len(batches)):
                for c in range(len(clocks)):
                    here = cell.get((r, c))
                    for dr, dc in ((0, 1), (1, 0)):
                        there = cell.get((r + dr, c + dc))
                        if here is None or there is None or here.slo_met == there.slo_met:
                            continue
                        if dc:  # the vertical edge between two columns
                            xs, ys = [c + 0.5, c + 0.5], [r - 0.5, r + 0.5]
                        else:
                            xs, ys = [c - 0.5, c + 0.5], [r + 0.5, r + 0.5]
                        axes.plot(xs, ys, color="#E69F00", linewidth=3.5, solid_capstyle="butt")
            axes.set_xticks(range(len(clocks)), [value_label("freq_mhz", c) for c in clocks])
            axes.set_yticks(range(len(batches)), [str(b) for b in batches])
            axes.set_xlabel("GPU SM clock (MHz)")
            axes.set_ylabel("batch size (max_num_seqs)")
            axes.set_title(_key_label(key, panel_axes), fontsize=10)
        for axes in list(grid.flat)[len(panels) :]:
            axes.axis("off")
        if image is not None:
            figure.colorbar(image, ax=grid, label="energy per output token (J)", shrink=0.9)
        figure.legend(
            handles=[
                Patch(facecolor="#777777", hatch="///", edgecolor="white", label="misses its SLOs"),
                Line2D([], [], color="#E69F00", linewidth=3.5, label="SLO boundary"),
            ],
            loc="outside lower center",
            ncols=2,
            fontsize=9,
            frameon=False,
        )
        out.append(
            NamedFigure(
                f"rq3-{slug(workload)}",
                "rq3",
                f"{what}: workload {workload}",
                f"Workload {workload}: energy per output token (J) at each batch size and clock"
                + (f", one panel per {_series_noun(panel_axes)}" if panel_axes else "")
                + ". Hatched cells miss their SLOs; the orange line separates them from cells "
                "that meet them.",
                figure,
            )
        )
    return out


# --- the Pareto frontier -------------------------------------------------------------------


def _tbt_energy(point: PointRecord) -> tuple[float, float] | None:
    tbt, energy = TBT_P99.of(point.summary), J_PER_TOKEN.of(point.summary)
    return None if tbt is None or energy is None else (tbt, energy)


def pareto(report: Report) -> Drawn:
    """J/output-token against TBT p99: every point, and each workload's frontier over the
    points that meet their SLOs."""
    what = "Pareto frontier (energy per output token vs p99 TBT)"
    placed = {p.id: xy for p in report.points if (xy := _tbt_energy(p)) is not None}
    if not placed:
        return Omission(
            "pareto", f"{what} left out: no point has both an energy per output token and a p99 TBT"
        )
    figure = _new_figure(report, 9.5, 6.0, what)
    axes = figure.subplots()
    for index, (workload, points) in enumerate(_by_workload(report).items()):
        style = _style(index)
        members = [p for p in points if p.id in placed]
        for met, fill in ((True, style["color"]), (False, "none")):
            chosen = [placed[p.id] for p in members if p.slo_met == met]
            if chosen:
                axes.scatter(
                    [x for x, _ in chosen],
                    [y for _, y in chosen],
                    marker=style["marker"],
                    facecolors=fill,
                    edgecolors=style["color"],
                    s=46,
                    label=f"{workload}: {'meets' if met else 'misses'} its SLOs",
                )
        frontier = pareto_frontier([p for p in members if p.slo_met])
        if frontier:
            axes.plot(
                [placed[p.id][0] for p in frontier],
                [placed[p.id][1] for p in frontier],
                color=style["color"],
                linestyle=style["linestyle"],
                linewidth=1.5,
                # A ring, so that a frontier of one point shows too.
                marker="o",
                markersize=12,
                markerfacecolor="none",
                markeredgecolor="black",
                label=f"{workload}: Pareto frontier",
            )
            for p in frontier:
                axes.annotate(
                    p.id,
                    placed[p.id],
                    xytext=(4, 4),
                    textcoords="offset points",
                    fontsize=7,
                )
    axes.set_xlabel("p99 time between tokens (ms)")
    axes.set_ylabel("energy per output token (J)")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    return [
        NamedFigure(
            "pareto",
            "pareto",
            what,
            "Every point: filled where it meets its SLOs, hollow where it misses them. Each "
            "workload's line joins the points that meet their SLOs and that no other such point "
            "beats on both energy per output token and p99 TBT.",
            figure,
        )
    ]


# --- the prefill/decode split --------------------------------------------------------------

# Each panel: its title, the PhaseSplit field and that field's standard error, the axis label.
PHASE_PANELS = (
    ("J per prefill token", "j_per_prefill_token", "j_per_prefill_token_se", "energy (J/token)"),
    ("J per decode token", "j_per_decode_token", "j_per_decode_token_se", "energy (J/token)"),
    ("prefill's share of token energy", "prefill_share", "prefill_share_se", "share"),
)
REASON_WIDTH = 150  # characters of a 'not identified' line before it wraps


@dataclass(frozen=True)
class _PhaseRow:
    """One point of the phases figure: each panel's mean over the repeats that measured the
    split, with its standard error, or why none did."""

    label: str
    values: tuple[tuple[float, float], ...]  # (mean, standard error) per panel; () if none
    measured: int  # repeats that measured the split
    split: int  # repeats that have one
    reason: str | None  # why no repeat measured it; None where some did


def _phase_row(point: PointRecord) -> _PhaseRow | None:
    """The split of ``point`` over its repeats; None where no repeat has one. The standard
    error of a mean over repeats is sqrt(sum of SE²) / repeats: the error within runs."""
    splits = [r.energy.phases for r in point.repeats if r.energy is not None and r.energy.phases is not None]
    if not splits:
        return None
    measured = [s for s in splits if s.measured]
    if not measured:
        first = splits[0]
        reason = first.reason or (
            f"an earlier version's split (method {first.method!r}), which shared energy among "
            "kinds of step by rule; measure again for a fitted one"
        )
        return _PhaseRow(point.id, (), 0, len(splits), reason)
    values = []
    for _, key, se_key, _ in PHASE_PANELS:
        pairs = [(getattr(s, key), getattr(s, se_key)) for s in measured]
        n = len(pairs)
        values.append((sum(v for v, _ in pairs) / n, math.sqrt(sum(e * e for _, e in pairs)) / n))
    return _PhaseRow(point.id, tuple(values), len(measured), len(splits), None)


def phases(report: Report) -> Drawn:
    """The prefill/decode split of each point that has one: J per prefill token, J per
    decode token and prefill's share of their energy, each ± 2 standard errors; a point
    whose split is not identified shows why instead of a value."""
    what = "Prefill/decode energy split"
    rows = [row for p in report.points if (row := _phase_row(p)) is not None]
    if not rows:
        return Omission(
            "phases",
            f"{what} left out: no point has one (the driver reported no engine steps, or a "
            "source has no energy counter)",
        )
    lines = [len(textwrap.wrap(row.reason, REASON_WIDTH)) if row.reason else 1 for row in rows]
    height = 2.2 + 0.3 * sum(lines)
    figure = _new_figure(report, 12.0, height, what)
    panels = figure.subplots(1, len(PHASE_PANELS), sharey=True)
    # Rows as tall as their text, so that a wrapped reason does not run into the next.
    centres = [sum(lines[:i]) + lines[i] / 2 for i in range(len(rows))]
    labels = [
        row.label
        if row.measured in (0, row.split)
        else f"{row.label}\n({row.measured} of {row.split} repeats)"
        for row in rows
    ]
    panels[0].set_yticks(centres, labels, fontsize=8)
    panels[0].set_ylim(sum(lines), 0)
    for index, (axes, (title, _, _, unit)) in enumerate(zip(panels, PHASE_PANELS)):
        known = [(y, row) for y, row in zip(centres, rows) if row.values]
        means = [row.values[index][0] for _, row in known]
        errors = [2 * row.values[index][1] for _, row in known]
        axes.barh([y for y, _ in known], means, height=0.6, color=PALETTE[index], xerr=errors, capsize=3)
        for (y, _), mean, error in zip(known, means, errors):
            axes.text(mean + error, y, f" {mean:.3g} ± {error / 2:.2g}", va="center", fontsize=7)
        axes.set_xlim(0, max((m + e for m, e in zip(means, errors)), default=1.0) * 1.6)
        axes.locator_params(axis="x", nbins=5)
        axes.set_title(title, fontsize=10)
        axes.set_xlabel(unit)
        axes.grid(True, axis="x", alpha=0.3)
    for y, row in zip(centres, rows):
        if row.reason is not None:
            # A figure's text, over all three panels (their rows are empty there), and out
            # of the layout, so that the panels keep their width whatever its length.
            text = figure.text(
                0.01,
                y,
                textwrap.fill(f"not identified: {row.reason}", REASON_WIDTH),
                transform=panels[0].get_yaxis_transform(),
                va="center",
                fontsize=7.5,
                color="#6b4e00",
                bbox={"boxstyle": "square,pad=0.3", "facecolor": "#fff6dc", "edgecolor": "none"},
            )
            text.set_in_layout(False)
    return [
        NamedFigure(
            "phases",
            "phases",
            what,
            "Energy per prefill token, per decode token, and prefill's share of their energy, fitted "
            "over the energy counter's intervals (energy = a × prefill tokens + b × decode tokens "
            "+ c × seconds; docs/phases.md). Bars: the mean over the repeats that measured the split, "
            "labelled mean ± 1 standard error; whiskers: ± 2 standard errors (about 95%; the error "
            "within runs). A point whose split is not identified says why instead of showing a value.",
            figure,
        )
    ]


def figure_svg(figure: Figure, prefix: str) -> str:
    """The figure as an inline ``<svg>`` element: text kept as text (searchable, and
    smaller than glyph outlines), no metadata, every element id prefixed with ``prefix`` so
    that several figures share one page without clashing ids."""
    import io

    matplotlib = _matplotlib()
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": prefix}):
        figure.savefig(
            buffer, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None}
        )
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}-{m.group(1)}"', svg)
    svg = re.sub(r'href="#([^"]+)"', lambda m: f'href="#{prefix}-{m.group(1)}"', svg)
    return re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{prefix}-{m.group(1)})", svg)


def figure_png(figure: Figure, path: Any) -> None:
    """The figure as a PNG at ``path``."""
    figure.savefig(path, format="png", dpi=110)
