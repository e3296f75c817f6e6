"""Properties of the energy gate's statistics (``gate.py``), and its error rates measured on
the fake NVML's noisy power readings.

The gate is cheap; ``critical_value`` simulates 100 000 draws the first time it meets a
(baseline repeats, looks, level, history) and caches the value, so the properties below keep
their repeat counts small to keep the distinct keys few."""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter
from collections.abc import Sequence

import pytest
from fake_readings import gated_repeats, gated_summary
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pytest_greenllm.gate import (
    FALSE_ALARM,
    INCONCLUSIVE,
    MISS,
    OK,
    REGRESSED,
    ZONE_FACTOR,
    Change,
    Design,
    critical_value,
    judge,
    point_verdict,
)
from pytest_greenllm.record import Summary, energy_regressions

RANK = {OK: 0, INCONCLUSIVE: 1, REGRESSED: 2}  # the verdicts, from best to worst

# Positive repeat values, with up to 5 repeats a side (few distinct critical values to simulate).
values = st.floats(0.05, 20.0)
sides = st.lists(values, min_size=1, max_size=5)
tolerances = st.floats(0.0, 0.5)
designs = st.builds(Design, tolerance=tolerances, metrics=st.integers(1, 2))
GATE = settings(max_examples=150, deadline=None)  # the first call per key simulates


def _rank(change: Change) -> int:
    return RANK[change.verdict]


# --- critical_value -------------------------------------------------------------------------
# Student's t quantiles t_{1-level, df} from the tables; the simulation's 100 000 draws hold
# them to about 0.01-0.03 at these levels.
@pytest.mark.parametrize(
    ("base_n", "head_n", "history", "level", "quantile"),
    [
        (5, 5, False, 0.025, 2.306),  # df 8
        (5, 5, False, 0.05, 1.860),
        (5, 5, False, FALSE_ALARM / 2, 2.634),  # the two gated metrics' split: 1.5% each
        (3, 3, False, 0.05, 2.132),  # df 4
        (3, 3, False, 0.025, 2.776),
        (10, 10, False, 0.025, 2.101),  # df 18
        (4, 6, False, 0.05, 1.860),  # df 8, unequal sides
        # History: the baseline's spread alone, df = base_n - 1 whatever the head's count.
        (6, 3, True, 0.025, 2.571),  # df 5
        (6, 10, True, 0.025, 2.571),
        (9, 2, True, 0.05, 1.860),  # df 8
    ],
)
def test_one_look_is_students_t(
    base_n: int, head_n: int, history: bool, level: float, quantile: float
) -> None:
    assert critical_value(base_n, (head_n,), level, history) == pytest.approx(quantile, abs=0.03)


def test_the_critical_value_is_seeded() -> None:
    # __wrapped__ skips the cache: the simulation itself returns the same value twice.
    first = critical_value.__wrapped__(5, (2, 3, 4), MISS, False)
    assert critical_value.__wrapped__(5, (2, 3, 4), MISS, False) == first
    assert critical_value(5, (2, 3, 4), MISS, False) == first


@pytest.mark.parametrize("level", [FALSE_ALARM / 2, MISS])
def test_more_looks_need_a_larger_value_but_at_most_bonferronis(level: float) -> None:
    nested = [(2,), (2, 3), (2, 3, 4, 5), tuple(range(2, 11))]
    values_ = [critical_value(5, looks, level, False) for looks in nested]
    assert values_ == sorted(values_) and len(set(values_)) == len(values_)
    for looks, value in zip(nested[1:], values_[1:]):
        # Bonferroni: each look at level / k, the largest of their one-look values. The looks
        # are correlated (they share the baseline and the head's first repeats), so Pocock's
        # one value for all of them is smaller.
        bonferroni = max(critical_value(5, (n,), level / len(looks), False) for n in looks)
        assert value <= bonferroni, looks


