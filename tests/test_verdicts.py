"""Verdicts: SLO specs, goodput, and the energy-regression gate (gate.py) as one metric and
one point meet it, whose noise comes from the fake NVML's power readings rather than from a
formula. (SLO verdicts: tests/test_slo_verdicts.py.)"""

from __future__ import annotations

import dataclasses
import math
import random
import re
import statistics
from collections import Counter

import pytest
from fake_readings import j_per_token, power_readings
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_greenllm.gate import INCONCLUSIVE, OK, REGRESSED, Noise
from pytest_greenllm.record import Summary, Verdicts, energy_regressions, summarise
from pytest_greenllm.verdicts import (
    DEFAULT_SLO,
    DEFAULT_WORKLOAD_SLOS,
    Goodput,
    Slo,
    SloError,
    Violation,
    goodput,
    parse_slo,
    regression,
)

TOLERANCE = 0.05  # the plugin's default --greenllm-energy-tolerance
REPEATS = 5
WINDOW_S, TOKENS = 2.0, 400  # one repeat's window and output tokens


# --- parse_slo ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "field", "expected"),
    [
        ("ttft_p99=2000ms", "ttft_p99_ms", 2000.0),
        ("ttft_p99=2s", "ttft_p99_ms", 2000.0),
        ("ttft_p99=1500", "ttft_p99_ms", 1500.0),  # a bare number is ms
        ("tbt_p99=0.2s", "tbt_p99_ms", 200.0),
        ("tpot_p99 = 1e-3 s", "tpot_p99_ms", 1.0),
        ("e2el_p99=30000ms", "e2el_p99_ms", 30000.0),
        ("throughput_min=100", "throughput_min", 100.0),  # tok/s: never scaled like a duration
        ("ttft_p99=1s, ttft_p99=3s", "ttft_p99_ms", 3000.0),  # the last one wins
    ],
)
def test_parse_slo_reads_units(spec: str, field: str, expected: float) -> None:
    slo = parse_slo(spec)
    assert getattr(slo, field) == pytest.approx(expected)
    others = {k: v for k, v in vars(slo).items() if k != field}
    assert set(others.values()) == {None}


def test_parse_slo_sets_and_clears_over_a_base() -> None:
    slo = parse_slo("tbt_p99=NONE,e2el_p99=10s", DEFAULT_SLO)
    assert slo == Slo(ttft_p99_ms=2000.0, tbt_p99_ms=None, e2el_p99_ms=10000.0)
    assert parse_slo("", DEFAULT_SLO) == DEFAULT_SLO
    assert parse_slo(" , ") == Slo()


@pytest.mark.parametrize(
    ("spec", "item"),
    [
        ("latency_p99=5ms", "latency_p99=5ms"),
        ("ttft_p99=2s,ttft", "ttft"),
        ("tbt_p99=fast", "tbt_p99=fast"),
        ("ttft_p99=1.2.3ms", "ttft_p99=1.2.3ms"),
        ("ttft_p99=", "ttft_p99="),
        ("throughput_min=many", "throughput_min=many"),
        ("ttft_p99=0ms", "ttft_p99=0ms"),
        ("throughput_min=0", "throughput_min=0"),
        ("tbt_p99=-5ms", "tbt_p99=-5ms"),
        ("throughput_min=-1", "throughput_min=-1"),
        ("throughput_min=inf", "throughput_min=inf"),
        ("throughput_min=nan", "throughput_min=nan"),
        ("e2el_p99=1e999s", "e2el_p99=1e999s"),
    ],
)
def test_parse_slo_rejects_naming_the_item(spec: str, item: str) -> None:
    with pytest.raises(SloError) as raised:
        parse_slo(f"tbt_p99=100ms, {spec}")
    assert repr(item) in str(raised.value)


def test_defaults_follow_the_papers_interactive_setting() -> None:
    assert DEFAULT_SLO == Slo(ttft_p99_ms=2000.0, tbt_p99_ms=200.0)
    assert dict(DEFAULT_WORKLOAD_SLOS) == {"L": Slo(ttft_p99_ms=5000.0, tbt_p99_ms=200.0)}


