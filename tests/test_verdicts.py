"""Verdicts: SLO specs and violations, goodput, and the bootstrap energy-regression gate,
whose noise comes from the fake NVML's power readings rather than from a formula."""

from __future__ import annotations

import dataclasses
import math
import re
import statistics
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_greenllm.devices.fake_nvml import FakeNvml
from pytest_greenllm.record import Summary, energy_regressions, summarise
from pytest_greenllm.verdicts import (
    DEFAULT_SLO,
    DEFAULT_WORKLOAD_SLOS,
    Slo,
    SloError,
    bootstrap_increase,
    goodput,
    parse_slo,
    regression,
    slo_violations,
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


# --- slo_violations -----------------------------------------------------------------------
@dataclass(frozen=True)
class Figures:
    """The figures an SLO is checked against; None: not measured."""

    ttft_p99_ms: float | None = None
    itl_p99_ms: float | None = None
    tpot_p99_ms: float | None = None
    e2el_p99_ms: float | None = None
    output_throughput: float | None = None


LIMITS = Slo(ttft_p99_ms=2000.0, tbt_p99_ms=200.0, tpot_p99_ms=50.0, e2el_p99_ms=8000.0, throughput_min=50.0)
WITHIN = Figures(
    ttft_p99_ms=2000.0, itl_p99_ms=200.0, tpot_p99_ms=50.0, e2el_p99_ms=8000.0, output_throughput=50.0
)  # on every limit: still met


@pytest.mark.parametrize(
    ("metric", "key", "value", "text"),
    [
        ("ttft_p99", "ttft_p99_ms", 2613.0, "ttft_p99 = 2613 ms > limit 2000 ms"),
        ("tbt_p99", "itl_p99_ms", 250.5, "tbt_p99 = 250.5 ms > limit 200 ms"),
        ("tpot_p99", "tpot_p99_ms", 51.0, "tpot_p99 = 51 ms > limit 50 ms"),
        ("e2el_p99", "e2el_p99_ms", 9000.0, "e2el_p99 = 9000 ms > limit 8000 ms"),
        ("throughput_min", "output_throughput", 42.0, "throughput_min = 42 tok/s < limit 50 tok/s"),
    ],
)
def test_each_missed_limit_is_one_line_naming_it(metric: str, key: str, value: float, text: str) -> None:
    assert slo_violations(WITHIN, LIMITS) == []
    (violation,) = slo_violations(dataclasses.replace(WITHIN, **{key: value}), LIMITS)
    assert violation.metric == metric and violation.measured == value
    assert violation.message("S-tp1-b8-1410MHz") == f"SLO missed at S-tp1-b8-1410MHz: {text}"


def test_unmeasured_values_and_absent_limits_are_not_checked() -> None:
    awful = Figures(ttft_p99_ms=1e9, itl_p99_ms=1e9, tpot_p99_ms=1e9, e2el_p99_ms=1e9, output_throughput=0.0)
    assert slo_violations(Figures(), LIMITS) == []
    assert slo_violations(summarise(()), LIMITS) == []  # a point with nothing measured
    assert slo_violations(awful, Slo()) == []
    assert [v.metric for v in slo_violations(awful, LIMITS)] == [
        "ttft_p99",
        "tbt_p99",
        "tpot_p99",
        "e2el_p99",
        "throughput_min",
    ]


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
class ManualClock:
    """Simulated time: the fake's readings need no sleeping."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def j_per_token_repeats(seed: int, noise: float, power_scale: float = 1.0) -> list[float]:
    """J/token of each repeat from one noisy power reading of a half-loaded fake H100.

    One reading a repeat keeps the fake's full relative noise in each repeat: a mean of N
    readings would shrink it to noise/sqrt(N) and test a quieter world than the issue's."""
    clock = ManualClock()
    fake = FakeNvml(
        gpus=1, clock=clock, noise=noise, seed=seed, power_scale=power_scale, energy_counter=False
    )
    fake.nvmlInit()
    fake.set_load(0.5)
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    out = []
    for _ in range(REPEATS):
        clock.now_s += WINDOW_S
        out.append(fake.nvmlDeviceGetPowerUsage(handle) / 1000 * WINDOW_S / TOKENS)
    return out


def test_ten_percent_more_on_every_repeat_fails_the_gate() -> None:
    base = j_per_token_repeats(seed=7, noise=0.03)
    verdict = regression("j_per_output_token", base, [v * 1.10 for v in base], TOLERANCE)
    assert verdict.regressed and verdict.method == "bootstrap"
    assert verdict.increase == pytest.approx(0.10)
    assert verdict.ci_low is not None and verdict.ci_low > 0


@pytest.mark.parametrize("noise", [0.01, 0.02, 0.03])
def test_a_fake_ten_percent_power_rise_is_caught_under_noise(noise: float) -> None:
    # Independent noise on both sides, as two CI runs have.
    for trial in range(20):
        base = j_per_token_repeats(2 * trial, noise)
        head = j_per_token_repeats(2 * trial + 1, noise, power_scale=1.10)
        assert regression("j_per_output_token", base, head, TOLERANCE).regressed, trial


def test_the_same_values_pass_against_themselves() -> None:
    base = j_per_token_repeats(seed=3, noise=0.03)
    verdict = regression("j_per_output_token", base, list(base), TOLERANCE)
    assert not verdict.regressed and verdict.increase == 0.0


def test_three_percent_noise_without_a_shift_passes_99_of_100() -> None:
    sides = [(j_per_token_repeats(2 * t, 0.03), j_per_token_repeats(2 * t + 1, 0.03)) for t in range(100)]
    # The noise must really be 3% a repeat, or passing would prove nothing.
    pooled = [v for base, _ in sides for v in base]
    assert statistics.stdev(pooled) / statistics.fmean(pooled) == pytest.approx(0.03, rel=0.15)
    passed = sum(not regression("j", base, head, TOLERANCE).regressed for base, head in sides)
    # 99 of these 100 seeded trials pass: the one false alarm (trial 25) is a +5.2% mean
    # shift by chance, CI +2.4% to +8.6% (5 vs 5 repeats at 3% spread the mean ratio ~1.9%).
    assert passed >= 99


def test_a_rise_carried_by_one_outlier_repeat_is_not_credible() -> None:
    # +16.7% in the mean, but resampling head's two unchanged repeats alone shows no rise.
    verdict = regression("j", [1.0, 1.0, 1.0], [1.0, 1.0, 1.5], TOLERANCE)
    assert verdict.increase > TOLERANCE and verdict.ci_low == 0.0 and not verdict.regressed


@pytest.mark.parametrize(("base", "head"), [([1.0], [1.0] * 5), ([1.0] * 5, [1.0])])
def test_one_repeat_on_either_side_uses_the_plain_threshold(base: list[float], head: list[float]) -> None:
    up4 = regression("j", base, [v * 1.04 for v in head], TOLERANCE)
    up6 = regression("j", base, [v * 1.06 for v in head], TOLERANCE)
    assert (up4.regressed, up6.regressed) == (False, True)
    assert up6.method == "threshold (single repeat)" and up6.ci_low is up6.ci_high is None
    assert "CI" not in up6.message("p") and "threshold (single repeat)" in up6.message("p")


def test_no_repeats_is_an_error() -> None:
    with pytest.raises(ValueError, match="j_per_output_token"):
        regression("j_per_output_token", [], [1.0], TOLERANCE)


def test_a_rise_of_exactly_the_tolerance_passes() -> None:
    # README: the tolerance is 'the largest increase over the baseline that passes'.
    assert not regression("j", [2.0], [2.1], TOLERANCE).regressed


def test_the_message_states_a_fractional_tolerance() -> None:
    assert "tolerance 2.5%" in regression("j", [1.0], [1.1], 0.025).message("p")


def test_an_unmeasurable_head_does_not_pass_silently() -> None:
    try:
        verdict = regression("j", [1.0, 1.0, 1.0], [math.nan] * 3, TOLERANCE)
    except ValueError:
        return
    assert verdict.regressed


# --- properties ---------------------------------------------------------------------------
samples = st.lists(st.floats(0.1, 10.0), min_size=2, max_size=6)
tolerances = st.floats(0.0, 0.5)
BOOTSTRAPPING = settings(max_examples=25)  # 2000 resamples a call: keep the file fast


@BOOTSTRAPPING
@given(base=samples, head_size=st.integers(1, 6), tolerance=tolerances, margin=st.floats(1e-6, 2.0))
def test_a_scaled_copy_beyond_tolerance_and_spread_always_regresses(
    base: list[float], head_size: int, tolerance: float, margin: float
) -> None:
    # Beyond the base's own max/min spread no resample can show a fall: the CI clears zero.
    factor = max(1 + tolerance, max(base) / min(base)) * (1 + margin)
    assert regression("m", base, [v * factor for v in base], tolerance).regressed
    steady = [base[0]] * len(base)  # no noise: any factor beyond the tolerance is credible
    head = [base[0] * (1 + tolerance) * (1 + margin)] * head_size
    assert regression("m", steady, head, tolerance).regressed


@BOOTSTRAPPING
@given(base=samples, head=samples, tolerance=tolerances, worse=st.floats(1.01, 3.0))
def test_a_worse_head_keeps_a_regression(
    base: list[float], head: list[float], tolerance: float, worse: float
) -> None:
    # The same seed resamples the same indices, so scaling head up cannot clear the verdict.
    if regression("m", base, head, tolerance).regressed:
        assert regression("m", base, [v * worse for v in head], tolerance).regressed


@BOOTSTRAPPING
@given(base=samples, tolerance=tolerances, order=st.randoms(use_true_random=False))
def test_identical_samples_never_regress(base: list[float], tolerance: float, order: Any) -> None:
    assert not regression("m", base, list(base), tolerance).regressed
    shuffled = list(base)
    order.shuffle(shuffled)
    # fmean sums exactly: order cannot nudge the mean above a zero tolerance.
    assert not regression("m", base, shuffled, tolerance).regressed


@BOOTSTRAPPING
@given(base=samples, head=samples, seed=st.integers(0, 2**32))
def test_bootstrap_interval_is_ordered_bounded_and_seeded(
    base: list[float], head: list[float], seed: int
) -> None:
    low, high = bootstrap_increase(base, head, seed)
    # The interval is computed another way round: equal up to rounding at its ends.
    eps = 1e-12
    assert min(head) / max(base) - 1 - eps <= low <= high <= max(head) / min(base) - 1 + eps
    assert bootstrap_increase(base, head, seed) == (low, high)


@BOOTSTRAPPING
@given(
    base=samples | st.lists(st.floats(0.1, 10.0), min_size=1, max_size=1),
    head=samples,
    tolerance=st.sampled_from([0.0, 0.05, 0.1, 0.2]),
)
def test_regression_message_names_metric_means_percent_tolerance(
    base: list[float], head: list[float], tolerance: float
) -> None:
    verdict = regression("avg_power_w", base, head, tolerance)
    message = verdict.message("M-tp2-b8-1410MHz")
    assert message.startswith("energy regression at M-tp2-b8-1410MHz: avg_power_w ")
    assert f"{verdict.head_mean:.4g} vs baseline {verdict.base_mean:.4g}" in message
    assert f"({verdict.increase:+.1%}" in message
    stated = re.search(r"tolerance ([0-9.]+)%", message)  # any spelling of the same number
    assert stated is not None and float(stated.group(1)) == pytest.approx(tolerance * 100)
    assert verdict.method in message and "\n" not in message


# --- energy_regressions -------------------------------------------------------------------
def repeats(j_per_token: list[float | None], watts: list[float | None]) -> Summary:
    """A summary holding only the per-repeat lists the gate tests."""
    return dataclasses.replace(
        summarise(()),
        j_per_output_token_repeats=tuple(j_per_token),
        avg_power_w_repeats=tuple(watts),
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


def test_unknown_repeats_and_a_zero_baseline_are_not_compared() -> None:
    # A null repeat (no token generated) is dropped; a baseline that read 0 J (windows too
    # short for the counter) gives no ratio to test against.
    base = dataclasses.replace(
        summarise(()), j_per_output_token_repeats=(None, 0.5), avg_power_w_repeats=(0.0, 0.0)
    )
    head = dataclasses.replace(
        summarise(()), j_per_output_token_repeats=(0.6, None), avg_power_w_repeats=(100.0, 90.0)
    )
    [only] = energy_regressions(base, head, 0.05)
    assert (only.metric, only.base_mean, only.head_mean) == ("j_per_output_token", 0.5, 0.6)
