"""Terminal tables: the knob matrix (``greenllm knobs``) and the sweep's summary."""

from __future__ import annotations

from tabulate import tabulate

from pytest_greenllm.knobs import AXES, Matrix
from pytest_greenllm.record import (
    AVG_POWER,
    J_PER_DECODE_TOKEN,
    J_PER_PREFILL_TOKEN,
    J_PER_TOKEN,
    OUTPUT_THROUGHPUT,
    TBT_P99,
    TTFT_P99,
    PointRecord,
    best_per_objective,
)

TABLE_METRICS = (
    TTFT_P99,
    TBT_P99,
    OUTPUT_THROUGHPUT,
    J_PER_TOKEN,
    AVG_POWER,
    J_PER_PREFILL_TOKEN,
    J_PER_DECODE_TOKEN,
)


def matrix_table(matrix: Matrix) -> str:
    """The points, grouped by engine build, as a table."""
    engines = {engine: index for index, engine in enumerate(matrix.engine_configs, start=1)}
    shown = [a for a in AXES if a.field != "workload"]
    rows = [
        (
            point.id,
            engines[point.engine],
            point.workload.name,
            point.workload.input_tokens,
            point.workload.output_tokens,
            *(axis.label(point.value(axis)) for axis in shown),
        )
        for point in matrix.points
    ]
    headers = ("point", "engine", "workload", "in tok", "out tok", *(a.header for a in shown))
    return tabulate(rows, headers=headers)


# A point not shown to violate its SLO but not certified either says so: "ok" would be a
# confident claim the requests cannot back.
_SLO_CELLS = {"met": "met", "violated": "MISSED", "inconclusive": "unsure"}


def summary_table(points: list[PointRecord]) -> str:
    """Points x key figures; the best point per objective among those meeting the SLOs is
    marked: E least energy per token, P least average power, T most throughput."""
    marks: dict[str, str] = {p.id: "" for p in points}
    for objective, best in best_per_objective([p for p in points if p.slo_met]):
        if best is not None:
            marks[best.id] += objective.mark
    rows = []
    for p in points:
        regressions = p.verdicts.regressions if p.verdicts is not None else ()
        rows.append(
            (
                p.id,
                len(p.repeats),
                *(metric.of(p.summary) for metric in TABLE_METRICS),
                _SLO_CELLS.get(p.slo or "", "-"),
                "REGRESSED" if p.regressed else (p.verdicts.energy if p.verdicts and regressions else "-"),
                marks[p.id],
            )
        )
    headers = ("point", "reps", *(metric.header for metric in TABLE_METRICS), "SLO", "energy", "best")
    return tabulate(rows, headers=headers, floatfmt=".4g", missingval="-")