# --- goodput ------------------------------------------------------------------------------
def test_goodput_counts_requests_within_every_limit() -> None:
    slo = Slo(ttft_p99_ms=1000.0, tbt_p99_ms=1.0, tpot_p99_ms=50.0, e2el_p99_ms=5000.0)
    ttft = [500.0, 1500.0, 500.0, 500.0, 500.0, 1000.0]
    tpot: list[float | None] = [40.0, 40.0, 60.0, None, 40.0, 50.0]
    e2el = [3000.0, 3000.0, 3000.0, 600.0, 6000.0, 5000.0]
    # Good: #0, #3 (one token: no TPOT to check), #5 (on every limit). TBT is no
    # per-request limit in vllm's goodput, so the 1 ms TBT limit rejects none.
    good = goodput(ttft, tpot, e2el, duration_s=2.0, slo=slo, energy_j=300.0)
    assert (good.good_requests, good.requests) == (3, 6)
    assert good.share == 0.5 and good.requests_per_s == 1.5
    assert good.j_per_good_request == 100.0
    assert goodput(ttft, tpot, e2el, 2.0, Slo(), None).good_requests == 6
    assert goodput(ttft, tpot, e2el, 2.0, Slo(), None).j_per_good_request is None
    # 3 good requests on 300 J is 10 per kJ.
    assert good.good_requests_per_kj == 10.0
    # Two more requests failed: they count, and are not good.
    with_failures = goodput(ttft, tpot, e2el, 2.0, slo, 300.0, requests=8)
    assert (with_failures.good_requests, with_failures.requests, with_failures.share) == (3, 8, 3 / 8)


def test_goodput_with_no_good_or_no_requests() -> None:
    none_good = goodput([5000.0], [10.0], [9000.0], 1.0, DEFAULT_SLO, 50.0)
    assert none_good.share == 0.0 and none_good.j_per_good_request is None
    assert math.isnan(goodput([], [], [], 0.0, DEFAULT_SLO, 0.0).share)


# --- the regression gate over fake-NVML noise ---------------------------------------------
def j_per_token_repeats(seed: int, noise: float, power_scale: float = 1.0) -> list[float]:
    """J/token of each of REPEATS repeats, one noisy reading of the fake sensor each."""
    return j_per_token(power_readings(REPEATS, noise, seed, power_scale))


def test_ten_percent_more_on_every_repeat_fails_the_gate() -> None:
    base = j_per_token_repeats(seed=7, noise=0.03)
    verdict = regression("j_per_output_token", [base], [v * 1.10 for v in base], TOLERANCE)
    assert verdict.regressed and verdict.verdict == verdict.outcome == REGRESSED
    assert verdict.method == "t (repeats)" and verdict.repeats == (REPEATS, REPEATS)
    assert verdict.dropped == (0, 0)
    assert verdict.increase == pytest.approx(0.10)
    # Credibly beyond the zone's lower edge, the change the user surely accepts.
    assert verdict.ci_low is not None and verdict.ci_high is not None
    assert TOLERANCE / 2 < verdict.ci_low < verdict.increase < verdict.ci_high
    message = verdict.message("p")
    assert message.startswith("energy regression at p: j_per_output_token ")
    assert "zone 2.5% to 10%" in message and "5 vs 5 repeats" in message and "interval +" in message
    assert "left out" not in message


@pytest.mark.parametrize("noise", [0.01, 0.02])
def test_a_fake_ten_percent_power_rise_is_caught_under_noise(noise: float) -> None:
    # Independent noise on both sides, as two CI runs have.
    for trial in range(20):
        base = j_per_token_repeats(2 * trial, noise)
        head = j_per_token_repeats(2 * trial + 1, noise, power_scale=1.10)
        assert regression("j_per_output_token", [base], head, TOLERANCE).regressed, trial


def test_a_ten_percent_rise_under_three_percent_noise_is_seldom_passed() -> None:
    # +10% is the zone's upper edge: the gate passes it (ok) at most MISS = 5% of the time.
    # At 3% noise and 5 repeats one metric alone is not always settled: of these 100 seeded
    # trials 88 regress, 9 are inconclusive and 3 pass (the point's two gated metrics together
    # are detected at least 95%: test_gate.py).
    verdicts = Counter(
        regression(
            "j", [j_per_token_repeats(2 * t, 0.03)], j_per_token_repeats(2 * t + 1, 0.03, 1.10), TOLERANCE
        ).verdict
        for t in range(100)
    )
    assert verdicts[OK] <= 5 and verdicts[REGRESSED] >= 85, verdicts