def test_history_ignores_the_heads_count_in_its_degrees_of_freedom() -> None:
    # df = base_n - 1 = 5 for any head count; pooled, the head's repeats would add to it.
    history = [critical_value(6, (n,), 0.025, True) for n in (2, 3, 10)]
    assert max(history) - min(history) < 0.05
    assert critical_value(6, (10,), 0.025, False) == pytest.approx(2.145, abs=0.03)  # df 14


# --- judge ------------------------------------------------------------------------------------
@GATE
@given(
    base=sides,
    head=sides,
    design=designs,
    history=st.booleans(),
    power=st.integers(-30, 30),
)
def test_scaling_both_sides_by_a_power_of_two_changes_nothing(
    base: list[float], head: list[float], design: Design, history: bool, power: int
) -> None:
    # A power of two scales every mean exactly, so even ties at the tolerance stay ties.
    c = 2.0**power
    before = judge(base, head, design, history)
    after = judge([v * c for v in base], [v * c for v in head], design, history)
    assert after.verdict == before.verdict and after.noise == before.noise
    assert after.increase == pytest.approx(before.increase, rel=1e-9, abs=1e-12)
    if before.low is None:
        assert after.low is after.high is None
    else:
        assert after.low == pytest.approx(before.low, rel=1e-9, abs=1e-12)
        assert after.high == pytest.approx(before.high, rel=1e-9, abs=1e-12)


def _near(x: float | None, edges: Sequence[float]) -> bool:
    return x is not None and any(math.isclose(x, edge, rel_tol=1e-6, abs_tol=1e-9) for edge in edges)


@GATE
@given(base=sides, head=sides, design=designs, history=st.booleans(), c=st.floats(1e-6, 1e6))
def test_scaling_both_sides_by_any_factor_changes_nothing(
    base: list[float], head: list[float], design: Design, history: bool, c: float
) -> None:
    before = judge(base, head, design, history)
    # Any other factor rounds: a change on an edge of the zone or at the tolerance may tip.
    edges = (*design.zone, design.tolerance)
    assume(not any(_near(x, edges) for x in (before.increase, before.low, before.high)))
    after = judge([v * c for v in base], [v * c for v in head], design, history)
    assert after.verdict == before.verdict
    assert after.increase == pytest.approx(before.increase, rel=1e-9, abs=1e-12)


@GATE
@given(
    base=sides,
    head=sides,
    design=designs,
    history=st.booleans(),
    worse=st.lists(st.floats(1.0, 3.0), min_size=5, max_size=5),
)
def test_a_worse_head_never_turns_regressed_into_ok(
    base: list[float], head: list[float], design: Design, history: bool, worse: list[float]
) -> None:
    # Each head repeat worse by its own factor: its spread may grow (inconclusive), but a
    # regression never becomes ok. A tolerance of 0 has no zone, so no inconclusive: a
    # wider spread makes a rise less credible there, and it passes (tested below).
    assume(design.tolerance > 0)
    before = judge(base, head, design, history)
    after = judge(base, [v * w for v, w in zip(head, worse)], design, history)
    if before.verdict == REGRESSED:
        assert after.verdict != OK


@GATE
@given(base=sides, head=sides, design=designs, history=st.booleans(), shift=st.floats(1.0, 3.0))
def test_the_verdict_is_monotone_in_a_uniform_shift_of_the_head(
    base: list[float], head: list[float], design: Design, history: bool, shift: float
) -> None:
    # Every head repeat times one factor: the log change moves up, the spread stays.
    before = judge(base, head, design, history)
    after = judge(base, [v * shift for v in head], design, history)
    assert _rank(after) >= _rank(before)
    assert after.increase >= before.increase - 1e-12


@GATE
@given(
    base=st.lists(values, min_size=1, max_size=5),
    design=designs,
    history=st.booleans(),
    order=st.randoms(use_true_random=False),
)
def test_identical_sides_never_regress(
    base: list[float], design: Design, history: bool, order: random.Random
) -> None:
    shuffled = list(base)
    order.shuffle(shuffled)
    for head in (list(base), shuffled):
        change = judge(base, head, design, history)
        # fsum adds exactly: the order of the repeats cannot move the means.
        assert change.increase == 0.0 and change.verdict != REGRESSED


