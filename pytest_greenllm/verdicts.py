"""Verdicts over measured points: SLO specifications, goodput, and the energy-regression
test (pure). The SLOs themselves are judged in ``slo_verdicts.py``.

The regression test compares J per output token (and average power) of one point in two
runs, over their repeats, with the gate of ``gate.py`` (docs/gate.md): regressed, ok, or
inconclusive where the repeats are too few for their noise. With one repeat on each side
and nothing else to estimate the noise from, it is inconclusive, and says why.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pytest_greenllm.gate import OK, REGRESSED, ZONE_FACTOR, Design, Noise, judge

SLO_METRICS = ("ttft_p99", "tbt_p99", "tpot_p99", "e2el_p99", "throughput_min")
_UNITS_MS = {"ms": 1.0, "s": 1000.0, "": 1.0}


class SloError(ValueError):
    """An SLO specification that cannot be read; the message says why."""


@dataclass(frozen=True)
class Slo:
    """Limits a point must meet; None: not checked. Latencies in ms, throughput tokens/s."""

    ttft_p99_ms: float | None = None
    tbt_p99_ms: float | None = None
    tpot_p99_ms: float | None = None
    e2el_p99_ms: float | None = None
    throughput_min: float | None = None  # output tokens/s


# Interactive-chat defaults modelled on the paper's setting (its exact values are not
# public): TTFT p99 <= 2 s for S and M, <= 5 s for L; TBT p99 <= 200 ms.
DEFAULT_SLO = Slo(ttft_p99_ms=2000.0, tbt_p99_ms=200.0)
DEFAULT_WORKLOAD_SLOS: Mapping[str, Slo] = {"L": Slo(ttft_p99_ms=5000.0, tbt_p99_ms=200.0)}


def parse_slo(text: str, base: Slo | None = None) -> Slo:
    """``ttft_p99=2000ms,tbt_p99=0.2s,throughput_min=100`` over ``base``; 'none' clears one."""
    base = base or Slo()
    values: dict[str, float | None] = {
        "ttft_p99": base.ttft_p99_ms,
        "tbt_p99": base.tbt_p99_ms,
        "tpot_p99": base.tpot_p99_ms,
        "e2el_p99": base.e2el_p99_ms,
        "throughput_min": base.throughput_min,
    }
    for item in filter(None, (i.strip() for i in text.split(","))):
        name, sep, value = (part.strip() for part in item.partition("="))
        if not sep or name not in values:
            raise SloError(f"{item!r}: expected NAME=VALUE with NAME one of {', '.join(SLO_METRICS)}")
        if value.lower() == "none":
            values[name] = None
            continue
        if name == "throughput_min":
            number, unit = value, ""
        else:
            match = re.fullmatch(r"([0-9.]+(?:e-?[0-9]+)?)\s*(ms|s)?", value)
            if match is None:
                raise SloError(f"{item!r}: expected a duration such as 2000ms or 2s")
            number, unit = match.group(1), match.group(2) or "ms"
        try:
            limit = float(number) * _UNITS_MS[unit]
        except ValueError:
            raise SloError(f"{item!r}: {number!r} is not a number") from None
        if not limit > 0 or math.isinf(limit):
            raise SloError(f"{item!r}: the limit must be a number > 0")
        values[name] = limit
    return Slo(
        values["ttft_p99"],
        values["tbt_p99"],
        values["tpot_p99"],
        values["e2el_p99"],
        values["throughput_min"],
    )


@dataclass(frozen=True)
class Violation:
    """One SLO a point missed."""

    metric: str
    measured: float
    limit: float
    unit: str

    def message(self, point_id: str) -> str:
        relation = "<" if self.metric == "throughput_min" else ">"
        return (
            f"SLO missed at {point_id}: {self.metric} = {self.measured:.4g} {self.unit} "
            f"{relation} limit {self.limit:.4g} {self.unit}"
        )


@dataclass(frozen=True)
class Goodput:
    """Requests that met every per-request SLO, as ``vllm bench serve`` counts them."""

    good_requests: int
    requests: int
    requests_per_s: float  # good requests per second. Units: 1/s.
    j_per_good_request: float | None  # Units: J.
    good_requests_per_kj: float | None = None  # goodput per energy. Units: 1/kJ.

    @property
    def share(self) -> float:
        return self.good_requests / self.requests if self.requests else math.nan


def goodput(
    ttft_ms: Sequence[float],
    tpot_ms: Sequence[float | None],
    e2el_ms: Sequence[float],
    duration_s: float,
    slo: Slo,
    energy_j: float | None,
    requests: int | None = None,
) -> Goodput:
    """A request is good when its TTFT, TPOT and E2EL are within the SLO's limits (the p99
    limits applied to each request, as `vllm bench serve --goodput` does). The latencies
    are the completed requests'; ``requests`` counts the failed ones too (default: none
    failed), which are never good."""
    good = 0
    for ttft, tpot, e2el in zip(ttft_ms, tpot_ms, e2el_ms):
        ok = slo.ttft_p99_ms is None or ttft <= slo.ttft_p99_ms
        ok = ok and (slo.tpot_p99_ms is None or tpot is None or tpot <= slo.tpot_p99_ms)
        ok = ok and (slo.e2el_p99_ms is None or e2el <= slo.e2el_p99_ms)
        good += ok
    per_s = good / duration_s if duration_s > 0 else math.nan
    per_good = energy_j / good if energy_j is not None and good else None
    per_kj = good / (energy_j / 1000) if energy_j else None
    return Goodput(good, len(ttft_ms) if requests is None else requests, per_s, per_good, per_kj)


@dataclass(frozen=True)
class Regression:
    """The energy-regression verdict of one metric of one point (``gate.judge``)."""

    metric: str
    base_mean: float
    head_mean: float
    increase: float  # relative: 0.1 is 10% more than the baseline
    ci_low: float | None  # interval of the increase (gate.py); None for single repeats
    ci_high: float | None
    tolerance: float
    regressed: bool
    method: str  # how the noise was estimated: 't (repeats)', 't (history)' or 'threshold (single repeat)'
    # REGRESSED, OK or INCONCLUSIVE; None in reports written before the sequential gate,
    # whose verdict was ``regressed`` alone.
    verdict: str | None = None
    repeats: tuple[int, int] | None = None  # (baseline, head) repeats judged
    # (baseline, head) repeats left out: no energy measured (0 J), or none that is finite
    dropped: tuple[int, int] = (0, 0)

    @property
    def outcome(self) -> str:
        """REGRESSED, OK or INCONCLUSIVE, for reports of every version."""
        if self.verdict is not None:
            return self.verdict
        return REGRESSED if self.regressed else OK

    def message(self, point_id: str) -> str:
        interval = f", interval {self.ci_low:+.1%} to {self.ci_high:+.1%}" if self.ci_low is not None else ""
        low, high = self.tolerance / ZONE_FACTOR, self.tolerance * ZONE_FACTOR
        what = "energy regression" if self.outcome == REGRESSED else f"energy change {self.outcome}"
        counts = f", {self.repeats[0]} vs {self.repeats[1]} repeats" if self.repeats else ""
        if any(self.dropped):
            counts += f" ({self.dropped[0]} and {self.dropped[1]} without energy left out)"
        return (
            f"{what} at {point_id}: {self.metric} {self.head_mean:.4g} vs baseline "
            f"{self.base_mean:.4g} ({self.increase:+.1%}{interval}; tolerance "
            f"{self.tolerance * 100:g}%, zone {low * 100:g}% to {high * 100:g}%{counts}; {self.method})"
        )


_METHODS = {
    "repeats": "t (repeats)",
    "history": "t (history, random effects)",
    "profile": "t (repeats and noise profile)",
    "none": "none (too few repeats for their noise)",
}


def regression(
    metric: str,
    base: Sequence[Sequence[float]],
    head: Sequence[float],
    tolerance: float,
    *,
    metrics: int = 1,
    looks: tuple[int, ...] = (),
    noise: Noise | None = None,
    dropped: tuple[int, int] = (0, 0),
) -> Regression:
    """Is ``head`` worse than ``base`` (its runs' repeats: one run, or several) by more than
    ``tolerance``? ``metrics``: how many are gated for this point (the false-alarm rate is
    split over them); ``looks``: the repeat counts a sequential run judges at; ``noise``: a
    noise profile's figures; ``dropped``: repeats left out before (baseline, head)."""
    values = [v for r in base for v in r]
    if not values or not head:
        raise ValueError(f"{metric}: both runs need at least one repeat")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in [*values, *head]):
        raise ValueError(f"{metric}: every repeat needs a finite value > 0; drop the others first")
    change = judge(base, head, Design(tolerance, metrics, looks), noise)
    return Regression(
        metric,
        statistics.fmean(values),
        statistics.fmean(head),
        change.increase,
        change.low,
        change.high,
        tolerance,
        change.verdict == REGRESSED,
        _METHODS[change.noise],
        change.verdict,
        (len(values), len(head)),
        dropped,
    )