def test_the_same_values_pass_against_themselves() -> None:
    base = j_per_token_repeats(seed=3, noise=0.03)
    verdict = regression("j_per_output_token", [base], list(base), TOLERANCE)
    assert verdict.verdict == OK and not verdict.regressed and verdict.increase == 0.0
    assert verdict.ci_low is not None and verdict.ci_high is not None
    assert verdict.ci_low < 0 < verdict.ci_high < 2 * TOLERANCE
    assert verdict.message("p").startswith("energy change ok at p: ")


def test_three_percent_noise_without_a_shift_passes_99_of_100() -> None:
    sides = [(j_per_token_repeats(2 * t, 0.03), j_per_token_repeats(2 * t + 1, 0.03)) for t in range(100)]
    # The noise must really be 3% a repeat, or passing would prove nothing.
    pooled = [v for base, _ in sides for v in base]
    assert statistics.stdev(pooled) / statistics.fmean(pooled) == pytest.approx(0.03, rel=0.15)
    verdicts = Counter(regression("j", [base], head, TOLERANCE).verdict for base, head in sides)
    # All 100 of these seeded trials are ok (the rule before issue 15 failed trial 25).
    assert verdicts[OK] >= 99 and verdicts[REGRESSED] == 0, verdicts


def test_a_rise_carried_by_one_outlier_repeat_is_not_credible() -> None:
    # +14.5% in the geometric mean, but the outlier widens the interval past both edges.
    verdict = regression("j", [[1.0, 1.0, 1.0]], [1.0, 1.0, 1.5], TOLERANCE)
    assert verdict.increase > TOLERANCE and not verdict.regressed
    assert verdict.verdict == INCONCLUSIVE and verdict.outcome == INCONCLUSIVE
    assert verdict.ci_low is not None and verdict.ci_low < TOLERANCE / 2
    assert verdict.message("p").startswith("energy change inconclusive at p: ")


@pytest.mark.parametrize("rise", [1.0, 1.04, 1.06, 1.5])
def test_one_repeat_on_each_side_is_inconclusive(rise: float) -> None:
    # It used to be the plain threshold: +6% regressed on two readings of unknown noise.
    verdict = regression("j", [[1.0]], [rise], TOLERANCE)
    assert verdict.verdict == INCONCLUSIVE and not verdict.regressed
    assert verdict.method == "none (too few repeats for their noise)"
    assert verdict.ci_low is verdict.ci_high is None
    message = verdict.message("p")
    assert message.startswith("energy change inconclusive at p: j ")
    assert "interval" not in message and "1 vs 1 repeats; none (too few repeats" in message


@pytest.mark.parametrize(("base", "head"), [([1.0], [1.0] * 5), ([1.0] * 5, [1.0])])
def test_one_repeat_on_one_side_takes_the_noise_from_the_other(base: list[float], head: list[float]) -> None:
    # No spread on the other side either: the interval is the change, the tolerance decides.
    up4 = regression("j", [base], [v * 1.04 for v in head], TOLERANCE)
    up6 = regression("j", [base], [v * 1.06 for v in head], TOLERANCE)
    assert (up4.verdict, up6.verdict) == (OK, REGRESSED)
    assert up6.method == "t (repeats)" and up6.repeats == (len(base), len(head))
    # With spread on the other side, one repeat cannot settle a 6% rise.
    noisy = [v * (1 + 0.03 * (-1) ** i) for i, v in enumerate([*base, *head][:5])]
    spread = regression("j", [noisy], [noisy[0] * 1.06], TOLERANCE)
    assert spread.verdict == INCONCLUSIVE and spread.repeats == (5, 1)


def test_no_repeats_or_an_unusable_one_is_an_error() -> None:
    # energy_regressions drops what cannot be compared before it asks.
    with pytest.raises(ValueError, match="j_per_output_token: both runs need at least one repeat"):
        regression("j_per_output_token", [], [1.0], TOLERANCE)
    with pytest.raises(ValueError, match="j_per_output_token: both runs need"):
        regression("j_per_output_token", [[1.0]], [], TOLERANCE)
    with pytest.raises(ValueError, match="every repeat needs a finite value > 0; drop the others first"):
        regression("j_per_output_token", [[1.0, 0.0]], [1.0], TOLERANCE)


