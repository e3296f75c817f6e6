"""Latency, throughput and energy statistics from per-token timestamps (pure functions).

Definitions follow ``vllm bench serve``: TTFT = first token - send time; ITL = gaps between
token arrivals; E2EL = last token - send time; TPOT = (E2EL - TTFT) / (output tokens - 1);
percentiles with ``numpy.percentile``; latencies in milliseconds. TBT, the paper's "time
between tokens", is ITL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pytest_greenllm.slo_verdicts import keep_tail

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class RequestRecord:
    """One request of a measured run, stamped with a monotonic clock. Units: s."""

    send_s: float  # when it was handed to the engine
    token_s: tuple[float, ...]  # arrival of each output token
    prompt_tokens: int
    error: str | None = None  # why it failed (a server's error, a timeout); None: completed

    @property
    def output_tokens(self) -> int:
        return len(self.token_s)


@dataclass(frozen=True)
class Stat:
    """Mean and percentiles of one latency. Units: ms."""

    mean: float
    p50: float
    p90: float
    p99: float

    @classmethod
    def of(cls, values_ms: Sequence[float]) -> Stat:
        if not values_ms:
            return cls(float("nan"), float("nan"), float("nan"), float("nan"))
        p50, p90, p99 = (float(v) for v in np.percentile(values_ms, PERCENTILES))
        return cls(float(np.mean(values_ms)), p50, p90, p99)


@dataclass(frozen=True)
class SteadyState:
    """From the moment the batch is full until the first request of the drain-out finishes."""

    start_s: float  # seconds since the run began
    end_s: float
    output_tokens: int  # tokens that arrived inside

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True)
class RunMetrics:
    """Latency and throughput of one measured run."""

    requests: int
    prompt_tokens: int
    output_tokens: int
    duration_s: float  # first send to last token. Units: s.
    ttft_ms: Stat
    tpot_ms: Stat
    itl_ms: Stat  # the paper's TBT
    e2el_ms: Stat
    output_throughput: float  # Units: tokens/s.
    total_throughput: float  # prompt + output tokens per second. Units: tokens/s.
    request_throughput: float  # Units: requests/s.
    steady: SteadyState | None  # None when the batch never filled
    # Per request, in submission order: the raw values behind the statistics. Units: ms.
    request_ttft_ms: tuple[float, ...] = ()
    request_tpot_ms: tuple[float | None, ...] = ()  # None for one-token outputs
    request_e2el_ms: tuple[float, ...] = ()
    failed: int = 0  # requests that did not complete; the figures above leave them out
    errors: tuple[str, ...] = ()  # the distinct reasons, the first few
    # The largest token gaps (largest first) and how many gaps there were: the TBT SLO's
    # verdict pools them over repeats (slo_verdicts.py); every gap would be too many to keep.
    itl_tail_ms: tuple[float, ...] = ()
    itl_count: int = 0


def steady_state(records: Sequence[RequestRecord], batch: int, start_s: float) -> SteadyState | None:
    """The ML.ENERGY steady state: ``batch`` requests have their first token, none finished.

    None when the batch never fills (fewer requests than ``batch``).
    """
    if len(records) < batch or any(not r.token_s for r in records):
        return None
    firsts = sorted(r.token_s[0] for r in records)
    lasts = sorted(r.token_s[-1] for r in records)
    full_at = firsts[batch - 1]
    drain_at = lasts[0]
    if drain_at <= full_at:
        return None
    tokens = sum(1 for r in records for t in r.token_s if full_at < t <= drain_at)
    return SteadyState(full_at - start_s, drain_at - start_s, tokens)


# How many distinct failure reasons a run keeps: enough to tell one cause from several.
MAX_ERRORS = 5


def run_metrics(records: Sequence[RequestRecord], batch: int) -> RunMetrics:
    """The figures of one run; ``batch`` is the engine's concurrency limit. Failed requests
    are counted, and left out of every figure, as ``vllm bench serve`` does."""
    if not records:
        raise ValueError("a run without requests has no metrics")
    failed = [r for r in records if r.error is not None]
    errors = tuple(dict.fromkeys(r.error for r in failed if r.error is not None))[:MAX_ERRORS]
    start = min(r.send_s for r in records)
    records = [r for r in records if r.error is None]
    end = max((r.token_s[-1] for r in records if r.token_s), default=start)
    duration = end - start
    ttft: list[float] = []
    tpot: list[float | None] = []
    itl: list[float] = []
    e2el: list[float] = []
    for r in records:
        if not r.token_s:
            continue
        ttft.append((r.token_s[0] - r.send_s) * 1000)
        e2el.append((r.token_s[-1] - r.send_s) * 1000)
        itl.extend((b - a) * 1000 for a, b in zip(r.token_s, r.token_s[1:]))
        tpot.append(
            (r.token_s[-1] - r.token_s[0]) * 1000 / (r.output_tokens - 1) if r.output_tokens > 1 else None
        )
    prompt = sum(r.prompt_tokens for r in records)
    output = sum(r.output_tokens for r in records)
    per_s = 1 / duration if duration > 0 else float("nan")
    return RunMetrics(
        requests=len(records) + len(failed),
        prompt_tokens=prompt,
        output_tokens=output,
        duration_s=duration,
        ttft_ms=Stat.of(ttft),
        tpot_ms=Stat.of([v for v in tpot if v is not None]),
        itl_ms=Stat.of(itl),
        e2el_ms=Stat.of(e2el),
        output_throughput=output * per_s,
        total_throughput=(prompt + output) * per_s,
        request_throughput=len(records) * per_s,
        steady=steady_state(records, batch, start),
        request_ttft_ms=tuple(ttft),
        request_tpot_ms=tuple(tpot),
        request_e2el_ms=tuple(e2el),
        failed=len(failed),
        errors=errors,
        itl_tail_ms=keep_tail(itl),
        itl_count=len(itl),
    )


def energy_between_j(timeline: Sequence[tuple[float, float]], start_s: float, end_s: float) -> float | None:
    """Energy under a (seconds, watts) timeline between two instants, interpolating the
    power at the edges; None when the timeline does not cover the interval. Units: J."""
    if end_s <= start_s or len(timeline) < 2 or timeline[0][0] > start_s or timeline[-1][0] < end_s:
        return None
    times = np.array([t for t, _ in timeline])
    watts = np.array([w for _, w in timeline])
    inner = (times > start_s) & (times < end_s)
    xs = np.concatenate(([start_s], times[inner], [end_s]))
    ys = np.interp(xs, times, watts)
    return float(np.sum((ys[1:] + ys[:-1]) / 2 * np.diff(xs)))
