"""What makes a window's energy valid, each against the fake GPU's known truth: edges read
just after the counter updates (no edge bias), idle power measured in the state a window
ran in, a counter that went backwards, a steady state too short for the counter's updates;
and every warning stored with its kind."""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import pytest
from test_meter import ManualClock, measured, meter_on, run_for

from pytest_greenllm.config import Settings
from pytest_greenllm.devices import fake_nvml as model
from pytest_greenllm.devices.backend import open_backend
from pytest_greenllm.devices.fake_nvml import IDLE_POWER_W, FakeNvml
from pytest_greenllm.devices.nvml import NvmlGpu
from pytest_greenllm.hints import CLI_PREFIX
from pytest_greenllm.meter import (
    CLOCK_STRAYED_KIND,
    COUNTER_KIND,
    EDGE_POLL_S,
    IDLE_KIND,
    OTHER_KIND,
    SHORT_WINDOW_KIND,
    DeviceState,
    IdleState,
    WindowResult,
)
from pytest_greenllm.metrics import RequestRecord, run_metrics
from pytest_greenllm.phases import CounterLog
from pytest_greenllm.record import RepeatResult, summarise
from pytest_greenllm.runner import energy_figures
from pytest_greenllm.sweep import prepare_sweep
from pytest_greenllm.warning_types import KINDS

LOAD = 0.6
# A window's edges are each read within a poll of the counter's update: its span, and so an
# average power, is exact to two polls in the shortest span these tests measure (1 s).
POLLS = 2 * EDGE_POLL_S / 1.0


def power_at(mhz: int, load: float = LOAD) -> float:
    """The fake's power at a clock. Units: W."""
    dynamic = (model.MAX_POWER_W - IDLE_POWER_W) * load * (mhz / model.GRAPHICS_CLOCKS_MHZ[0]) ** 2
    return IDLE_POWER_W + dynamic


@pytest.mark.parametrize("window_s", [1.0, 5.0])
@pytest.mark.parametrize("phase_s", [0.0, 0.03, 0.07])
def test_window_edges_have_no_bias_against_the_fakes_true_energy(window_s: float, phase_s: float) -> None:
    """A full load from just after the window opens to just before it closes. Read as of the
    counter's last update, the edges read low by about half a period of the load's power
    (-4.3% at 1 s and -0.9% at 5 s on average over phases, -8.6% and -1.7% at worst): read
    just after an update, the energy is exact over the span the window reports, that span
    runs past the load only by the wait for the closing update (at idle power), and energy
    above idle is the load's."""
    clock = ManualClock(10.0)
    fake = FakeNvml(gpus=1, clock=clock, noise=0.0)
    meter = meter_on(fake, clock)
    # The sampler sees no power between the manual clock's steps: no cross-check here.
    meter.max_disagreement = math.inf
    meter.measure_idle(1.0)
    clock.advance(phase_s)
    meter.begin("w")
    opened_mj = fake.true_energy_mj(0)
    fake.set_load(1.0)
    clock.advance(window_s)
    fake.set_load(0.0)
    load_j = (fake.true_energy_mj(0) - opened_mj) / 1000
    result = meter.end("w")
    spanned_j = (fake.true_energy_mj(0) - opened_mj) / 1000
    # Each edge is read within a poll of its update, the GPU at rest there.
    poll_j = IDLE_POWER_W * EDGE_POLL_S
    assert result.energy_j == pytest.approx(spanned_j, abs=2 * poll_j)
    assert 0 <= result.energy_j - load_j <= IDLE_POWER_W * (fake.counter_period_s + EDGE_POLL_S)
    assert result.energy_above_idle_j == pytest.approx(load_j - IDLE_POWER_W * window_s, abs=2 * poll_j)
    assert result.warnings == ()


def test_an_edge_the_counter_does_not_update_at_is_reported() -> None:
    clock = ManualClock(0.05)
    fake = FakeNvml(gpus=1, clock=clock, noise=0.0, counter_period_s=100.0)
    result = measured(meter_on(fake, clock), clock, 1.0)
    assert len(result.warning_kinds) == len(result.warnings)
    [warning] = [w for w, kind in zip(result.warnings, result.warning_kinds) if kind == COUNTER_KIND]
    assert "did not update within 0.5 s of the window's start and end" in warning
    assert "up to one update period" in warning