@pytest.mark.parametrize(("base", "head"), [([2.0], [2.1]), ([2.0] * 3, [2.1] * 3), ([2.0] * 5, [2.1])])
def test_a_rise_of_exactly_the_tolerance_passes(base: list[float], head: list[float]) -> None:
    # README: the tolerance is 'the largest increase over the baseline that passes'; one
    # repeat a side is never regressed (inconclusive).
    verdict = regression("j", [base], head, TOLERANCE)
    assert not verdict.regressed and verdict.verdict in (OK, INCONCLUSIVE)
    if len(base) + len(head) > 2:
        assert verdict.verdict == OK


def test_the_message_states_a_fractional_tolerance() -> None:
    message = regression("j", [[1.0]], [1.1], 0.025).message("p")
    assert "tolerance 2.5%" in message and "zone 1.25% to 5%" in message


@pytest.mark.parametrize("bad", [math.nan, math.inf, 0.0, -1.0])
def test_an_unmeasurable_head_does_not_pass_silently(bad: float) -> None:
    with pytest.raises(ValueError, match="finite value > 0"):
        regression("j", [[1.0, 1.0, 1.0]], [bad] * 3, TOLERANCE)
    with pytest.raises(ValueError, match="finite value > 0"):
        regression("j", [[1.0, 1.0, 1.0]], [1.0, bad, 1.0], TOLERANCE)


def test_a_report_before_the_sequential_gate_has_an_outcome_from_regressed() -> None:
    new = regression("j", [[1.0] * 3], [1.2] * 3, TOLERANCE)
    old = dataclasses.replace(new, verdict=None, repeats=None)
    assert old.outcome == REGRESSED and "repeats;" not in old.message("p")
    assert dataclasses.replace(old, regressed=False).outcome == OK


def test_a_history_of_runs_is_judged_with_random_effects() -> None:
    runs = [[1.00, 1.01, 0.99], [1.03, 1.04, 1.02], [0.98, 0.99, 0.97]]
    verdict = regression("j", runs, [1.0, 1.01, 0.99], TOLERANCE)
    assert verdict.method == "t (history, random effects)" and verdict.repeats == (9, 3)
    assert verdict.base_mean == pytest.approx(statistics.fmean([v for r in runs for v in r]))
    assert "9 vs 3 repeats; t (history, random effects)" in verdict.message("p")
    # One run and a noise profile: the profile's between-run spread is added.
    profile = regression("j", runs[:1], [1.0, 1.01, 0.99], TOLERANCE, noise=Noise(1e-4, 50, 1e-4, 50))
    assert profile.method == "t (repeats and noise profile)"


def test_dropped_repeats_are_stated_in_the_message() -> None:
    verdict = regression("j", [[1.0, 1.01, 0.99]], [1.0, 1.01], TOLERANCE, dropped=(2, 1))
    assert verdict.dropped == (2, 1) and verdict.repeats == (3, 2)
    assert "3 vs 2 repeats (2 and 1 without energy left out); t (repeats)" in verdict.message("p")


# --- properties ---------------------------------------------------------------------------
samples = st.lists(st.floats(0.1, 10.0), min_size=2, max_size=5)
tolerances = st.floats(0.0, 0.5)
# The gate is cheap; each new (repeats, looks, level) simulates its critical value once.
GATE = settings(max_examples=100, deadline=None)


@GATE
@given(
    value=st.floats(0.1, 10.0),
    base_n=st.integers(1, 5),
    head_n=st.integers(1, 5),
    tolerance=st.floats(0.01, 0.5),
    margin=st.floats(1e-6, 2.0),
)
def test_a_steady_rise_beyond_the_tolerance_always_regresses(
    value: float, base_n: int, head_n: int, tolerance: float, margin: float
) -> None:
    # No spread on either side: any factor beyond the tolerance is credible, any within it
    # passes, whatever the repeat counts (but one a side: nothing shows the noise).
    beyond = value * (1 + tolerance) * (1 + margin)
    within = value * (1 + tolerance) / (1 + margin)
    up = regression("m", [[value] * base_n], [beyond] * head_n, tolerance).verdict
    flat = regression("m", [[value] * base_n], [within] * head_n, tolerance).verdict
    if base_n == head_n == 1:
        assert up == flat == INCONCLUSIVE
    else:
        assert (up, flat) == (REGRESSED, OK)


@GATE
@given(base=samples, head=samples, tolerance=tolerances, worse=st.floats(1.0, 3.0))
def test_a_worse_head_keeps_a_regression(
    base: list[float], head: list[float], tolerance: float, worse: float
) -> None:
    before = regression("m", [base], head, tolerance)
    after = regression("m", [base], [v * worse for v in head], tolerance)
    if before.regressed:
        assert after.regressed
    if before.verdict != OK:
        assert after.verdict != OK