@GATE
@given(
    value=values,
    base_n=st.integers(2, 5),
    head_n=st.integers(1, 5),
    tolerance=st.floats(0.01, 0.5),
    change=st.floats(-0.5, 1.5),
    history=st.booleans(),
)
def test_sides_without_spread_are_decided_by_the_tolerance(
    value: float, base_n: int, head_n: int, tolerance: float, change: float, history: bool
) -> None:
    head = value * (1 + change)
    # At the tolerance itself the comparison of two rounded means decides either way.
    assume(not math.isclose(head, value * (1 + tolerance), rel_tol=1e-9))
    judged = judge([value] * base_n, [head] * head_n, Design(tolerance), history)
    assert judged.verdict == (REGRESSED if head > value * (1 + tolerance) else OK)
    # No spread: the interval is the change itself.
    assert judged.low == pytest.approx(judged.increase, abs=1e-9)
    assert judged.high == pytest.approx(judged.increase, abs=1e-9)


@pytest.mark.parametrize(("base", "head"), [([2.0], [2.1]), ([2.0] * 3, [2.1] * 3), ([1.0] * 4, [1.05] * 2)])
def test_a_rise_of_exactly_the_tolerance_passes(base: list[float], head: list[float]) -> None:
    assert judge(base, head, Design(0.05)).verdict == OK


def test_a_rise_of_exactly_the_tolerance_passes_whatever_the_rounding_of_the_mean() -> None:
    # fmean([15.3] * 3) is 15.300000000000002: the gate's own mean is exact for equal values.
    assert 15.0 * 1.02 == 15.3
    assert judge([15.0] * 3, [15.3] * 3, Design(0.02)).verdict == OK


def test_a_zero_tolerance_fails_a_credible_rise_and_passes_the_rest() -> None:
    steady = [1.0, 1.01, 0.99, 1.0]
    assert judge(steady, steady, Design(0.0)).verdict == OK
    assert judge(steady, [v * 1.05 for v in steady], Design(0.0)).verdict == REGRESSED
    # The same mean rise, but as noisy as it is large: not credible.
    assert judge(steady, [1.0, 1.2, 0.9, 1.1], Design(0.0)).verdict == OK


def test_one_repeat_a_side_is_the_plain_threshold() -> None:
    up4, up6 = (judge([1.0], [f], Design(0.05)) for f in (1.04, 1.06))
    assert (up4.verdict, up6.verdict) == (OK, REGRESSED)
    assert up6.noise == "none" and up6.low is up6.high is None


@GATE
@given(base=st.lists(values, min_size=2, max_size=5), head=sides, spread=st.floats(0.0, 5.0))
def test_history_takes_its_noise_from_the_baseline_alone(
    base: list[float], head: list[float], spread: float
) -> None:
    # The head's spread scaled about its log-mean: its mean stays, its spread changes.
    logs = [math.log(v) for v in head]
    centre = statistics.fmean(logs)
    other = [math.exp(centre + spread * (x - centre)) for x in logs]
    design = Design(0.05)
    judged, again = judge(base, head, design, history=True), judge(base, other, design, history=True)
    assert judged.noise == again.noise == "history"
    assert judged.low is not None and judged.high is not None
    assert again.low == pytest.approx(judged.low, rel=1e-6, abs=1e-9)
    assert again.high == pytest.approx(judged.high, rel=1e-6, abs=1e-9)


def test_history_and_pooled_noise_differ_where_the_head_is_noisy() -> None:
    base = [1.00, 1.01, 0.99, 1.00, 1.005, 0.995]  # a quiet history
    head = [0.80, 1.20, 1.00]  # a noisy run with no change
    assert judge(base, head, Design(0.05), history=True).verdict == OK
    pooled = judge(base, head, Design(0.05))
    assert pooled.noise == "repeats" and pooled.verdict == INCONCLUSIVE
    # A history of one repeat has no spread: the pooled repeats are the noise.
    assert judge([1.0], head, Design(0.05), history=True).noise == "repeats"