@pytest.mark.parametrize(
    ("opens_s", "runs_s"),
    [
        (0.55, 0.7),  # the counter ends below where it began
        (0.05, 1.5),  # it has climbed past where it began again: only the samples between see it
    ],
)
def test_a_counter_that_goes_backwards_leaves_the_energy_unknown(opens_s: float, runs_s: float) -> None:
    """A driver reset at 1 s restarts the fake's counter from 0."""
    clock = ManualClock(0.05)
    fake = FakeNvml(gpus=1, clock=clock, noise=0.0, counter_reset_s=1.0)
    fake.set_load(0.5)
    meter = meter_on(fake, clock, min_window_s=0.5)
    meter.idle = IdleState({"gpu0": IDLE_POWER_W}, {})
    clock.advance(opens_s - 0.05)
    with meter.window() as handle:
        run_for(clock, runs_s)
    result = handle.result
    assert result is not None
    assert math.isnan(result.energy_j) and math.isnan(result.devices[0].energy_j)
    assert result.energy_above_idle_j is None and result.imbalance is None
    assert result.warning_kinds == (COUNTER_KIND,)
    assert "went backwards" in result.warnings[0] and "left out" in result.warnings[0]
    records = [RequestRecord(clock.now_s - runs_s, (clock.now_s - 0.1, clock.now_s), 8)]
    metrics = run_metrics(records, batch=1)
    log = CounterLog([], reads=[(clock.now_s - runs_s, 5e5), (clock.now_s, 1e3)])
    figures = energy_figures(result, metrics, records[0].send_s, log)
    assert math.isnan(figures.energy_j) and math.isnan(figures.j_per_output_token)
    assert (figures.steady_j_per_token, figures.static_share, figures.phases) == (None, None, None)
    assert figures.warning_kinds == (COUNTER_KIND,)
    # The repeat counts as unmeasured in the point's summary, never as a negative energy.
    summary = summarise([RepeatResult(metrics, figures)])
    assert summary.j_per_output_token is None and summary.energy_j is None


def test_an_idle_window_the_counter_reset_in_takes_the_integrated_power() -> None:
    clock = ManualClock(0.05)
    fake = FakeNvml(gpus=1, clock=clock, noise=0.0, counter_reset_s=1.0)
    meter = meter_on(fake, clock)
    clock.advance(0.7)  # the counter reads 52 J as the window opens, 28 J as it closes
    idle = meter.measure_idle(0.5)
    assert idle.power_w["gpu0"] == pytest.approx(IDLE_POWER_W, rel=POLLS)


def test_idle_is_measured_in_each_state_once_and_used_for_its_windows() -> None:
    """The load holds at rest too (as the fake device's $GREENLLM_FAKE_LOAD does), so idle
    power depends on the clock: as found, the GPU boosts to 1980 MHz."""
    clock = ManualClock(0.05)
    fake = FakeNvml(gpus=2, clock=clock, noise=0.0, load=lambda index: LOAD)
    meter = meter_on(fake, clock)
    gpus = [gpu for gpu in meter.sources if isinstance(gpu, NvmlGpu)]
    idle = meter.measure_idle(1.0)
    assert idle.power_w == pytest.approx({"gpu0": power_at(1980), "gpu1": power_at(1980)}, rel=POLLS)
    gpus[0].lock_clocks(1005)
    meter.states["gpu0"] = DeviceState(clock_mhz=1005)
    assert meter.measure_state_idle(1.0) == ["gpu0"]
    assert meter.measure_state_idle(1.0) == []
    locked = measured(meter, clock, 2.0, 1005, sources=gpus[:1])
    assert locked.idle_power_w == pytest.approx(power_at(1005), rel=POLLS)
    # Against the idle as found it would be (167 - 448 W) x 2 s, about -560 J, and no word.
    above_j = locked.energy_above_idle_j
    assert above_j is not None
    assert above_j == pytest.approx(0.0, abs=2 * POLLS * locked.energy_j)
    # Within the edges' polls of 0 J, either side: a negative one is said.
    assert locked.warning_kinds == ((IDLE_KIND,) if above_j < 0 else ())
    # A power limit is a state of its own, though 200 W does not cap 1005 MHz here.
    gpus[0].set_power_limit_mw(200_000)
    meter.states["gpu0"] = DeviceState(clock_mhz=1005, power_limit_w=200.0)
    assert str(meter.states["gpu0"]) == "the SM clock locked at 1005 MHz and a 200 W power limit"
    assert meter.measure_state_idle(1.0) == ["gpu0"]
    assert meter.state_idle_w[("gpu0", meter.states["gpu0"])] == pytest.approx(power_at(1005), rel=POLLS)


def test_a_state_without_its_own_idle_says_which_idle_it_used() -> None:
    clock = ManualClock(0.05)
    fake = FakeNvml(gpus=1, clock=clock, noise=0.0, load=lambda index: LOAD)
    meter = meter_on(fake, clock)
    meter.measure_idle(1.0)
    [gpu] = [gpu for gpu in meter.sources if isinstance(gpu, NvmlGpu)]
    gpu.lock_clocks(1410)
    meter.states["gpu0"] = DeviceState(clock_mhz=1410)
    result = measured(meter, clock, 2.0, 1410)
    assert result.idle_power_w == pytest.approx(power_at(1980), rel=POLLS)
    assert result.energy_above_idle_j is not None and result.energy_above_idle_j < 0
    assert result.warning_kinds == (IDLE_KIND, IDLE_KIND)
    fallback, negative = result.warnings
    assert "gpu0: no idle power was measured with the SM clock locked at 1410 MHz" in fallback
    assert "its idle with clocks and power limit as found" in fallback
    assert f"energy above idle is negative ({result.energy_above_idle_j:.1f} J)" in negative