@GATE
@given(base=samples, tolerance=tolerances, order=st.randoms(use_true_random=False))
def test_identical_samples_never_regress(base: list[float], tolerance: float, order: random.Random) -> None:
    assert not regression("m", [base], list(base), tolerance).regressed
    shuffled = list(base)
    order.shuffle(shuffled)
    # fmean sums exactly: order cannot nudge the mean above a zero tolerance.
    assert not regression("m", [base], shuffled, tolerance).regressed
    assert not regression("m", [base, shuffled], list(base), tolerance).regressed


@GATE
@given(base=samples, head=samples, tolerance=tolerances)
def test_more_metrics_or_looks_widen_the_interval_on_the_side_they_guard(
    base: list[float], head: list[float], tolerance: float
) -> None:
    one = regression("m", [base], head, tolerance)
    # Two gated metrics share the false-alarm rate: the lower end (which fires) moves down;
    # the miss rate is not split: the upper end stays.
    two = regression("m", [base], head, tolerance, metrics=2)
    assert one.ci_low is not None and one.ci_high is not None
    assert two.ci_low is not None and two.ci_low <= one.ci_low and two.ci_high == one.ci_high
    assert two.increase == one.increase
    # Several looks: one boundary for all of them, wider on both ends than one look's.
    looks = tuple(range(2, len(head) + 1))
    if len(looks) > 1:
        seq = regression("m", [base], head, tolerance, looks=looks)
        assert seq.ci_low is not None and seq.ci_high is not None
        assert seq.ci_low <= one.ci_low and seq.ci_high >= one.ci_high


@GATE
@given(
    base=st.lists(samples | st.lists(st.floats(0.1, 10.0), min_size=1, max_size=1), min_size=1, max_size=3),
    head=samples,
    tolerance=st.sampled_from([0.0, 0.05, 0.1, 0.2]),
    profile=st.booleans(),
)
def test_regression_message_names_metric_means_percent_tolerance(
    base: list[list[float]], head: list[float], tolerance: float, profile: bool
) -> None:
    noise = Noise(1e-4, 20, 1e-4, 20) if profile else None
    verdict = regression("avg_power_w", base, head, tolerance, noise=noise)
    message = verdict.message("M-tp2-b8-1410MHz")
    what = "energy regression" if verdict.regressed else f"energy change {verdict.verdict}"
    assert message.startswith(f"{what} at M-tp2-b8-1410MHz: avg_power_w ")
    assert f"{verdict.head_mean:.4g} vs baseline {verdict.base_mean:.4g}" in message
    assert f"({verdict.increase:+.1%}" in message
    stated = re.search(r"tolerance ([0-9.]+)%", message)  # any spelling of the same number
    assert stated is not None and float(stated.group(1)) == pytest.approx(tolerance * 100)
    assert f"{sum(len(r) for r in base)} vs {len(head)} repeats" in message
    assert verdict.method in message and "\n" not in message
    if len(base) > 1:
        expected = "t (history, random effects)"
    else:
        expected = "t (repeats and noise profile)" if profile else "t (repeats)"
    assert verdict.method == expected and verdict.regressed == (verdict.verdict == REGRESSED)


# --- energy_regressions -------------------------------------------------------------------
def repeats(
    j_per_token: list[float | None], watts: list[float | None], runs: tuple[int, ...] = ()
) -> Summary:
    """A summary holding only the per-repeat lists the gate tests (and a history's grouping)."""
    return dataclasses.replace(
        summarise(()),
        j_per_output_token_repeats=tuple(j_per_token),
        avg_power_w_repeats=tuple(watts),
        runs=runs,
    )


def test_energy_regressions_compares_only_metrics_both_have() -> None:
    base = repeats([0.5] * 3, [300.0] * 3)
    head = repeats([0.6] * 3, [])
    (verdict,) = energy_regressions(base, head, TOLERANCE)
    assert verdict.metric == "j_per_output_token" and verdict.regressed
    assert [v.metric for v in energy_regressions(head, base, TOLERANCE)] == ["j_per_output_token"]
    assert energy_regressions(summarise(()), base, TOLERANCE) == []
    both = energy_regressions(base, dataclasses.replace(head, avg_power_w_repeats=(330.0,) * 3), TOLERANCE)
    assert [(v.metric, v.regressed) for v in both] == [("j_per_output_token", True), ("avg_power_w", True)]