@pytest.mark.parametrize("bad", [[], [0.0], [-1.0], [math.nan], [math.inf]])
def test_judge_refuses_sides_without_a_positive_finite_value(bad: list[float]) -> None:
    with pytest.raises(ValueError):
        judge([1.0, 1.1], bad, Design(0.05))
    with pytest.raises(ValueError):
        judge(bad, [1.0, 1.1], Design(0.05))


# --- point_verdict and Design -----------------------------------------------------------------
@given(st.lists(st.sampled_from([OK, INCONCLUSIVE, REGRESSED]), max_size=4))
def test_point_verdict_rules(verdicts: list[str]) -> None:
    point = point_verdict(verdicts)
    if not verdicts:
        assert point is None
    elif REGRESSED in verdicts:
        assert point == REGRESSED
    elif set(verdicts) == {OK}:
        assert point == OK
    else:
        assert point == INCONCLUSIVE
    # The point is as bad as its worst metric.
    if verdicts:
        assert point == max(verdicts, key=RANK.__getitem__)


@given(tolerances)
def test_the_zone_is_half_to_twice_the_tolerance(tolerance: float) -> None:
    low, high = Design(tolerance).zone
    assert (low, high) == (tolerance / 2, tolerance * 2) and ZONE_FACTOR == 2.0
    assert low <= tolerance <= high
    assert Design(0.05).zone == pytest.approx((0.025, 0.10))


# --- error rates on the fake NVML's readings ----------------------------------------------------
NOISE, REPEATS, TOLERANCE, TRIALS = 0.03, 5, 0.05, 2000


def measured_side(seed: int, power_scale: float) -> Summary:
    """A point's summary of REPEATS repeats on the fake sensor (fake_readings.gated_repeats)."""
    return gated_summary(*gated_repeats(REPEATS, NOISE, seed, power_scale))


def verdicts_at(change: float) -> Counter[str | None]:
    """The point verdicts of TRIALS seeded points whose head changed by ``change``."""
    first = 1_000_000 * round(change * 1000)  # every change its own draws
    tally: Counter[str | None] = Counter()
    for trial in range(TRIALS):
        base = measured_side(first + 2 * trial, 1.0)
        head = measured_side(first + 2 * trial + 1, 1.0 + change)
        tally[point_verdict([r.outcome for r in energy_regressions(base, head, TOLERANCE)])] += 1
    return tally


def test_the_fake_noise_is_three_percent_a_repeat() -> None:
    watts = [w for seed in range(200) for w in measured_side(seed, 1.0).avg_power_w_repeats if w]
    assert statistics.stdev(watts) / statistics.fmean(watts) == pytest.approx(NOISE, rel=0.05)


@pytest.mark.parametrize(
    ("change", "most", "least"),
    [
        # Nothing changed: fires at most 1% (these seeds: 0 of 2000; 8 inconclusive).
        (0.0, 0.01, 0.0),
        # The zone's lower edge: at most 5%, designed for 3% (50 of 2000, 123 inconclusive).
        (TOLERANCE / 2, 0.05, 0.0),
        # Its upper edge: detected at least 95% (1939 of 2000; 58 inconclusive, 3 ok).
        (TOLERANCE * 2, 1.0, 0.95),
    ],
    ids=["0%", "+2.5%", "+10%"],
)
def test_error_rates_with_five_repeats_a_side_at_three_percent_noise(
    change: float, most: float, least: float
) -> None:
    tally = verdicts_at(change)
    assert sum(tally.values()) == TRIALS and None not in tally
    fired = tally[REGRESSED] / TRIALS
    assert least <= fired <= most, dict(tally)
    # The miss guarantee: where both metrics rose by twice the tolerance, ok at most 5%.
    if change >= TOLERANCE * 2:
        assert tally[OK] / TRIALS <= MISS, dict(tally)