@pytest.fixture
def fake_sweep_settings(isolated_device: pytest.MonkeyPatch) -> Settings:
    isolated_device.setenv("GREENLLM_FAKE_LOAD", str(LOAD))
    isolated_device.setenv("GREENLLM_FAKE_GPUS", "2")
    defaults = Settings.from_sources(True, {}, {}, CLI_PREFIX)
    return replace(defaults, device="fake", min_window_s=0.2, cooldown_s=0.0)


def test_a_sweep_measures_each_clock_and_limit_state_once_after_setting_it(
    fake_sweep_settings: Settings, tmp_path: Path
) -> None:
    sweep = prepare_sweep(
        fake_sweep_settings, tmp_path, make_backend=lambda s: open_backend("fake", tmp_path / "guard.json")
    )
    try:
        sweep.lock_clocks(1005, tp=1)
        sweep.set_power_limit(300, tp=1)
        meter = sweep.meter()
        assert meter.idle is not None and meter.idle.power_w["gpu0"] == pytest.approx(
            power_at(1980), rel=0.01
        )
        state = DeviceState(clock_mhz=1005, power_limit_w=300)
        assert meter.states == {"gpu0": state}
        assert meter.state_idle_w == {("gpu0", state): pytest.approx(power_at(1005), rel=0.01)}
        sweep.restore()
        assert meter.states == {}
        waits: list[float] = []

        def sleep(seconds: float) -> None:
            waits.append(seconds)
            time.sleep(seconds)

        meter.sleep = sleep
        sweep.lock_clocks(1005, tp=1)
        sweep.set_power_limit(300, tp=1)
        assert sweep.meter() is meter and waits == []
        sweep.restore()
        sweep.lock_clocks(1410, tp=1)
        sweep.meter()
        assert max(waits) == 1.0  # the idle of a state not met before
        assert meter.state_idle_w[("gpu0", DeviceState(clock_mhz=1410))] == pytest.approx(
            power_at(1410), rel=0.01
        )
    finally:
        sweep.close()


def window_of(energy_j: float, duration_s: float, warnings: tuple[str, ...] = ()) -> WindowResult:
    """A window of a constant power from t=0, without warning kinds (as one built before
    kinds were kept)."""
    watts = energy_j / duration_s
    timeline = ((0.0, watts), (duration_s, watts))
    return WindowResult(
        0.0, duration_s, energy_j, (), watts, watts, timeline, None, None, None, None, False, warnings
    )


def counter_reads(watts: float, until_s: float, period_s: float, gap_s: float) -> list[tuple[float, float]]:
    """A counter of ``watts`` updating every ``period_s``, read every ``gap_s``. Units: s, mJ."""
    return [
        (k * gap_s, watts * math.floor(k * gap_s / period_s + 1e-9) * period_s * 1000)
        for k in range(round(until_s / gap_s) + 1)
    ]


@pytest.mark.parametrize("tokens", [10, 150])
def test_a_steady_state_needs_ten_counter_updates(tokens: int) -> None:
    """Two requests decode a token every 10 ms at 500 W, the counter updating every 100 ms:
    a steady state of 90 ms has no energy per token; one of 1.49 s has it within the
    (period + gap) / duration the edges allow."""
    watts, period_s, gap_s = 500.0, 0.1, 0.01
    stamps = tuple(gap_s * (k + 1) for k in range(tokens))
    records = [RequestRecord(0.0, stamps, 8), RequestRecord(0.0, stamps, 8)]
    metrics = run_metrics(records, batch=2)
    steady = metrics.steady
    assert steady is not None
    until_s = stamps[-1] + gap_s
    log = CounterLog([], reads=counter_reads(watts, until_s, period_s, gap_s))
    figures = energy_figures(window_of(watts * until_s, until_s, ("w",)), metrics, 0.0, log)
    lasted_s = steady.end_s - steady.start_s
    if tokens == 10:
        assert figures.steady_j_per_token is None and figures.steady_from is None
        assert figures.warning_kinds == (OTHER_KIND, SHORT_WINDOW_KIND)
        assert figures.warnings[1].startswith(
            "no steady-state energy per token: the steady state lasted 90 ms and the energy "
            "counter's reads saw updates every 1"
        )
        assert figures.warnings[1].endswith(
            "it needs 10 updates to be within 10% (longer outputs lengthen it)"
        )
    else:
        truth = watts * lasted_s / steady.output_tokens
        assert figures.steady_from == "counter" and figures.warning_kinds == (OTHER_KIND,)
        assert figures.steady_j_per_token == pytest.approx(truth, rel=(period_s + gap_s) / lasted_s)


def test_every_kind_a_window_stores_is_a_warning_category() -> None:
    kinds = (SHORT_WINDOW_KIND, CLOCK_STRAYED_KIND, COUNTER_KIND, IDLE_KIND, OTHER_KIND)
    assert set(kinds) <= set(KINDS)