def test_energy_regressions_split_the_false_alarm_rate_over_the_metrics() -> None:
    base = repeats([0.50, 0.51, 0.49], [300.0, 306.0, 297.0])
    head = repeats([0.53, 0.55, 0.52], [318.0, 322.0, 311.0])
    j, w = energy_regressions(base, head, TOLERANCE)
    assert j == regression(
        "j_per_output_token", [[0.50, 0.51, 0.49]], [0.53, 0.55, 0.52], TOLERANCE, metrics=2
    )
    assert w == regression(
        "avg_power_w", [[300.0, 306.0, 297.0]], [318.0, 322.0, 311.0], TOLERANCE, metrics=2
    )
    # The looks reach the gate.
    looks = energy_regressions(base, head, TOLERANCE, looks=(2, 3, 4))
    assert looks[0] == regression(
        "j_per_output_token", [[0.50, 0.51, 0.49]], [0.53, 0.55, 0.52], TOLERANCE, metrics=2, looks=(2, 3, 4)
    )


def test_a_pooled_baseline_is_judged_run_by_run() -> None:
    # history._pool records how many repeats came from each report: (3, 2) is two runs.
    base = repeats([0.50, 0.51, 0.49, 0.53, 0.52], [300.0, 306.0, 297.0, 310.0, 309.0], runs=(3, 2))
    head = repeats([0.50, 0.51, 0.50], [301.0, 305.0, 300.0])
    j, w = energy_regressions(base, head, TOLERANCE)
    assert j == regression(
        "j_per_output_token", [[0.50, 0.51, 0.49], [0.53, 0.52]], [0.50, 0.51, 0.50], TOLERANCE, metrics=2
    )
    assert {j.method, w.method} == {"t (history, random effects)"}
    # A grouping that does not add up to the repeats is no grouping: one run.
    odd = dataclasses.replace(base, runs=(3, 3))
    assert {r.method for r in energy_regressions(odd, head, TOLERANCE)} == {"t (repeats)"}
    # A run left with no usable repeat is no run: one is left, the pooled t.
    empty = repeats([0.50, 0.51, 0.49, 0.0, None], [300.0, 306.0, 297.0, 0.0, 0.0], runs=(3, 2))
    alone = energy_regressions(empty, head, TOLERANCE)
    assert [(r.method, r.repeats, r.dropped) for r in alone] == [("t (repeats)", (3, 3), (2, 0))] * 2


def test_a_noise_profile_reaches_the_metric_it_describes() -> None:
    base = repeats([0.50, 0.51, 0.49], [300.0, 306.0, 297.0])
    head = repeats([0.50, 0.51, 0.50], [301.0, 305.0, 300.0])
    profile = {"j_per_output_token": Noise(1e-4, 50, 1e-4, 50)}
    j, w = energy_regressions(base, head, TOLERANCE, noise=profile)
    assert (j.method, w.method) == ("t (repeats and noise profile)", "t (repeats)")


def test_repeats_without_energy_are_dropped_one_at_a_time_and_counted() -> None:
    # A baseline repeat that read 0 J (a window too short for the counter), a head repeat
    # that read 0 J, and ones with no token or no finite value: each is left out and counted,
    # the rest compared (it used to refuse the baseline, and raise on the head).
    base = repeats([0.50, 0.0, 0.51, 0.49], [300.0, 0.0, 306.0, 297.0])
    head = repeats([0.53, 0.55, 0.0, None, math.nan], [318.0, 322.0, 0.0, 320.0, math.inf])
    j, w = energy_regressions(base, head, TOLERANCE)
    assert (j.repeats, j.dropped) == ((3, 2), (1, 3))
    assert (w.repeats, w.dropped) == ((3, 3), (1, 2))
    assert j.head_mean == pytest.approx(0.54) and j.base_mean == pytest.approx(0.5)
    assert "(1 and 3 without energy left out)" in j.message("p")


