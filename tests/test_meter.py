"""The energy meter over the fake NVML: counter against sampled energy, the sampler thread's
lifetime on every exit path, and the figures and warnings a window carries."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_greenllm.devices import fake_nvml as model
from pytest_greenllm.devices.base import EnergySource
from pytest_greenllm.devices.fake_nvml import IDLE_POWER_W, FakeNvml
from pytest_greenllm.devices.nvml import NvmlSession
from pytest_greenllm.meter import (
    COUNTER,
    EDGE_POLL_S,
    SAMPLED,
    EnergyMeter,
    WindowResult,
    reason_names,
    trapezoid_j,
)
from pytest_greenllm.options import PYTEST_PREFIX

GPU_IS_LOST = 15  # NVML_ERROR_GPU_IS_LOST
IDLE_C = round(model.IDLE_TEMPERATURE_C)


class ManualClock:
    """Time that moves only when the test says, shared by a fake and its meter (whose waits
    for the counter's updates at a window's edges move it too)."""

    def __init__(self, start_s: float = 0.0) -> None:
        self.now_s = start_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


def run_for(clock: ManualClock, seconds: float, hz: float = 100.0) -> None:
    """Advance in steps, sleeping each in real time, so that the (real-time) sampler's rows
    are spread across the window rather than bunched at its two ends."""
    for _ in range(round(seconds * hz)):
        clock.advance(1 / hz)
        time.sleep(1 / hz)


def meter_on(fake: FakeNvml, clock: ManualClock | None = None, min_window_s: float = 1.0) -> EnergyMeter:
    """A 100 Hz meter on ``fake``, in real time or on the manual ``clock``."""
    gpus = NvmlSession(fake).gpus
    if clock is None:
        return EnergyMeter(gpus, sample_hz=100, min_window_s=min_window_s)
    return EnergyMeter(gpus, sample_hz=100, min_window_s=min_window_s, clock=clock, sleep=clock.advance)


def rig(gpus: int = 1, load: float = 0.0) -> tuple[ManualClock, FakeNvml, EnergyMeter]:
    """A noiseless fake under a manual clock, at ``load`` from t=0, 50 ms into a counter period."""
    clock = ManualClock()
    fake = FakeNvml(gpus=gpus, clock=clock, noise=0.0)
    fake.set_load(load)
    meter = meter_on(fake, clock)
    clock.advance(0.05)
    return clock, fake, meter


def measured(
    meter: EnergyMeter,
    clock: ManualClock,
    seconds: float,
    requested_clock_mhz: int | None = None,
    sources: Sequence[EnergySource] | None = None,
) -> WindowResult:
    with meter.window(requested_clock_mhz, sources) as handle:
        clock.advance(seconds)
    assert handle.result is not None
    return handle.result


def meter_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "greenllm-meter"}


def dynamic_w(load: float) -> float:
    """The fake's power above idle at full clock. Units: W."""
    return (model.MAX_POWER_W - IDLE_POWER_W) * load


def power_w(load: float) -> float:
    """The fake's power at full clock. Units: W."""
    return IDLE_POWER_W + dynamic_w(load)


def test_counter_and_sampled_paths_agree_on_a_constant_load() -> None:
    clock = ManualClock()
    fakes = [
        FakeNvml(gpus=1, clock=clock, seed=1),
        FakeNvml(gpus=1, clock=clock, seed=2, energy_counter=False),
    ]
    meters = [meter_on(f, clock) for f in fakes]
    for fake in fakes:
        fake.set_load(0.6)
    clock.advance(0.05)
    for meter in meters:
        meter.begin("w")
    run_for(clock, 2.0)
    counted, sampled = (m.end("w") for m in meters)
    assert (counted.method, sampled.method) == (COUNTER, SAMPLED)
    assert counted.devices[0].samples > 50 and sampled.devices[0].samples > 50
    assert counted.energy_j / counted.duration_s == pytest.approx(
        sampled.energy_j / sampled.duration_s, rel=0.02
    )
    # The constant power over the span the window reports, to a poll of the counter at each
    # edge (the span's error).
    assert counted.energy_j == pytest.approx(
        power_w(0.6) * counted.duration_s, abs=power_w(0.6) * EDGE_POLL_S
    )
    assert sampled.energy_j == pytest.approx(power_w(0.6) * sampled.duration_s, rel=0.02)
    disagreement = counted.devices[0].disagreement
    assert disagreement is not None and disagreement < 0.02


