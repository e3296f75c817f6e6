"""Energy of sub-windows and phases from counter reads at engine steps (phases.py), against
the fake NVML, whose counter is exact at its updates and whose averaged power lags."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_greenllm.devices.fake_nvml import IDLE_POWER_W, MAX_POWER_W, FakeNvml
from pytest_greenllm.devices.nvml import NvmlSession
from pytest_greenllm.driver import Step
from pytest_greenllm.meter import trapezoid_j
from pytest_greenllm.phases import (
    FIT,
    KINDS,
    SHARED,
    CounterLog,
    PhaseSplit,
    counter_energy_j,
    kind_of,
    split_phases,
)

# Load of the fake GPU in each kind of step: its power is 70 W + 630 W x load at 1980 MHz.
LOADS = {"prefill": 1.0, "decode": 0.45, "mixed": 0.8, "idle": 0.0}
TOKENS = {"prefill": (2048, 0), "decode": (0, 32), "mixed": (512, 8), "idle": (0, 0)}


def power_w(kind: str) -> float:
    return IDLE_POWER_W + (MAX_POWER_W - IDLE_POWER_W) * LOADS[kind]


class ManualClock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


class Run:
    """A run of engine steps on one fake GPU whose power follows the kind of step running:
    the true energy of every step is known, and the log reads the counter after each."""

    def __init__(self, counter_period_s: float = 0.1, start_s: float = 0.037) -> None:
        self.clock = ManualClock()
        self.kind = "idle"
        self.fake = FakeNvml(
            gpus=1,
            clock=self.clock,
            noise=0.0,
            load=lambda index: LOADS[self.kind],
            counter_period_s=counter_period_s,
        )
        [self.gpu] = NvmlSession(self.fake).gpus
        self.log = CounterLog([self.gpu], self.clock)
        self.true_j = dict.fromkeys(KINDS, 0.0)
        self.clock.now_s = start_s
        self.log.start()
        self.start_s = start_s

    def step(self, kind: str, seconds: float) -> None:
        self.kind = kind
        before = self.fake.true_energy_mj(0)  # the step before ends at its own power
        self.clock.now_s += seconds
        self.true_j[kind] += (self.fake.true_energy_mj(0) - before) / 1000
        prefill, decode = TOKENS[kind]
        self.log.step(Step(self.clock.now_s, prefill, decode, "scheduler"))

    def split(self) -> PhaseSplit:
        result = split_phases(self.log.steps, self.log.reads, self.start_s)
        assert result is not None
        return result

    def true_phase_j(self) -> tuple[float, float]:
        """Prefill and decode energy, the mixed steps' shared by tokens as the split does."""
        prefill, decode = TOKENS["mixed"]
        mixed = self.true_j["mixed"]
        return (
            self.true_j["prefill"] + mixed * prefill / (prefill + decode),
            self.true_j["decode"] + mixed * decode / (prefill + decode),
        )


def serving(run: Run, rounds: int = 3, jitter: random.Random | None = None) -> None:
    """Batches as a closed-loop server runs them on an H200-class GPU: a chunked prefill,
    the step where the last chunk shares with the first decodes, a long decode, a wait.
    ``jitter`` varies each step's time by up to 10%, as a real engine's do."""

    def step(kind: str, seconds: float) -> None:
        run.step(kind, seconds * (1 + jitter.uniform(-0.1, 0.1)) if jitter else seconds)

    for _ in range(rounds):
        for _ in range(4):
            step("prefill", 0.06)
        step("mixed", 0.04)
        for _ in range(150):
            step("decode", 0.015)
        step("idle", 0.2)


@pytest.mark.parametrize("period_s", [0.1, 0.05, 0.02])
@pytest.mark.parametrize("seed", [None, 1, 2])
def test_split_recovers_each_phase_within_2_percent(period_s: float, seed: int | None) -> None:
    run = Run(period_s)
    serving(run, jitter=None if seed is None else random.Random(seed))
    split = run.split()
    prefill_j, decode_j = run.true_phase_j()
    assert split.method == FIT and split.tokens_from == "scheduler"
    assert split.prefill_j == pytest.approx(prefill_j, rel=0.02)
    assert split.decode_j == pytest.approx(decode_j, rel=0.02)
    assert split.idle_j == pytest.approx(run.true_j["idle"], rel=0.05)
    assert split.prefill_power_w == pytest.approx(power_w("prefill"), rel=0.02)
    assert split.decode_power_w == pytest.approx(power_w("decode"), rel=0.02)
    assert split.prefill_tokens == 3 * (4 * 2048 + 512) and split.decode_tokens == 3 * (150 * 32 + 8)
    # Read at every step, the counter's updates fit a periodic grid: the phases are exact
    # to far better than the 2% asked.
    assert split.prefill_j == pytest.approx(prefill_j, rel=0.005)
    assert split.j_per_prefill_token == pytest.approx(split.prefill_j / split.prefill_tokens)
    assert split.j_per_decode_token == pytest.approx(split.decode_j / split.decode_tokens)
    assert split.prefill_share == pytest.approx(prefill_j / (prefill_j + decode_j), rel=0.02)
    assert split.mixed_j == pytest.approx(run.true_j["mixed"], rel=0.25)
    assert split.steps == len(run.log.steps) and split.counter_updates > 50


