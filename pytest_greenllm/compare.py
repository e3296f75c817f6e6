"""``greenllm compare``: every point two reports share, with deltas and verdicts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tabulate import tabulate

from pytest_greenllm.report import fingerprint_differences
from pytest_greenllm.verdicts import energy_regressions


class CompareError(ValueError):
    """Two reports that cannot be compared; the message says why (exit status 2)."""


@dataclass
class Comparison:
    """The outcome of comparing a head report with a base report."""

    rows: list[dict[str, Any]]
    only_base: list[str]
    only_head: list[str]
    notes: list[str] = field(default_factory=list)  # fingerprint differences, listed first

    @property
    def regressed(self) -> list[str]:
        return [r["id"] for r in self.rows if r["verdict"] == "REGRESSED"]


def _delta(base: float | None, head: float | None) -> float | None:
    if base is None or head is None or base == 0:
        return None
    return head / base - 1


def compare_reports(
    base: dict[str, Any], head: dict[str, Any], tolerance: float, allow_mismatch: bool = False
) -> Comparison:
    """Compare J/output-token and average power of shared points over their repeats."""
    energy, other = fingerprint_differences(base["fingerprint"], head["fingerprint"])
    if energy and not allow_mismatch:
        raise CompareError(
            f"the reports come from setups whose energy differs ({'; '.join(energy)}); "
            "pass --allow-mismatch to compare anyway"
        )
    base_points = {p["id"]: p for p in base["points"]}
    head_points = {p["id"]: p for p in head["points"]}
    shared = [i for i in head_points if i in base_points]
    if not shared:
        raise CompareError("the reports share no knob point: nothing to compare")
    rows = []
    for point_id in shared:
        b, h = base_points[point_id]["summary"], head_points[point_id]["summary"]
        verdicts = energy_regressions(b, h, tolerance)
        if not verdicts:
            verdict = "no energy"
        elif any(v.regressed for v in verdicts):
            verdict = "REGRESSED"
        elif all(v.increase < -tolerance for v in verdicts):
            verdict = "improved"
        else:
            verdict = "ok"
        rows.append(
            {
                "id": point_id,
                "base_j_per_token": b.get("j_per_output_token"),
                "head_j_per_token": h.get("j_per_output_token"),
                "j_per_token_delta": _delta(b.get("j_per_output_token"), h.get("j_per_output_token")),
                "power_delta": _delta(b.get("avg_power_w"), h.get("avg_power_w")),
                "ttft_p99_delta": _delta(b.get("ttft_p99_ms"), h.get("ttft_p99_ms")),
                "tbt_p99_delta": _delta(b.get("itl_p99_ms"), h.get("itl_p99_ms")),
                "throughput_delta": _delta(b.get("output_throughput"), h.get("output_throughput")),
                "verdict": verdict,
                "method": verdicts[0].method if verdicts else "-",
            }
        )
    notes = [f"setups differ: {line}" for line in energy + other]
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
        "point", "J/tok base", "J/tok head", "J/tok", "avg W", "TTFT p99", "TBT p99",
        "out tok/s", "verdict",
    )
    rows = [
        (
            r["id"],
            r["base_j_per_token"],
            r["head_j_per_token"],
            _pct(r["j_per_token_delta"]),
            _pct(r["power_delta"]),
            _pct(r["ttft_p99_delta"]),
            _pct(r["tbt_p99_delta"]),
            _pct(r["throughput_delta"]),
            f"**{r['verdict']}**" if markdown and r["verdict"] == "REGRESSED" else r["verdict"],
        )
        for r in comparison.rows
    ]
    lines = [f"- {note}" if markdown else note for note in comparison.notes]
    if markdown:
        lines.insert(0, "### Energy comparison (pytest-greenllm)")
    table = tabulate(rows, headers=headers, tablefmt="github" if markdown else "simple",
                     floatfmt=".4g", missingval="-")
    lines += ["", table, ""] if markdown else [table]
    regressed = comparison.regressed
    lines.append(
        f"{len(regressed)} of {len(comparison.rows)} shared points regressed"
        + (f": {', '.join(regressed)}" if regressed else "")
    )
    if comparison.only_base:
        lines.append(f"only in base (not compared): {', '.join(comparison.only_base)}")
    if comparison.only_head:
        lines.append(f"only in head (not compared): {', '.join(comparison.only_head)}")
    return "\n".join(lines)