times_s = st.lists(st.floats(0, 1e4), min_size=2, max_size=40, unique=True).map(sorted)
# Subnormal watts lose their last bit in any product: no meter reads them.
watts = st.floats(0, 2000, allow_subnormal=False)
# Slope 0 is constant power; st.just has hypothesis draw it often.
slopes = st.one_of(st.just(0.0), st.floats(0, 1))


@given(times_s, watts, slopes)
def test_trapezoid_is_exact_on_constant_power_and_ramps(
    times: list[float], base: float, slope: float
) -> None:
    t0, t1 = times[0], times[-1]
    expected = base * (t1 - t0) + slope * (t1**2 - t0**2) / 2
    energy = trapezoid_j(times, [base + slope * t for t in times])
    assert energy == pytest.approx(expected, rel=1e-9, abs=1e-9)


@given(times_s.filter(lambda t: len(t) > 2), st.data())
def test_trapezoid_adds_up_over_split_intervals_and_stays_in_bounds(
    times: list[float], data: st.DataObject
) -> None:
    powers = data.draw(st.lists(watts, min_size=len(times), max_size=len(times)))
    k = data.draw(st.integers(1, len(times) - 2))
    whole = trapezoid_j(times, powers)
    parts = trapezoid_j(times[: k + 1], powers[: k + 1]) + trapezoid_j(times[k:], powers[k:])
    assert parts == pytest.approx(whole, rel=1e-9, abs=1e-9)
    span = times[-1] - times[0]
    assert min(powers) * span * (1 - 1e-9) <= whole <= max(powers) * span * (1 + 1e-9)


def test_trapezoid_of_fewer_than_two_samples_is_zero() -> None:
    assert trapezoid_j([], []) == 0 and trapezoid_j([3.0], [500.0]) == 0


def test_failed_power_reads_leave_a_gap_but_the_counter_still_measures() -> None:
    clock, fake, meter = rig(load=0.5)
    with meter.window() as handle:
        run_for(clock, 0.2)
        # The power the meter reads: the instantaneous field, which the fake GPU offers.
        fake.fail("nvmlDeviceGetFieldValues", GPU_IS_LOST)
        run_for(clock, 0.2)
        fake.heal("nvmlDeviceGetFieldValues")
        run_for(clock, 0.2)
    assert handle.result is not None
    result, [device] = handle.result, handle.result.devices
    assert device.missing_samples > 0 and device.samples > 0 and device.method == COUNTER
    assert result.energy_j == pytest.approx(power_w(0.5) * result.duration_s, abs=power_w(0.5) * EDGE_POLL_S)
    total = device.samples + device.missing_samples
    assert f"gpu0: {device.missing_samples} of {total} samples could not be read" in result.warnings
    # The integral bridges the gap rather than dropping its energy.
    assert device.sampled_energy_j == pytest.approx(result.energy_j, rel=0.01)


class Boom(Exception):
    pass


def leave(how: str, meter: EnergyMeter, new_threads: Callable[[], int]) -> None:
    """Open a window (two for close), check that a sampler runs, and leave as ``how`` says."""
    if how == "with-normal":
        with meter.window() as handle:
            assert new_threads() == 1
        assert handle.result is not None
    elif how in ("with-exception", "with-interrupt"):
        error: type[BaseException] = Boom if how == "with-exception" else KeyboardInterrupt
        with pytest.raises(error):
            with meter.window() as handle:
                assert new_threads() == 1
                raise error
        assert handle.result is None
    elif how == "begin-end":
        meter.begin("k")
        assert new_threads() == 1
        meter.end("k")
    else:
        meter.begin("a")
        meter.begin("b")
        assert new_threads() == 2
        meter.close()
        with pytest.raises(ValueError, match="'a'"):
            meter.end("a")


@pytest.mark.parametrize(
    "how", ["with-normal", "with-exception", "with-interrupt", "begin-end", "begin-close"]
)
def test_sampler_thread_stops_on_every_exit_path(how: str) -> None:
    meter = meter_on(FakeNvml(gpus=1))
    before = meter_threads()
    leave(how, meter, lambda: len(meter_threads() - before))
    assert meter_threads() - before == set()
    # A window cut short leaves nothing open that would block the next one.
    with meter.window() as handle:
        pass
    assert handle.result is not None


