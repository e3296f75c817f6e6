"""`greenllm export` value for value: every exported figure, unit and bound is the report's.

tests/test_export.py checks the shapes each tool reads; a shape can be right while every
value is scaled (J written as mJ) or a unit names the wrong scale, and no tool would notice.
Here each format, in-process and through the CLI, is held against the report it came from.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_greenllm.cli import main
from pytest_greenllm.export import (
    BIGGER_IS_BETTER,
    CSV_COLUMNS,
    SMALLER_IS_BETTER,
    bencher,
    csv_text,
    github_action_benchmark,
)
from pytest_greenllm.knobs import KnobPoint
from pytest_greenllm.record import (
    AVG_POWER,
    E2EL_P99,
    EDP,
    ENERGY_ABOVE_IDLE,
    J_PER_DECODE_TOKEN,
    J_PER_PREFILL_TOKEN,
    J_PER_TOKEN,
    J_PER_TOTAL_TOKEN,
    OUTPUT_THROUGHPUT,
    REQUEST_THROUGHPUT,
    SUMMARY_METRICS,
    TBT_P99,
    TPOT_P99,
    TTFT_P99,
    PointRecord,
    Report,
    Summary,
    SummaryMetric,
    summarise,
)
from pytest_greenllm.report import load_report, write_report
from pytest_greenllm.workloads import Workload

EXAMPLE = Path(__file__).with_name("data") / "report-v1.json"
EXAMPLE_REPEATS = load_report(EXAMPLE).points[0].repeats
EXPORTED = SMALLER_IS_BETTER + BIGGER_IS_BETTER
# The unit each Summary field is stored in (record.Summary's comments), written out here so
# that a catalogue entry that names another scale (mJ/token for a J/token field) fails.
UNITS = {
    "ttft_p99_ms": "ms",
    "itl_p99_ms": "ms",
    "tpot_p99_ms": "ms",
    "e2el_p99_ms": "ms",
    "output_throughput": "tokens/s",
    "request_throughput": "requests/s",
    "j_per_output_token": "J/token",
    "avg_power_w": "W",
    "j_per_total_token": "J/token",
    "j_per_prefill_token": "J/token",
    "j_per_decode_token": "J/token",
    "energy_above_idle_j": "J",
    "edp_js": "J*s",
}
# The CSV has no unit row: its column names carry the units, so each is tied to its metric
# by name, not by position, and a column that moved or changed scale fails.
CSV_METRIC_COLUMNS = {
    "ttft_p99_ms": TTFT_P99,
    "tbt_p99_ms": TBT_P99,
    "tpot_p99_ms": TPOT_P99,
    "e2el_p99_ms": E2EL_P99,
    "output_tokens_per_s": OUTPUT_THROUGHPUT,
    "requests_per_s": REQUEST_THROUGHPUT,
    "j_per_output_token": J_PER_TOKEN,
    "avg_power_w": AVG_POWER,
    "j_per_total_token": J_PER_TOTAL_TOKEN,
    "j_per_prefill_token": J_PER_PREFILL_TOKEN,
    "j_per_decode_token": J_PER_DECODE_TOKEN,
    "energy_above_idle_j": ENERGY_ABOVE_IDLE,
    "edp_js": EDP,
}
# Distinct, unround figures for each point (rows) and metric: a value scaled, or taken from
# another metric or point, matches none of them. None: the report does not know it.
FIGURES: tuple[dict[str, Any], ...] = (
    {  # everything known, two repeats apart
        "ttft_p99_ms": 402.385,
        "itl_p99_ms": 86.9763,
        "tpot_p99_ms": 35.0260,
        "e2el_p99_ms": 571.553,
        "output_throughput": 111.602,
        "request_throughput": 13.9503,
        "j_per_output_token": 0.555703,
        "avg_power_w": 61.6125,
        "j_per_output_token_repeats": (0.555531, 0.555875),
        "avg_power_w_repeats": (63.0439, 60.1810),
        "j_per_total_token": 0.123457,
        "j_per_prefill_token": 0.0456789,
        "j_per_decode_token": 0.678912,
        "energy_above_idle_j": 12.3456,
        "edp_js": 7.89012,
    },
    {  # no meter: latencies and throughput only
        "ttft_p99_ms": 51.2347,
        "itl_p99_ms": 9.87654,
        "tpot_p99_ms": 8.76543,
        "e2el_p99_ms": 123.457,
        "output_throughput": 987.654,
        "request_throughput": 45.6789,
    },
    {  # an unmetered repeat among three; no TBT (one-token outputs)
        "ttft_p99_ms": 33.3217,
        "tpot_p99_ms": 21.2121,
        "e2el_p99_ms": 99.1234,
        "output_throughput": 234.567,
        "request_throughput": 3.21987,
        "j_per_output_token": 1.23457,
        "avg_power_w": 250.125,
        "j_per_output_token_repeats": (1.19, None, 1.27914),
        "avg_power_w_repeats": (240.5, None, 259.75),
        "energy_above_idle_j": 3.14159,
    },
    {  # one metered repeat: no spread to export; no throughput known
        "ttft_p99_ms": 77.7123,
        "itl_p99_ms": 12.3401,
        "j_per_output_token": 0.314159,
        "avg_power_w": 142.857,
        "j_per_output_token_repeats": (0.314159,),
        "avg_power_w_repeats": (142.857,),
        "edp_js": 2.71828,
    },
    # every request timed out: nothing to export, and a zero the CSV writes as one
    {"e2el_p99_ms": 30000.5, "request_throughput": 0.0},
)


def _point(index: int, figures: dict[str, Any]) -> PointRecord:
    """Point ``index`` of its own workload, holding ``figures`` and 1 or 2 of the example's
    repeats."""
    config = KnobPoint("embedded", 1, 4, Workload(f"{16 + index}x8", 16 + index, 8), 1410)
    summary = dataclasses.replace(summarise(()), **figures)
    repeats = EXAMPLE_REPEATS[: index % 2 + 1]
    return PointRecord(config.id, config, 1410, repeats, summary, None, 300.0 + index)


REPORT = Report(
    "fake", {}, None, {}, {}, tuple(_point(i, f) for i, f in enumerate(FIGURES)), "2025-01-01T00:00:00+00:00"
)


def _known(values: tuple[float | None, ...]) -> list[float]:
    return [v for v in values if v is not None]


def check_github_action_benchmark(lists: dict[str, Any], report: Report) -> None:
    """Each list holds one entry per point and metric the report knows, and only those."""
    assert set(lists) == {"customSmallerIsBetter", "customBiggerIsBetter"}
    for tool, metrics in (
        ("customSmallerIsBetter", SMALLER_IS_BETTER),
        ("customBiggerIsBetter", BIGGER_IS_BETTER),
    ):
        # A metric in the wrong list would be charted the wrong way up.
        assert all(m.lower_is_better == (tool == "customSmallerIsBetter") for m in metrics)
        expected = {
            f"{point.id} {metric.label}": (point, metric)
            for point in report.points
            for metric in metrics
            if metric.of(point.summary) is not None
        }
        entries = {entry["name"]: entry for entry in lists[tool]}
        assert len(entries) == len(lists[tool]), "two entries share a name"
        assert sorted(entries) == sorted(expected)
        for name, entry in entries.items():
            point, metric = expected[name]
            assert entry["value"] == metric.of(point.summary), name
            assert type(entry["value"]) is float, name
            assert entry["unit"] == metric.unit == UNITS[metric.key], name
            assert entry["extra"] == f"device={report.device}; repeats={len(point.repeats)}", name
            known = _known(metric.repeats(point.summary))
            if len(known) > 1:
                sign, half_spread = entry["range"].split(" ")
                assert sign == "±"
                assert float(half_spread) == pytest.approx((max(known) - min(known)) / 2, rel=1e-3), name
            else:
                assert "range" not in entry, name


def check_bencher(bmf: dict[str, Any], report: Report) -> None:
    """One benchmark per point; one measure per metric it knows, with its repeats' span."""
    assert set(bmf) <= {p.id for p in report.points}
    for point in report.points:
        measures = bmf.get(point.id, {})
        known_metrics = {m.slug: m for m in EXPORTED if m.of(point.summary) is not None}
        assert sorted(measures) == sorted(known_metrics), point.id
        for slug, measure in measures.items():
            metric = known_metrics[slug]
            assert measure["value"] == metric.of(point.summary), (point.id, slug)
            known = _known(metric.repeats(point.summary))
            if len(known) > 1:
                assert measure == {
                    "value": measure["value"],
                    "lower_value": min(known),
                    "upper_value": max(known),
                }
            else:
                assert set(measure) == {"value"}, (point.id, slug)