def test_boundary_reads_are_exact_to_one_counter_period_where_averaged_power_is_not() -> None:
    """A step from idle to a full load: the energy of the 2 s after the step, from counter
    reads at its edges and from the integral of NVML's 1 s averaged power."""
    period_s = 0.1
    run = Run(period_s, start_s=5.05)  # seconds at idle: the average has settled
    averaged: list[tuple[float, float]] = []

    def sample() -> None:
        averaged.append((run.clock.now_s, run.gpu.average_power_mw() / 1000))

    sample()
    for _ in range(200):
        run.step("prefill", 0.01)
        sample()
    truth_j = run.true_j["prefill"]
    boundary_j = counter_energy_j(run.log.reads, run.start_s, run.clock.now_s)
    averaged_j = trapezoid_j([t for t, _ in averaged], [w for _, w in averaged])
    assert boundary_j is not None
    one_period_j = MAX_POWER_W * period_s
    assert abs(boundary_j - truth_j) <= one_period_j
    # The average lags the step by about half a second of the 630 W rise.
    assert abs(averaged_j - truth_j) > one_period_j
    assert averaged_j == pytest.approx(truth_j - 0.5 * (MAX_POWER_W - IDLE_POWER_W), rel=0.05)


def test_steady_state_energy_comes_from_the_reads_at_its_edges() -> None:
    run = Run()
    serving(run, rounds=1)
    steps = run.log.steps
    first_decode, last_decode = steps[5].end_s, steps[154].end_s
    energy = counter_energy_j(run.log.reads, first_decode, last_decode)
    truth = power_w("decode") * (last_decode - first_decode)
    assert energy is not None and abs(energy - truth) <= MAX_POWER_W * 0.1
    # An edge given through (t - start) + start rounding below its read still finds it.
    assert counter_energy_j(run.log.reads, (first_decode - 0.037) + 0.037 - 1e-12, last_decode) == energy
    # No read before the window, or the same read at both edges: nothing to say.
    assert counter_energy_j(run.log.reads, 0.0, last_decode) is None
    assert counter_energy_j(run.log.reads, last_decode, last_decode) is None


def test_a_run_shorter_than_two_counter_updates_has_no_split() -> None:
    run = Run(counter_period_s=0.1, start_s=0.01)
    for _ in range(3):
        run.step("decode", 0.02)
    assert split_phases(run.log.steps, run.log.reads, run.start_s) is None
    assert split_phases([], run.log.reads, run.start_s) is None


def test_a_log_without_a_counter_keeps_no_reads() -> None:
    fake = FakeNvml(gpus=2, energy_counter=False)
    log = CounterLog(NvmlSession(fake).gpus)
    log.start()
    log.step(Step(1.0, 10, 0))
    assert log.reads == [] and len(log.steps) == 1


def test_steps_are_sorted_into_kinds_by_the_tokens_they_scheduled() -> None:
    assert [kind_of(Step(0.0, p, d)) for p, d in [(5, 0), (0, 3), (5, 3), (0, 0)]] == [
        "prefill",
        "decode",
        "mixed",
        "idle",
    ]


def test_an_undetermined_fit_shares_each_interval_by_time() -> None:
    """Prefill and decode always inside the same counter interval: no fit can tell their
    powers apart, so each interval's energy is shared by time."""
    run = Run(counter_period_s=0.1)
    for _ in range(40):
        run.step("prefill", 0.01)
        run.step("decode", 0.09)
    split = run.split()
    assert split.method == SHARED
    total = split.prefill_j + split.decode_j + split.idle_j
    assert total == pytest.approx((run.log.reads[-1][1] - run.log.reads[0][1]) / 1000)
    # Shared by time: prefill gets about a tenth.
    assert split.prefill_j / total == pytest.approx(0.1, abs=0.03)


KIND = st.sampled_from(KINDS)
STEP = st.tuples(KIND, st.floats(0.001, 0.3))


@settings(max_examples=60, deadline=None)
@given(st.lists(STEP, min_size=1, max_size=80), st.sampled_from([0.02, 0.05, 0.1]))
def test_the_split_shares_out_exactly_the_counter_energy(
    steps: Sequence[tuple[str, float]], period: float
) -> None:
    run = Run(period)
    for kind, seconds in steps:
        run.step(kind, seconds)
    split = split_phases(run.log.steps, run.log.reads, run.start_s)
    run_j = (run.log.reads[-1][1] - run.log.reads[0][1]) / 1000
    if split is None:
        return
    parts = (split.prefill_j, split.decode_j, split.idle_j, split.mixed_j)
    assert all(part >= 0 and math.isfinite(part) for part in parts)
    assert split.prefill_j + split.decode_j + split.idle_j == pytest.approx(run_j, rel=1e-9, abs=1e-9)
    assert split.mixed_j <= split.prefill_j + split.decode_j + 1e-9
    in_kind = {kind: sum(t for k, t in steps if k == kind) for kind in KINDS}
    assert split.prefill_s == pytest.approx(in_kind["prefill"])
    assert split.idle_s == pytest.approx(in_kind["idle"])