def test_window_keys_must_be_open_once() -> None:
    meter = meter_on(FakeNvml(gpus=1))
    meter.begin("point-a")
    before = meter_threads()
    with pytest.raises(ValueError, match="'point-a' is already open"):
        meter.begin("point-a")
    assert meter_threads() == before  # the refused window started no sampler
    assert meter.end("point-a").devices
    with pytest.raises(ValueError, match="'point-a'"):
        meter.end("point-a")
    with pytest.raises(ValueError, match="'never-opened'"):
        meter.end("never-opened")


def test_short_windows_are_flagged_with_what_to_change() -> None:
    clock, _, meter = rig()
    meter.min_window_s = 5.0
    meter.flag_prefix = PYTEST_PREFIX  # warnings name the options as the plugin spells them
    short, long = measured(meter, clock, 1.0), measured(meter, clock, 5.0)
    assert short.short and not long.short and long.warnings == ()
    [warning] = short.warnings
    assert "1.10 s" in warning and "5 s minimum" in warning and "--greenllm-requests" in warning
    assert short.warning_kinds == ("short-window",)
    # Shorter than the counter's 100 ms: it still spans, and reads, a whole update.
    tiny = measured(meter, clock, 0.05)
    assert tiny.short and tiny.duration_s == pytest.approx(0.1)
    assert tiny.energy_j == pytest.approx(IDLE_POWER_W * 0.1, abs=0.002)


def test_a_window_that_reads_0_j_says_so() -> None:
    clock = ManualClock()
    # 70 uW: the counter's whole mJ do not move in a window, nor while its edges wait.
    meter = meter_on(FakeNvml(gpus=1, clock=clock, noise=0.0, power_scale=1e-6), clock)
    clock.advance(0.05)
    tiny = measured(meter, clock, 0.05)
    assert tiny.energy_j == 0
    assert any("read 0 J over" in w and "longer window" in w for w in tiny.warnings)
    assert "short-window" in tiny.warning_kinds and len(tiny.warning_kinds) == len(tiny.warnings)


def test_counter_and_integrated_power_are_cross_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    clock, _, meter = rig(load=0.5)
    honest = measured(meter, clock, 2.0)
    [gpu] = meter.sources
    reads = gpu.power  # type: ignore[attr-defined]
    monkeypatch.setattr(gpu, "power", lambda: (reads()[0] * 1.2, reads()[1]))
    biased = measured(meter, clock, 2.0)
    # Too short for the counter to be trusted: no disagreement is claimed.
    biased_short = measured(meter, clock, 0.5)
    good, bad = honest.devices[0], biased.devices[0]
    assert good.disagreement is not None and good.disagreement < 0.01 and honest.warnings == ()
    assert bad.sampled_energy_j is not None and bad.disagreement == pytest.approx(0.2, abs=0.01)
    [warning] = biased.warnings
    assert f"{bad.energy_j:.1f} J" in warning and f"{bad.sampled_energy_j:.1f} J" in warning
    assert not any("disagree" in w for w in biased_short.warnings)


def test_clock_that_leaves_the_locked_one_is_flagged_with_its_reason() -> None:
    clock, fake, meter = rig(load=1.0)
    [gpu] = NvmlSession(fake).gpus
    gpu.lock_clocks(1410)
    held, near = measured(meter, clock, 1.0, 1410), measured(meter, clock, 1.0, 1480)
    gpu.set_power_limit_mw(200_000)
    clock.advance(0.1)  # past a counter update, so its lag spans the new power at both ends
    capped = measured(meter, clock, 1.0, 1410)
    assert held.devices[0].sm_clock_mhz_mean == 1410 and not held.devices[0].clock_strayed
    assert held.warnings == () and held.requested_clock_mhz == 1410
    assert not near.devices[0].clock_strayed  # 1410 is within 5% of 1480
    device = capped.devices[0]
    assert device.clock_strayed and "SwPowerCap" in device.event_reasons
    assert device.sm_clock_mhz_mean is not None and device.sm_clock_mhz_mean < 1300
    [warning] = capped.warnings
    assert "1410 MHz" in warning and "SwPowerCap" in warning