@pytest.mark.parametrize(
    ("base", "head"),
    [
        ([0.0, 0.0], [0.5, 0.6]),  # a baseline that measured no energy
        ([0.5, 0.6], [0.0, 0.0]),  # a head that measured none
        ([0.0, 0.0], [0.0, 0.0]),  # neither
        ([None, math.nan], [0.5, 0.6]),
    ],
)
def test_a_side_left_without_repeats_is_not_compared(
    base: list[float | None], head: list[float | None]
) -> None:
    # No regression is computed: the point's energy verdict is None ('no energy' in compare),
    # never a pass or a fail made up from nothing.
    assert energy_regressions(repeats(base, base), repeats(head, head), TOLERANCE) == []
    assert Verdicts((), (), NO_GOODPUT).energy is None


# --- Verdicts: the point's energy verdict and failures ---------------------------------------
NO_GOODPUT = Goodput(1, 1, 1.0, None)


def test_the_point_verdict_is_its_worst_metrics() -> None:
    ok = regression("j_per_output_token", [[1.0] * 3], [1.0] * 3, TOLERANCE)
    regressed = regression("avg_power_w", [[1.0] * 3], [1.2] * 3, TOLERANCE)
    unsure = regression("avg_power_w", [[1.0, 1.0, 1.0]], [1.0, 1.0, 1.5], TOLERANCE)
    assert (ok.verdict, regressed.verdict, unsure.verdict) == (OK, REGRESSED, INCONCLUSIVE)
    assert Verdicts((), (), NO_GOODPUT).energy is None
    assert Verdicts((), (ok, ok), NO_GOODPUT).energy == OK
    assert Verdicts((), (ok, unsure), NO_GOODPUT).energy == INCONCLUSIVE
    assert Verdicts((), (unsure, regressed), NO_GOODPUT).energy == REGRESSED
    assert Verdicts((), (unsure, regressed), NO_GOODPUT).regressed


@pytest.mark.parametrize("policy", ["fail", "warn", "pass"])
def test_an_inconclusive_point_fails_only_when_asked(policy: str) -> None:
    ok = regression("j_per_output_token", [[1.0] * 3], [1.0] * 3, TOLERANCE)
    unsure = regression("avg_power_w", [[1.0, 1.0, 1.0]], [1.0, 1.0, 1.5], TOLERANCE)
    lines = Verdicts((), (ok, unsure), NO_GOODPUT).failures("p", policy)
    if policy == "fail":
        assert lines == [unsure.message("p")]
        assert lines[0].startswith("energy change inconclusive at p: avg_power_w ")
    else:
        assert lines == []
    assert Verdicts((), (ok, ok), NO_GOODPUT).failures("p", policy) == []


def test_failures_list_slo_misses_then_regressions() -> None:
    regressed = regression("avg_power_w", [[1.0] * 3], [1.2] * 3, TOLERANCE)
    missed = Violation("tbt_p99", 250.0, 200.0, "ms")
    lines = Verdicts((missed,), (regressed,), NO_GOODPUT).failures("p")
    assert lines == [missed.message("p"), regressed.message("p")]


def test_regression_judges_at_the_looks_it_is_given() -> None:
    """A sequential run's boundary is wider than one look's: dropping ``looks`` on the way to
    the gate would narrow the interval and inflate the error rates."""
    base, head = [[1.0, 1.02, 0.98, 1.01, 0.99]], [1.05, 1.07, 1.03, 1.06, 1.04]
    one = regression("j_per_output_token", base, head, 0.05)
    sequential = regression("j_per_output_token", base, head, 0.05, looks=tuple(range(2, 11)))
    assert one.ci_low is not None and sequential.ci_low is not None
    assert sequential.ci_low < one.ci_low and sequential.ci_high > one.ci_high  # type: ignore[operator]


@pytest.mark.parametrize(
    ("base", "head", "message"),
    [
        ([[]], [1.0], "both runs need at least one repeat"),
        ([[1.0]], [], "both runs need at least one repeat"),
        ([[1.0, 0.0]], [1.0], "every repeat needs a finite value > 0"),
        ([[1.0]], [math.nan], "every repeat needs a finite value > 0"),
    ],
)
def test_regression_refuses_repeats_without_a_value(
    base: list[list[float]], head: list[float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        regression("avg_power_w", base, head, 0.05)


def test_a_legacy_violation_says_which_side_of_its_limit_it_fell() -> None:
    assert Violation("ttft_p99", 2500.0, 2000.0, "ms").message("p") == (
        "SLO missed at p: ttft_p99 = 2500 ms > limit 2000 ms"
    )
    assert Violation("throughput_min", 40.0, 50.0, "tok/s").message("p") == (
        "SLO missed at p: throughput_min = 40 tok/s < limit 50 tok/s"
    )
