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

# (summary key, per-repeat key or None, display name, unit, bencher measure slug)
SMALLER_IS_BETTER = (
    ("j_per_output_token", "j_per_output_token_repeats", "energy per output token", "J/token", "energy-per-output-token"),
    ("avg_power_w", "avg_power_w_repeats", "average power", "W", "average-power"),
    ("ttft_p99_ms", None, "p99 TTFT", "ms", "ttft-p99"),
    ("itl_p99_ms", None, "p99 TBT", "ms", "tbt-p99"),
)
BIGGER_IS_BETTER = (
    ("output_throughput", None, "output throughput", "tokens/s", "output-throughput"),
)
CSV_COLUMNS = (
    "point", "model", "tp", "batch", "workload", "input_tokens", "output_tokens", "freq_mhz",
    "locked_clock_mhz", "repeats", "ttft_p99_ms", "tbt_p99_ms", "tpot_p99_ms", "e2el_p99_ms",
    "output_tokens_per_s", "requests_per_s", "j_per_output_token", "avg_power_w", "slo_met",
    "energy_regressed", "device",
)


def _entries(report: dict[str, Any], metrics: tuple[tuple[str, str | None, str, str, str], ...]) -> list[dict[str, Any]]:
    out = []
    for point in report["points"]:
        summary = point["summary"]
        for key, repeats_key, name, unit, _ in metrics:
            value = summary.get(key)
            if value is None:
                continue
            entry: dict[str, Any] = {"name": f"{point['id']} {name}", "unit": unit, "value": value}
            repeats = summary.get(repeats_key) if repeats_key else None
            if repeats and len(repeats) > 1:
                entry["range"] = f"± {(max(repeats) - min(repeats)) / 2:.4g}"
            entry["extra"] = f"device={report['device']}; repeats={len(point['repeats'])}"
            out.append(entry)
    return out


def github_action_benchmark(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The two lists, keyed by the tool name each one is for."""
    return {
        "customSmallerIsBetter": _entries(report, SMALLER_IS_BETTER),
        "customBiggerIsBetter": _entries(report, BIGGER_IS_BETTER),
    }


def bencher(report: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """Bencher Metric Format: one benchmark per point, one measure per metric."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for point in report["points"]:
        summary = point["summary"]
        measures: dict[str, dict[str, float]] = {}
        for key, repeats_key, _, _, slug in SMALLER_IS_BETTER + BIGGER_IS_BETTER:
            value = summary.get(key)
            if value is None:
                continue
            metric = {"value": value}
            repeats = summary.get(repeats_key) if repeats_key else None
            if repeats and len(repeats) > 1:
                metric.update(lower_value=min(repeats), upper_value=max(repeats))
            measures[slug] = metric
        out[point["id"]] = measures
    return out


def csv_text(report: dict[str, Any]) -> str:
    """One row per point, with a header."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for point in report["points"]:
        config, summary, verdicts = point["config"], point["summary"], point["verdicts"]
        writer.writerow(
            (
                point["id"], config["model"], config["tp"], config["batch"],
                config["workload"]["name"], config["workload"]["input_tokens"],
                config["workload"]["output_tokens"], config["freq_mhz"], point["locked_clock_mhz"],
                len(point["repeats"]), summary["ttft_p99_ms"], summary["itl_p99_ms"],
                summary["tpot_p99_ms"], summary["e2el_p99_ms"], summary["output_throughput"],
                summary["request_throughput"], summary["j_per_output_token"],
                summary["avg_power_w"], verdicts.get("slo_met"), verdicts.get("regressed"),
                report["device"],
            )
        )
    return buffer.getvalue()
