"""``greenllm report --html``: the paper's figures of one report, as one self-contained page.

The page needs nothing beyond itself: figures are inline SVG (drawn by :mod:`figures`),
styles inline, no script, no link to anything outside. Every figure is a
``<figure class="greenllm-figure" id="...">``; a family the sweep's axes cannot draw is
one ``<p class="greenllm-omitted">`` line that says why. A fake-device report says so in a
banner at the top of the page and inside every figure.

RQ4, the table: per workload (and load), among the points that meet their SLOs, the least
energy per output token, the least average power and the most output throughput, each
against the *default configuration*. The paper's baseline is the GPUs at their maximum
clock with its default serving set-up, so the default configuration here is the
workload's point at the highest clock (clocks left alone count as the highest: unlocked
GPUs boost to their maximum), then the largest TP, then the largest batch, then the power
limit left alone (else the highest limit). It is the baseline whether or not it meets its
SLOs, and the page says when it does not.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_greenllm import __version__
from pytest_greenllm.figures import (
    FAKE_BANNER,
    FigureSet,
    NamedFigure,
    build_figures,
    clock_mhz,
    distinct,
    figure_png,
    figure_svg,
    value_label,
)
from pytest_greenllm.hints import HintedError
from pytest_greenllm.knobs import AXES, count_of
from pytest_greenllm.record import (
    AVG_POWER,
    J_PER_DECODE_TOKEN,
    J_PER_PREFILL_TOKEN,
    J_PER_TOKEN,
    OUTPUT_THROUGHPUT,
    TBT_P99,
    TTFT_P99,
    Objective,
    PointRecord,
    Report,
    best_per_objective,
)
from pytest_greenllm.report import ReportError

# The best point's other figures, against the default's, in the RQ4 table.
CHANGE_METRICS = (J_PER_TOKEN, AVG_POWER, OUTPUT_THROUGHPUT, TTFT_P99, TBT_P99)
POINT_METRICS = (*CHANGE_METRICS, J_PER_PREFILL_TOKEN, J_PER_DECODE_TOKEN)
# Where each family goes on the page, and its heading.
SECTIONS = (
    ("rq1", "RQ1: the GPU clock"),
    ("rq2", "RQ2: tensor parallelism"),
    ("rq3", "RQ3: batch size x GPU clock"),
    ("rq4", "RQ4: the best configuration per objective"),
    ("pareto", "Pareto frontier"),
    ("phases", "Prefill and decode"),
    ("power-limit", "The power-limit axis"),
)


class OutputError(HintedError):
    """The page or an image cannot be written; the message names the path and why."""


@dataclass(frozen=True)
class Rq4Row:
    """One objective of one workload: its best point that meets its SLOs, and the default."""

    group: str  # the workload (and load, where several)
    objective: Objective
    best: PointRecord | None  # None: no point of the group meets its SLOs and has the figure
    default: PointRecord | None

    @property
    def best_value(self) -> float | None:
        return None if self.best is None else self.objective.metric.of(self.best.summary)

    @property
    def default_value(self) -> float | None:
        return None if self.default is None else self.objective.metric.of(self.default.summary)

    @property
    def improvement(self) -> float | None:
        """How much better the best is than the default, as a fraction of the default's
        figure: the saving for energy and power, the gain for throughput."""
        best, default = self.best_value, self.default_value
        if best is None or default is None or default == 0:
            return None
        lower = self.objective.metric.lower_is_better
        return (default - best) / default if lower else (best - default) / default


def default_configuration(points: Sequence[PointRecord]) -> PointRecord | None:
    """The paper's baseline among ``points`` (one workload's): the highest clock (left
    alone counts highest), then the largest TP, the largest batch, the power limit left
    alone (else the highest)."""

    def rank(p: PointRecord) -> tuple[float, int, int, float]:
        mhz = clock_mhz(p)
        limit = p.point.power_limit_w
        return (
            math.inf if mhz is None else mhz,
            p.point.tp,
            p.point.batch,
            math.inf if limit is None else float(limit),
        )

    return max(points, key=rank, default=None)


def _groups(report: Report) -> dict[str, list[PointRecord]]:
    several_loads = len(distinct(report.points, "load")) > 1
    groups: dict[str, list[PointRecord]] = {}
    for p in report.points:
        name = p.point.workload.name + (f" ({p.point.load.label})" if several_loads else "")
        groups.setdefault(name, []).append(p)
    return groups


def rq4_rows(report: Report) -> list[Rq4Row]:
    """The RQ4 table: per workload (and load), the best point per objective among those that
    meet their SLOs, against the default configuration."""
    rows: list[Rq4Row] = []
    for group, points in _groups(report).items():
        default = default_configuration(points)
        best = best_per_objective([p for p in points if p.slo_met])
        rows.extend(Rq4Row(group, objective, point, default) for objective, point in best)
    return rows


# --- formatting -----------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _number(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.4g}"


def _percent(value: float | None, signed: bool = True) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:+.1%}" if signed else f"{value:.1%}"


def _cell(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value) or "–"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_cell(v)}" for k, v in value.items()) or "–"
    return "–" if value is None else str(value)


def _table(
    rows: Sequence[Sequence[str]],
    headers: Sequence[str],
    table_id: str,
    escaped: bool = False,
    numbers: bool = False,
) -> str:
    """A table; ``numbers``: cells kept on one line (ids and figures read badly broken), the
    table scrolled sideways where the page is too narrow."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{c if escaped else _e(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    kind = "greenllm-table greenllm-numbers" if numbers else "greenllm-table"
    return (
        f'<div class="greenllm-scroll"><table class="{kind}" id="{table_id}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _change(metric: Any, best: PointRecord, default: PointRecord) -> float | None:
    b, d = metric.of(best.summary), metric.of(default.summary)
    return None if b is None or d is None or d == 0 else (b - d) / d


def rq4_html(rows: Sequence[Rq4Row]) -> str:
    """The RQ4 table and the definition of its baseline."""
    body = []
    for row in rows:
        unit = row.objective.metric.unit
        if row.best is None:
            body.append(
                [_e(row.group), _e(row.objective.name), "no point that meets its SLOs has this figure"]
                + ["–"] * (5 + len(CHANGE_METRICS))
            )
            continue
        default = row.default
        default_id = "–" if default is None else _e(default.id)
        if default is not None and not default.slo_met:
            default_id += " (misses its SLOs)"
        saving = row.improvement
        verb = "gain" if not row.objective.metric.lower_is_better else "saving"
        changes = [
            _percent(None if default is None else _change(m, row.best, default)) for m in CHANGE_METRICS
        ]
        body.append(
            [
                _e(row.group),
                _e(row.objective.name),
                _e(row.best.id),
                f"{_number(row.best_value)} {_e(unit)}",
                default_id,
                f"{_number(row.default_value)} {_e(unit)}",
                f"{_percent(saving, signed=False)} {verb}" if saving is not None else "–",
                *changes,
            ]
        )
    headers = [
        "workload",
        "objective",
        "best point (meets its SLOs)",
        "its value",
        "default configuration",
        "default's value",
        "against the default",
        *(f"Δ {m.header}" for m in CHANGE_METRICS),
    ]
    definition = (
        '<p class="greenllm-note">The <em>default configuration</em> is the paper\'s baseline, '
        "the GPUs at their maximum clock: per workload, the point at the highest clock (clocks "
        "left alone count as the highest, since unlocked GPUs boost to their maximum), then "
        "the largest TP, the largest batch, and the power limit left alone (else the highest). "
        "The saving is (default − best) / default for energy and power; the gain is "
        "(best − default) / default for throughput. Δ columns: the best point's figures "
        "against the default's, (best − default) / default.</p>"
    )
    return definition + _table(body, headers, "rq4-table", escaped=True, numbers=True)


def _figure_html(figure: NamedFigure) -> str:
    return (
        f'<figure class="greenllm-figure" id="{_e(figure.id)}" data-family="{_e(figure.family)}">'
        f"{figure_svg(figure.figure, figure.id)}"
        f"<figcaption><strong>{_e(figure.title)}.</strong> {_e(figure.caption)}</figcaption></figure>"
    )


def _axes_html(report: Report) -> str:
    rows: list[list[str]] = []
    for axis in AXES:
        values = distinct(report.points, axis.field)
        rows.append([axis.header, ", ".join(value_label(axis.field, v) for v in values)])
    return _table(rows, ["knob", "values swept"], "knobs")


def _gpus(machine: dict[str, Any]) -> str:
    gpus = machine.get("gpus")
    if not isinstance(gpus, list) or not gpus:
        return "–"
    counts: dict[tuple[str, str], int] = {}
    for gpu in gpus:
        if isinstance(gpu, dict):
            key = (str(gpu.get("name", "?")), _cell(gpu.get("power_limit_w")))
            counts[key] = counts.get(key, 0) + 1
    return "; ".join(f"{n} x {name} (power limit {limit} W)" for (name, limit), n in counts.items())


def _setup_html(report: Report) -> str:
    fingerprint = [[k, _cell(v)] for k, v in report.fingerprint.items()]
    machine = [["gpus", _gpus(report.machine)]] + [
        [k, _cell(v)] for k, v in report.machine.items() if k != "gpus"
    ]
    run = [["device", report.device], ["created", report.created or "–"]]
    if report.git is not None:
        run.append(["git", f"{report.git.get('commit', '?')}{' (dirty)' if report.git.get('dirty') else ''}"])
    run += [[k, _cell(v)] for k, v in report.settings.items() if k not in ("planned", "slos")]
    slos = report.settings.get("slos")
    slo_rows = (
        [
            [w, _cell({k: v for k, v in s.items() if v is not None})]
            for w, s in slos.items()
            if isinstance(s, dict)
        ]
        if isinstance(slos, dict)
        else []
    )
    return (
        '<h3>Fingerprint</h3><p class="greenllm-note">What makes two reports\' energy comparable.</p>'
        + _table(fingerprint, ["field", "value"], "fingerprint")
        + "<h3>Machine</h3>"
        + _table(machine, ["field", "value"], "machine")
        + "<h3>Run and settings</h3>"
        + _table(run, ["field", "value"], "settings")
        + ("<h3>SLOs</h3>" + _table(slo_rows, ["workload", "limits"], "slos") if slo_rows else "")
    )


def _points_html(report: Report) -> str:
    rows = [
        [p.id, "meets" if p.slo_met else "misses", *(_number(m.of(p.summary)) for m in POINT_METRICS)]
        for p in report.points
    ]
    headers = ["point", "SLOs", *(m.header for m in POINT_METRICS)]
    return (
        f"<details><summary>All {len(report.points)} points</summary>"
        + _table(rows, headers, "points", numbers=True)
        + "</details>"
    )


CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 0 auto; max-width: 1250px;
  padding: 0 1.2rem 3rem; color: #1a1a1a; background: #fff; line-height: 1.45; }
h1 { margin-top: 1.2rem; } h2 { border-bottom: 2px solid #ddd; padding-bottom: .2rem; margin-top: 2.2rem; }
.greenllm-fake-banner { position: sticky; top: 0; z-index: 10; background: #B2182B; color: #fff;
  font-weight: bold; padding: .6rem 1rem; margin: 0 -1.2rem; text-align: center; font-size: 1.1rem; }
.greenllm-figure { margin: 1.2rem 0; border: 1px solid #e2e2e2; padding: .6rem; }
.greenllm-figure svg { display: block; width: 100%; height: auto; }
figcaption { font-size: .92rem; color: #333; margin-top: .4rem; }
.greenllm-omitted { color: #6b4e00; background: #fff6dc; border-left: 4px solid #E69F00;
  padding: .4rem .7rem; }
.greenllm-note { font-size: .92rem; color: #333; }
.greenllm-table { border-collapse: collapse; font-size: .85rem; margin: .6rem 0; }
.greenllm-table th, .greenllm-table td { border: 1px solid #d0d0d0; padding: .25rem .5rem; text-align: left;
  vertical-align: top; }
.greenllm-table th { background: #f2f2f2; }
.greenllm-table td { font-variant-numeric: tabular-nums; word-break: break-word; }
.greenllm-numbers td, .greenllm-table td:first-child { white-space: nowrap; word-break: normal; }
.greenllm-scroll { overflow-x: auto; }
"""


def render_page(report: Report, figures: FigureSet, source: str) -> str:
    """The whole page of ``report`` (read from ``source``), with its drawn ``figures``."""
    fake = report.device == "fake"
    met = sum(p.slo_met for p in report.points)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>pytest-greenllm report: {_e(Path(source).name)}</title>",
        f"<style>{CSS}</style></head><body>",
    ]
    if fake:
        parts.append(
            f'<div class="greenllm-fake-banner" id="fake-banner" role="alert">{_e(FAKE_BANNER)}: '
            "every energy and power figure on this page comes from the simulated fake device</div>"
        )
    parts += [
        "<h1>pytest-greenllm report</h1>",
        f'<p class="greenllm-note">{_e(source)}: device <strong>{_e(report.device)}</strong>, '
        f"{len(report.points)} points, {met} meet their SLOs; created {_e(report.created or 'unknown')}; "
        f"drawn by pytest-greenllm {_e(__version__)}. The figures follow "
        "“Towards Greener LLMs” (Stojkovic et al., 2024).</p>",
        _axes_html(report),
    ]
    for family, heading in SECTIONS:
        parts.append(f'<section id="section-{family}"><h2>{_e(heading)}</h2>')
        if family == "rq4":
            parts.append(rq4_html(rq4_rows(report)))
        else:
            drawn, omission = figures.of(family)
            parts.extend(_figure_html(f) for f in drawn)
            if omission is not None:
                parts.append(
                    f'<p class="greenllm-omitted" data-family="{_e(family)}">{_e(omission.reason)}.</p>'
                )
        parts.append("</section>")
    parts += [
        '<section id="section-setup"><h2>Setup</h2>',
        _setup_html(report),
        "<h3>Points</h3>",
        _points_html(report),
        "</section></body></html>",
    ]
    return "\n".join(parts) + "\n"


def draw_report(
    report: Report,
    source: Path,
    html_path: Path,
    png_dir: Path | None = None,
    echo: Callable[[str], None] = print,
) -> list[Path]:
    """Draw ``report`` (read from ``source``) into the page at ``html_path`` and, with
    ``png_dir``, one PNG per figure there; returns the files written. ReportError for a
    report with no points, OutputError for a path that cannot be written, PlotUnavailable
    without matplotlib."""
    if not report.points:
        raise ReportError(f"{source}: the report has no points: nothing to draw")
    if not html_path.parent.is_dir():
        raise OutputError(f"cannot write {html_path}: no folder {html_path.parent}")
    if report.device == "fake":
        echo("greenllm: device: FAKE — every energy figure is simulated, not measured")
    echo(f"greenllm: drawing the figures of {count_of(len(report.points), 'point')}")
    figures = build_figures(report)
    for figure in figures.figures:
        echo(f"greenllm: figure {figure.id}: {figure.title}")
    for omission in figures.omitted:
        echo(f"greenllm: {omission.reason}")
    page = render_page(report, figures, str(source))
    written = []
    try:
        html_path.write_text(page, encoding="utf-8")
    except OSError as e:
        raise OutputError(f"cannot write {html_path} ({e.strerror})") from None
    written.append(html_path)
    echo(f"greenllm: html: {html_path} ({len(figures.figures)} figures, {len(page) // 1024} KiB)")
    if png_dir is not None:
        try:
            png_dir.mkdir(parents=True, exist_ok=True)
            for figure in figures.figures:
                path = png_dir / f"{figure.id}.png"
                figure_png(figure.figure, path)
                written.append(path)
                echo(f"greenllm: png: {path}")
        except OSError as e:
            raise OutputError(f"cannot write PNGs to {png_dir} ({e.strerror})") from None
    return written