def check_csv(text: str, report: Report) -> None:
    """One row per point; every metric cell the report's figure, empty where it has none."""
    rows = list(csv.DictReader(text.splitlines()))
    assert [row["point"] for row in rows] == [p.id for p in report.points]
    for row, point in zip(rows, report.points, strict=True):
        assert row["device"] == report.device
        assert int(row["repeats"]) == len(point.repeats)
        assert int(row["locked_clock_mhz"]) == point.locked_clock_mhz
        assert float(row["effective_power_limit_w"]) == point.power_limit_w
        for column, metric in CSV_METRIC_COLUMNS.items():
            value = metric.of(point.summary)
            cell = row[column]
            assert (cell == "") if value is None else (float(cell) == value), (point.id, column)


def test_every_metric_has_its_csv_column_and_catalogue_unit() -> None:
    assert set(CSV_METRIC_COLUMNS) <= set(CSV_COLUMNS)
    assert sorted(m.key for m in CSV_METRIC_COLUMNS.values()) == sorted(m.key for m in SUMMARY_METRICS)
    assert {m.key: m.unit for m in SUMMARY_METRICS} == UNITS


def test_the_example_covers_what_the_checks_tell_apart() -> None:
    # Known and unknown figures, with and without a spread, in every exported metric.
    for metric in EXPORTED:
        values = [metric.of(p.summary) for p in REPORT.points]
        assert None in values and any(v is not None for v in values), metric.key
    spreads = [len(_known(m.repeats(p.summary))) for p in REPORT.points for m in EXPORTED]
    assert {0, 1} <= set(spreads) and max(spreads) > 1


