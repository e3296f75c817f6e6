"""``greenllm export``: a report in the formats continuous-benchmarking tools read.

- ``github-action-benchmark``: its ``customSmallerIsBetter`` list for J/output-token,
  average power, p99 TTFT and p99 TBT, and its ``customBiggerIsBetter`` list for output
  throughput (the action takes one tool per step, so these are two files), entries
  ``{"name", "unit", "value", "extra"}``, one per knob point and metric.
- ``bencher``: Bencher Metric Format, ``{benchmark: {measure: {"value": ...}}}``, one
  benchmark per knob point, with ``lower_value``/``upper_value`` spanning the repeats.
- ``csv``: one row per knob point with its configuration and key figures.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from pytest_greenllm.arrivals import Load
from pytest_greenllm.knobs import AXES, KnobPoint
from pytest_greenllm.record import (
    AVG_POWER,
    J_PER_TOKEN,
    OUTPUT_THROUGHPUT,
    SUMMARY_METRICS,
    TBT_P99,
    TTFT_P99,
    Report,
    SummaryMetric,
)
from pytest_greenllm.workloads import Workload

SMALLER_IS_BETTER = (J_PER_TOKEN, AVG_POWER, TTFT_P99, TBT_P99)
BIGGER_IS_BETTER = (OUTPUT_THROUGHPUT,)
# One column per axis, named as the report names it; the workload also gives its lengths,
# the load its rate and time scale.
_AXIS_PARTS = {"workload": ("input_tokens", "output_tokens"), "load": ("rate_per_s", "time_scale")}
AXIS_COLUMNS = tuple(name for axis in AXES for name in (axis.field, *_AXIS_PARTS.get(axis.field, ())))
CSV_COLUMNS = (
    "point",
    "model",
    *AXIS_COLUMNS,
    "locked_clock_mhz",
    # The limit the GPUs reported; power_limit_w, the axis column, is the one asked for.
    "effective_power_limit_w",
    "repeats",
    "ttft_p99_ms",
    "tbt_p99_ms",
    "tpot_p99_ms",
    "e2el_p99_ms",
    "output_tokens_per_s",
    "requests_per_s",
    "j_per_output_token",
    "avg_power_w",
    "j_per_total_token",
    "j_per_prefill_token",
    "j_per_decode_token",
    "energy_above_idle_j",
    "edp_js",
    "slo_met",
    # met, violated or inconclusive, at the report's SLO confidence (docs/slo.md)
    "slo",
    "energy_regressed",
    "device",
)


def _axis_cells(point: KnobPoint) -> list[object]:
    cells: list[object] = []
    for axis in AXES:
        value = point.value(axis)
        if isinstance(value, Workload):
            cells += [value.name, value.input_tokens, value.output_tokens]
        elif isinstance(value, Load):
            cells += [value.kind, value.rate_per_s, value.time_scale]
        else:
            cells.append(value)
    return cells


def _spread(values: tuple[float | None, ...]) -> list[float]:
    """The known per-repeat values, where there are two or more."""
    known = [v for v in values if v is not None]
    return known if len(known) > 1 else []


def _entries(report: Report, metrics: tuple[SummaryMetric, ...]) -> list[dict[str, Any]]:
    out = []
    for point in report.points:
        for metric in metrics:
            value = metric.of(point.summary)
            if value is None:
                continue
            entry: dict[str, Any] = {
                "name": f"{point.id} {metric.label}",
                "unit": metric.unit,
                "value": value,
            }
            repeats = _spread(metric.repeats(point.summary))
            if repeats:
                entry["range"] = f"± {(max(repeats) - min(repeats)) / 2:.4g}"
            entry["extra"] = f"device={report.device}; repeats={len(point.repeats)}"
            out.append(entry)
    return out


def github_action_benchmark(report: Report) -> dict[str, list[dict[str, Any]]]:
    """The two lists, keyed by the tool name each one is for."""
    return {
        "customSmallerIsBetter": _entries(report, SMALLER_IS_BETTER),
        "customBiggerIsBetter": _entries(report, BIGGER_IS_BETTER),
    }


def bencher(report: Report) -> dict[str, dict[str, dict[str, float]]]:
    """Bencher Metric Format: one benchmark per point, one measure per metric."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for point in report.points:
        measures: dict[str, dict[str, float]] = {}
        for metric in SMALLER_IS_BETTER + BIGGER_IS_BETTER:
            value = metric.of(point.summary)
            if value is None:
                continue
            measure = {"value": value}
            repeats = _spread(metric.repeats(point.summary))
            if repeats:
                measure.update(lower_value=min(repeats), upper_value=max(repeats))
            measures[metric.slug] = measure
        out[point.id] = measures
    return out


def csv_text(report: Report) -> str:
    """One row per point, with a header."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for record in report.points:
        point = record.point
        writer.writerow(
            (
                record.id,
                point.model,
                *_axis_cells(point),
                record.locked_clock_mhz,
                record.power_limit_w,
                len(record.repeats),
                *(metric.of(record.summary) for metric in SUMMARY_METRICS),
                None if record.verdicts is None else record.slo_met,
                record.slo,
                None if record.verdicts is None else record.regressed,
                report.device,
            )
        )
    return buffer.getvalue()
