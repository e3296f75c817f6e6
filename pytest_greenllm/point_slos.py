"""A point's SLO verdicts: every request of every repeat pooled, each SLO judged at a stated
confidence (slo_verdicts.py). Averaging per-repeat p99s of 16 requests each, as before, passed
a point whose true p99 was 25% over its limit in 65-70% of sessions."""

from __future__ import annotations

import math
from collections.abc import Sequence

from pytest_greenllm.config import Settings
from pytest_greenllm.record import RepeatResult
from pytest_greenllm.slo_verdicts import (
    Samples,
    SloVerdict,
    certifying_samples,
    judge_percentile,
    judge_throughput,
)
from pytest_greenllm.verdicts import Slo

P99 = 0.99


def _samples(repeats: Sequence[RepeatResult], metric: str) -> Samples:
    if metric == "tbt_p99":
        return Samples.pooled([(r.metrics.itl_tail_ms, r.metrics.itl_count) for r in repeats])
    if metric == "ttft_p99":
        return Samples.of([v for r in repeats for v in r.metrics.request_ttft_ms])
    if metric == "tpot_p99":
        return Samples.of([v for r in repeats for v in r.metrics.request_tpot_ms if v is not None])
    return Samples.of([v for r in repeats for v in r.metrics.request_e2el_ms])


def percentile_limits(slo: Slo) -> list[tuple[str, float]]:
    """(metric, limit in ms) of every percentile SLO set."""
    limits = (
        ("ttft_p99", slo.ttft_p99_ms),
        ("tbt_p99", slo.tbt_p99_ms),
        ("tpot_p99", slo.tpot_p99_ms),
        ("e2el_p99", slo.e2el_p99_ms),
    )
    return [(name, limit) for name, limit in limits if limit is not None]


def judge_slos(repeats: Sequence[RepeatResult], slo: Slo, confidence: float) -> tuple[SloVerdict, ...]:
    """Every SLO of ``slo`` over ``repeats``, its false-violation rate split over them."""
    limits = percentile_limits(slo)
    count = len(limits) + (slo.throughput_min is not None)
    verdicts = [
        judge_percentile(name, _samples(repeats, name), limit, P99, confidence, count)
        for name, limit in limits
    ]
    if slo.throughput_min is not None:
        throughputs = [
            r.metrics.output_throughput for r in repeats if math.isfinite(r.metrics.output_throughput)
        ]
        verdicts.append(judge_throughput(throughputs, slo.throughput_min, confidence, count))
    return tuple(verdicts)


def certifying_requests(confidence: float) -> int:
    """Requests a point needs (pooled over its repeats) for a p99 SLO on a per-request
    latency to be certified met at ``confidence`` when none is over the limit."""
    return certifying_samples(P99, confidence)


def slo_header(settings: Settings, defaults_apply: bool) -> str:
    """What the SLO verdicts rest on, for the session header: the confidence, how many
    requests certify a p99, and what 'auto' requests cost."""
    n = certifying_requests(settings.slo_confidence)
    checked = settings.slos_given or defaults_apply
    cost = ""
    if settings.requests is None and checked:
        per_repeat = math.ceil(n / settings.repeats)
        cost = (
            f"; requests=auto runs a point's requests (twice the batch) again, back to back, "
            f"until {per_repeat} a repeat have run where a p99 SLO is checked: that many "
            "requests' time per repeat"
        )
    return (
        f"SLO verdicts at {settings.slo_confidence:.0%} confidence, every request of a point's "
        f"repeats pooled: a p99 is certified met from {n} requests with none over the limit "
        f"(docs/slo.md){cost}"
    )