def test_github_action_benchmark_values_are_the_reports() -> None:
    check_github_action_benchmark(github_action_benchmark(REPORT), REPORT)


def test_bencher_values_are_the_reports() -> None:
    check_bencher(bencher(REPORT), REPORT)


def test_csv_values_are_the_reports() -> None:
    check_csv(csv_text(REPORT), REPORT)


@pytest.fixture
def report_file(tmp_path: Path) -> Path:
    path = tmp_path / "report.json"
    write_report(path, REPORT)
    return path


def test_cli_github_action_benchmark_files_hold_the_reports_values(report_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert (
        main(["export", str(report_file), "--format", "github-action-benchmark", "--output-dir", str(out)])
        == 0
    )
    lists = {
        "customSmallerIsBetter": json.loads((out / "smaller-is-better.json").read_text(encoding="utf-8")),
        "customBiggerIsBetter": json.loads((out / "bigger-is-better.json").read_text(encoding="utf-8")),
    }
    check_github_action_benchmark(lists, REPORT)


def test_cli_bencher_file_holds_the_reports_values(report_file: Path, tmp_path: Path) -> None:
    target = tmp_path / "bmf.json"
    assert main(["export", str(report_file), "--format", "bencher", "--output", str(target)]) == 0
    check_bencher(json.loads(target.read_text(encoding="utf-8")), REPORT)


def test_cli_csv_file_holds_the_reports_values(report_file: Path, tmp_path: Path) -> None:
    target = tmp_path / "points.csv"
    assert main(["export", str(report_file), "--format", "csv", "--output", str(target)]) == 0
    check_csv(target.read_text(encoding="utf-8"), REPORT)


def _figure() -> st.SearchStrategy[float | None]:
    return st.none() | st.floats(min_value=0.0, max_value=1e6, allow_subnormal=False)


def _metric_repeats(metric: SummaryMetric) -> dict[str, st.SearchStrategy[Any]]:
    if metric.repeats_key is None:
        return {}
    return {metric.repeats_key: st.lists(_figure(), max_size=4).map(tuple)}


SUMMARIES = st.fixed_dictionaries(
    {
        **{metric.key: _figure() for metric in SUMMARY_METRICS},
        **{k: v for metric in SUMMARY_METRICS for k, v in _metric_repeats(metric).items()},
    }
).map(lambda figures: dataclasses.replace(summarise(()), **figures))


@settings(max_examples=50, deadline=None)
@given(st.lists(SUMMARIES, min_size=1, max_size=3))
def test_any_figures_export_as_they_are(summaries: list[Summary]) -> None:
    points = tuple(dataclasses.replace(_point(i, {}), summary=summary) for i, summary in enumerate(summaries))
    report = dataclasses.replace(REPORT, points=points)
    check_github_action_benchmark(github_action_benchmark(report), report)
    check_bencher(bencher(report), report)
    check_csv(csv_text(report), report)
