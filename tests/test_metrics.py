"""Run metrics as ``vllm bench serve`` defines them, the steady state, and energy under a
power timeline: one hand-computed run, then properties over random runs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import astuple
from unittest.mock import patch

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from pytest_greenllm.metrics import (
    RequestRecord,
    RunMetrics,
    Stat,
    SteadyState,
    energy_between_j,
    run_metrics,
    steady_state,
)

# Send 0 / 0.05 / 0.1 s; A streams three tokens, B one, C two.
A = RequestRecord(0.0, (0.1, 0.15, 0.25), 10)
B = RequestRecord(0.05, (0.3,), 20)
C = RequestRecord(0.1, (0.2, 0.4), 5)
HAND = (A, B, C)


@st.composite
def request_records(draw: st.DrawFn) -> RequestRecord:
    send = draw(st.floats(0, 100))
    # Stamps may repeat: the engine stamps every token of one step with the same time.
    first = send + draw(st.floats(1e-3, 10))
    stamps = [first]
    for gap in draw(st.lists(st.floats(0, 5), max_size=7)):
        stamps.append(stamps[-1] + gap)
    return RequestRecord(send, tuple(stamps), draw(st.integers(0, 5000)))


runs = st.lists(request_records(), min_size=1, max_size=12)


def captured_run(
    records: Sequence[RequestRecord], batch: int = 4
) -> tuple[RunMetrics, dict[str, list[float]]]:
    """The metrics and the raw samples each Stat was computed from (the Stat hides them)."""
    samples: list[list[float]] = []
    real = Stat.of

    def spy(values: Sequence[float]) -> Stat:
        samples.append(list(values))
        return real(values)

    with patch.object(Stat, "of", spy):
        metrics = run_metrics(records, batch)
    by_name = dict(zip(("ttft", "tpot", "itl", "e2el"), samples, strict=True))
    # Pins the name -> samples mapping: a reordered call in run_metrics would fail here.
    for name, values in by_name.items():
        assert same_stat(getattr(metrics, f"{name}_ms"), Stat.of(values))
    return metrics, by_name


def same_stat(a: Stat, b: Stat) -> bool:
    return all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(astuple(a), astuple(b)))


def le(a: float, b: float) -> bool:
    """a <= b up to float rounding (numpy's percentile interpolation is not exactly monotone)."""
    return a <= b + 1e-9 * max(1.0, abs(b))


def test_hand_computed_run() -> None:
    m, samples = captured_run(HAND, batch=2)
    assert (m.requests, m.prompt_tokens, m.output_tokens) == (3, 35, 6)
    assert m.duration_s == pytest.approx(0.4)
    assert samples["ttft"] == pytest.approx([100, 250, 100])
    assert samples["e2el"] == pytest.approx([250, 250, 300])
    assert samples["itl"] == pytest.approx([50, 100, 200])
    # B has one token and no TPOT; A: (250 - 100) / 2, C: (300 - 100) / 1.
    assert samples["tpot"] == pytest.approx([75, 200])
    # numpy's linear percentiles of [100, 100, 250]: rank 0.9 * 2 = 1.8 -> 100 + 0.8 * 150.
    assert astuple(m.ttft_ms) == pytest.approx((150, 100, 220, 247))
    assert astuple(m.tpot_ms) == pytest.approx((137.5, 137.5, 187.5, 198.75))
    assert astuple(m.itl_ms) == pytest.approx((350 / 3, 100, 180, 198))
    assert astuple(m.e2el_ms) == pytest.approx((800 / 3, 250, 290, 299))
    assert m.output_throughput == pytest.approx(6 / 0.4)
    assert m.total_throughput == pytest.approx(41 / 0.4)
    assert m.request_throughput == pytest.approx(3 / 0.4)
    assert m.steady == steady_state(HAND, 2, 0.0)


@given(runs)
def test_latency_orderings(records: list[RequestRecord]) -> None:
    m, samples = captured_run(records)
    assert len(samples["ttft"]) == len(samples["e2el"]) == len(records)
    for r, ttft, e2el in zip(records, samples["ttft"], samples["e2el"]):
        assert ttft == pytest.approx((r.token_s[0] - r.send_s) * 1000)
        assert e2el == pytest.approx((r.token_s[-1] - r.send_s) * 1000)
        assert 0 < ttft <= e2el
    for field in ("ttft", "e2el", "itl", "tpot"):
        stat: Stat = getattr(m, f"{field}_ms")
        values = samples[field]
        if not values:
            continue
        assert le(stat.p50, stat.p90) and le(stat.p90, stat.p99)
        assert le(min(values), stat.mean) and le(stat.mean, max(values))
        assert le(min(values), stat.p50) and le(stat.p99, max(values))
    for ttft_figure, e2el_figure in zip(astuple(m.ttft_ms), astuple(m.e2el_ms)):
        assert le(ttft_figure, e2el_figure)


@given(runs)
def test_itl_and_tpot_samples(records: list[RequestRecord]) -> None:
    m, samples = captured_run(records)
    assert len(samples["itl"]) == sum(r.output_tokens - 1 for r in records)
    # The per-request values (kept for goodput) are the ones the statistics came from.
    assert (m.request_ttft_ms, m.request_e2el_ms) == (tuple(samples["ttft"]), tuple(samples["e2el"]))
    assert [v for v in m.request_tpot_ms if v is not None] == samples["tpot"]
    assert [v is None for v in m.request_tpot_ms] == [r.output_tokens == 1 for r in records]
    assert all(gap >= 0 for gap in samples["itl"])
    multi = [r for r in records if r.output_tokens > 1]
    expected_tpot = [
        ((r.token_s[-1] - r.send_s) - (r.token_s[0] - r.send_s)) * 1000 / (r.output_tokens - 1) for r in multi
    ]
    assert samples["tpot"] == pytest.approx(expected_tpot, rel=1e-6, abs=1e-6)


@given(runs)
def test_counts_and_throughput(records: list[RequestRecord]) -> None:
    m = run_metrics(records, batch=4)
    duration = max(r.token_s[-1] for r in records) - min(r.send_s for r in records)
    output = sum(len(r.token_s) for r in records)
    prompt = sum(r.prompt_tokens for r in records)
    assert (m.requests, m.output_tokens, m.prompt_tokens) == (len(records), output, prompt)
    assert m.duration_s == pytest.approx(duration)
    assert m.output_throughput == pytest.approx(output / duration)
    assert m.total_throughput == pytest.approx((prompt + output) / duration)
    assert m.request_throughput == pytest.approx(len(records) / duration)


def test_stat_of_nothing_is_nan_and_of_one_value_is_that_value() -> None:
    assert all(math.isnan(v) for v in astuple(Stat.of([])))
    assert astuple(Stat.of([7.5])) == (7.5, 7.5, 7.5, 7.5)


def test_run_without_requests_is_an_error() -> None:
    with pytest.raises(ValueError, match="without requests"):
        run_metrics([], batch=1)


def test_steady_state_by_hand() -> None:
    # batch 2: full at C's first token (0.2), A finishes first (0.25); only A's 0.25 lies
    # in (0.2, 0.25]: C's token at exactly 0.2 is the start and is not counted.
    assert steady_state(HAND, 2, 0.0) == SteadyState(0.2, 0.25, 1)
    # Times are relative to the run start.
    steady = steady_state(HAND, 2, -1.0)
    assert steady is not None
    assert (steady.start_s, steady.end_s, steady.duration_s) == pytest.approx((1.2, 1.25, 0.05))
    # batch 1: full at 0.1; A's 0.15 and 0.25 and C's 0.2 arrive before A finishes.
    assert steady_state(HAND, 1, 0.0) == SteadyState(0.1, 0.25, 3)


def test_no_steady_state_when_a_request_finishes_before_the_batch_is_full() -> None:
    # batch 3 fills at B's first token (0.3), after A finished (0.25).
    assert steady_state(HAND, 3, 0.0) is None
    # Full and first finish at the same instant: an empty interval is no steady state.
    same_instant = (RequestRecord(0, (1.0,), 1), RequestRecord(0, (1.0, 2.0), 1))
    assert steady_state(same_instant, 2, 0.0) is None


def test_no_steady_state_when_the_batch_never_fills() -> None:
    # Two requests overlap from 1.5 to 3 s, but a batch of 4 never runs full.
    two = (RequestRecord(0, (1.0, 2.0, 3.0), 1), RequestRecord(0, (1.5, 2.5, 3.5), 1))
    assert steady_state(two, 4, 0.0) is None
    assert run_metrics(two, batch=4).steady is None


@given(runs, st.data())
def test_steady_state_bounds_and_tokens(records: list[RequestRecord], data: st.DataObject) -> None:
    batch = data.draw(st.integers(1, len(records) + 2), label="batch")
    start = min(r.send_s for r in records)
    steady = steady_state(records, batch, start)
    if batch > len(records):
        assert steady is None
        return
    full_at = sorted(r.token_s[0] for r in records)[batch - 1]
    drain_at = min(r.token_s[-1] for r in records)
    if drain_at <= full_at:
        assert steady is None
        return
    assert steady is not None
    assert steady.start_s == full_at - start and steady.end_s == drain_at - start
    assert steady.duration_s > 0
    inside = [t for r in records for t in r.token_s if full_at < t <= drain_at]
    assert steady.output_tokens == len(inside)
    assert run_metrics(records, batch).steady == steady


def test_energy_under_constant_power() -> None:
    flat = [(0.0, 250.0), (1.0, 250.0), (4.0, 250.0)]
    assert energy_between_j(flat, 0.5, 3.5) == pytest.approx(250 * 3)
    assert energy_between_j(flat, 0.0, 4.0) == pytest.approx(250 * 4)


def test_energy_interpolates_power_at_the_edges() -> None:
    ramp = [(0.0, 0.0), (10.0, 100.0)]
    # 20 W at 2 s to 40 W at 4 s: a trapezoid of 2 s at 30 W on average.
    assert energy_between_j(ramp, 2.0, 4.0) == pytest.approx(60.0)
    # A point inside the interval bends the line: 0 -> 100 W over 1 s, then flat.
    bent = [(0.0, 0.0), (1.0, 100.0), (3.0, 100.0)]
    assert energy_between_j(bent, 0.5, 2.0) == pytest.approx(0.5 * 75 + 1.0 * 100)


@pytest.mark.parametrize(
    ("timeline", "start", "end"),
    [
        ([(1.0, 50.0), (5.0, 50.0)], 0.5, 3.0),  # starts before the first sample
        ([(1.0, 50.0), (5.0, 50.0)], 2.0, 5.5),  # ends after the last sample
        ([(1.0, 50.0)], 1.0, 1.0),
        ([(0.0, 50.0)], 0.0, 0.5),  # one sample is no timeline
        ([], 0.0, 1.0),
        ([(0.0, 50.0), (5.0, 50.0)], 3.0, 2.0),  # reversed interval
        ([(0.0, 50.0), (5.0, 50.0)], 2.0, 2.0),
    ],
)
def test_energy_is_none_where_the_timeline_does_not_cover(
    timeline: list[tuple[float, float]], start: float, end: float
) -> None:
    assert energy_between_j(timeline, start, end) is None


timelines = st.lists(st.tuples(st.floats(1e-3, 10), st.floats(0, 1000)), min_size=2, max_size=20).map(
    lambda steps: [(sum(gap for gap, _ in steps[: i + 1]), w) for i, (_, w) in enumerate(steps)]
)


@given(timelines, st.lists(st.floats(0, 1), min_size=3, max_size=3))
def test_energy_adds_up_over_a_split(timeline: list[tuple[float, float]], fractions: list[float]) -> None:
    t0, t1 = timeline[0][0], timeline[-1][0]
    # Clamped: t0 + 1.0 * (t1 - t0) can round past t1, outside the timeline.
    a, b, c = sorted(min(t1, t0 + f * (t1 - t0)) for f in fractions)
    assume(a < b < c)
    whole = energy_between_j(timeline, a, c)
    left = energy_between_j(timeline, a, b)
    right = energy_between_j(timeline, b, c)
    assert whole is not None and left is not None and right is not None
    assert whole == pytest.approx(left + right, rel=1e-9, abs=1e-6)
    watts = [w for _, w in timeline]
    assert le(min(watts) * (c - a), whole) and le(whole, max(watts) * (c - a))


@given(runs, st.data())
def test_failed_requests_are_counted_and_left_out_of_every_figure(
    records: list[RequestRecord], data: st.DataObject
) -> None:
    """A failed request (a server's error, a timeout) is counted, as `vllm bench serve`
    counts it, and its partial stamps change no latency or throughput."""
    reasons = st.sampled_from(["HTTP 500: boom", "timed out after 600 s"])
    failures = data.draw(
        st.lists(st.builds(RequestRecord, st.floats(0, 1), st.just((0.5,)), st.just(3), reasons))
    )
    mixed = list(records) + failures
    m, clean = run_metrics(mixed, batch=4), run_metrics(records, batch=4)
    assert m.requests == len(records) + len(failures) and m.failed == len(failures)
    assert set(m.errors) == {f.error for f in failures}
    assert m.output_tokens == clean.output_tokens
    assert same_stat(m.ttft_ms, clean.ttft_ms) and same_stat(m.e2el_ms, clean.e2el_ms)
    # Throughput over the run's whole span: a failure that was sent first widens it.
    start = min(r.send_s for r in mixed)
    end = max(r.token_s[-1] for r in records)
    assert m.request_throughput == pytest.approx(len(records) / (end - start))


def test_a_run_whose_every_request_failed_has_counts_and_no_figures() -> None:
    failed = [RequestRecord(0.0, (), 3, "connection refused")] * 2
    m = run_metrics(failed, batch=2)
    assert (m.requests, m.failed, m.errors, m.output_tokens) == (2, 2, ("connection refused",), 0)
    assert math.isnan(m.ttft_ms.p99) and m.steady is None