def test_per_device_figures_and_imbalance() -> None:
    clock = ManualClock()
    loads = (0.2, 0.9)
    gpus = NvmlSession(FakeNvml(gpus=2, clock=clock, noise=0.0, load=lambda i: loads[i])).gpus
    meter = EnergyMeter(gpus, clock=clock, sleep=clock.advance, min_window_s=1.0)
    clock.advance(0.05)
    both, second = measured(meter, clock, 1.0), measured(meter, clock, 1.0, sources=[gpus[1]])
    watts = [power_w(load) for load in loads]
    assert [d.label for d in both.devices] == ["gpu0", "gpu1"]
    assert [d.avg_power_w for d in both.devices] == pytest.approx(watts, rel=1e-3)
    assert both.energy_j == pytest.approx(sum(watts) * both.duration_s, rel=1e-3)
    assert both.avg_power_w == pytest.approx(sum(watts), rel=1e-3)
    assert both.imbalance == pytest.approx((watts[1] - watts[0]) / (sum(watts) / 2), rel=1e-3)
    assert both.timeline and all(w == pytest.approx(sum(watts)) for _, w in both.timeline)
    assert [d.label for d in second.devices] == ["gpu1"] and second.imbalance is None
    assert second.energy_j == pytest.approx(watts[1] * second.duration_s, rel=1e-3)
    stranger = NvmlSession(FakeNvml(gpus=3)).gpus[2]
    with pytest.raises(ValueError, match="gpu2"):
        meter.begin("x", sources=[stranger])
    with pytest.raises(ValueError, match="none"):
        meter.begin("x", sources=[])


def test_idle_is_measured_once_and_subtracted_later() -> None:
    clock, fake, meter = rig(gpus=2)
    before = measured(meter, clock, 1.0)
    idle = meter.measure_idle(1.0)
    fake.set_load(0.5)
    busy = measured(meter, clock, 2.0)
    assert before.idle_power_w is None and before.energy_above_idle_j is None
    assert meter.idle is idle
    assert idle.power_w == pytest.approx({"gpu0": IDLE_POWER_W, "gpu1": IDLE_POWER_W}, rel=1e-3)
    assert idle.temperature_c == {"gpu0": IDLE_C, "gpu1": IDLE_C}
    assert busy.idle_power_w == pytest.approx(2 * IDLE_POWER_W, rel=1e-3)
    above = busy.energy_j - 2 * IDLE_POWER_W * busy.duration_s
    assert busy.energy_above_idle_j == pytest.approx(above, rel=1e-3)
    assert busy.energy_above_idle_j == pytest.approx(2 * dynamic_w(0.5) * busy.duration_s, rel=1e-3)


def test_cool_down_returns_at_once_without_idle_state_or_time() -> None:
    clock, fake, meter = rig()
    slept: list[float] = []
    assert meter.cool_down(60.0, sleep=slept.append) == (0.0, True)
    meter.measure_idle(1.0)
    fake.set_load(1.0)
    clock.advance(300.0)
    assert meter.cool_down(0.0, sleep=slept.append) == (0.0, True)
    assert slept == []


@pytest.mark.parametrize("max_wait_s", [120.0, 10.0])
def test_cool_down_waits_until_within_the_margin_or_gives_up(max_wait_s: float) -> None:
    clock, fake, meter = rig(gpus=2)
    meter.measure_idle(1.0)
    fake.set_load(1.0)
    clock.advance(300.0)  # 15 thermal time constants: as hot as full load gets
    fake.set_load(0.0)
    waited, cool = meter.cool_down(max_wait_s, margin_c=3.0, poll_s=1.0, sleep=clock.advance)
    # Newton cooling from K x dynamic power above idle until the rounded reading is within 3 °C.
    needed_s = model.THERMAL_TIME_CONSTANT_S * math.log(model.KELVIN_PER_WATT * dynamic_w(1) / 3.5)
    now_c = [s.read().temperature_c for s in meter.sources]
    if max_wait_s > needed_s:
        assert cool and waited == pytest.approx(needed_s, abs=1.0)
        assert all(c is not None and c <= IDLE_C + 3 for c in now_c)
    else:
        assert (waited, cool) == (max_wait_s, False)
        assert all(c is not None and c > IDLE_C + 3 for c in now_c)


@pytest.mark.parametrize(
    ("mask", "names"),
    [
        (0, ()),
        (0x4, ("SwPowerCap",)),
        (0x1 | 0x40, ("GpuIdle", "HwThermalSlowdown")),
        (0x180, ("HwPowerBrakeSlowdown", "DisplayClockSetting")),
        (0x1000 | 0x8, ("HwSlowdown",)),
    ],  # bits NVML may add later are ignored, not fatal
)
def test_reason_names_decode_the_mask(mask: int, names: tuple[str, ...]) -> None:
    assert reason_names(mask) == names
