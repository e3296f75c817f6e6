"""The energy meter: joules, power and observed clocks over a window, for any energy source.

The hardware counter is preferred (NVML's total-energy counter, RAPL's energy_uj); a
background thread samples power at a fixed rate all the same, for the timeline, the peak,
the observed clocks, and a cross-check against the counter. Where a source has no counter
the integral of the sampled power (trapezoid rule) is the energy. The timeline's power is
instantaneous where the GPU reports it, else NVML's 1 s average, which lags a change by
about a second: sub-windows of a run take their energy from counter reads at their edges
(``phases.py``), never from the timeline.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from pytest_greenllm.devices.base import AVERAGE, EnergySource, Reading
from pytest_greenllm.devices.errors import DeviceError
from pytest_greenllm.hints import CLI_PREFIX, Hint

MORE_REQUESTS = Hint("requests", template="requests ({flag}) or repeat it")
FASTER_SAMPLING = Hint("sample-hz", template="; raise {flag} or measure a longer window")

COUNTER = "counter"
SAMPLED = "sampled"

# NVML's clocks-event reasons (nvmlClocksEventReason*), by bit.
EVENT_REASONS = {
    0x1: "GpuIdle",
    0x2: "ApplicationsClocksSetting",
    0x4: "SwPowerCap",
    0x8: "HwSlowdown",
    0x10: "SyncBoost",
    0x20: "SwThermalSlowdown",
    0x40: "HwThermalSlowdown",
    0x80: "HwPowerBrakeSlowdown",
    0x100: "DisplayClockSetting",
}


def reason_names(mask: int) -> tuple[str, ...]:
    """The names of the bits set in an NVML clocks-event mask."""
    return tuple(name for bit, name in EVENT_REASONS.items() if mask & bit)


def trapezoid_j(times_s: Sequence[float], powers_w: Sequence[float]) -> float:
    """Energy under a power curve sampled at ``times_s``. Units: J."""
    return sum(
        (powers_w[i] + powers_w[i + 1]) / 2 * (times_s[i + 1] - times_s[i]) for i in range(len(times_s) - 1)
    )


@dataclass(frozen=True)
class DeviceWindow:
    """One source's figures over a window."""

    label: str
    energy_j: float  # Units: J.
    method: str  # 'counter' or 'sampled'
    sampled_energy_j: float | None  # integral of sampled power, the cross-check. Units: J.
    disagreement: float | None  # |counter - sampled| / counter
    avg_power_w: float  # Units: W.
    peak_power_w: float | None  # highest sample. Units: W.
    samples: int
    missing_samples: int  # reads that failed; the integral spans the gap
    sm_clock_mhz_mean: float | None  # Units: MHz.
    sm_clock_mhz_min: int | None  # Units: MHz.
    temperature_c_max: int | None  # Units: °C.
    event_reasons: tuple[str, ...]  # every clocks-event reason seen in the window
    clock_strayed: bool  # the held clock left the requested one by more than the tolerance
    power_kind: str  # what the timeline's power is: 'instant', 'average' or 'counter'


@dataclass(frozen=True)
class WindowResult:
    """What one measurement window gives."""

    started_s: float  # the meter's clock (time.monotonic) when the window opened. Units: s.
    duration_s: float  # Units: s.
    energy_j: float  # all sources. Units: J.
    devices: tuple[DeviceWindow, ...]
    avg_power_w: float  # Units: W.
    peak_power_w: float | None  # highest summed sample. Units: W.
    timeline: tuple[tuple[float, float], ...]  # (seconds into the window, summed W)
    imbalance: float | None  # (max - min) / mean of per-source energy; None for one source
    idle_power_w: float | None  # all sources at rest, if measured. Units: W.
    energy_above_idle_j: float | None  # Units: J.
    requested_clock_mhz: int | None  # Units: MHz.
    short: bool  # shorter than the meter's minimum window: energy unreliable
    warnings: tuple[str, ...]

    @property
    def method(self) -> str:
        methods = {d.method for d in self.devices}
        return methods.pop() if len(methods) == 1 else "mixed"

    @property
    def power_kind(self) -> str:
        """What the timeline's power is: 'instant', 'average' (a moving average that lags
        the load), 'counter' (differences of the energy counter), or 'mixed'."""
        kinds = {d.power_kind for d in self.devices}
        return kinds.pop() if len(kinds) == 1 else "mixed"


@dataclass
class _Row:
    t_s: float
    readings: list[Reading | None]
    energies_mj: list[float | None]


class _Sampler:
    """The background thread of one window. ``stop`` always joins it."""

    def __init__(
        self, sources: Sequence[EnergySource], period_s: float, t0: float, clock: Callable[[], float]
    ) -> None:
        self._sources = sources
        self._period_s = period_s
        self._t0 = t0
        self._clock = clock
        self._stop = threading.Event()
        self.rows: list[_Row] = []
        self._thread = threading.Thread(target=self._run, name="greenllm-meter", daemon=True)

    def take(self) -> None:
        readings: list[Reading | None] = []
        energies: list[float | None] = []
        for source in self._sources:
            try:
                reading = source.read()
                # Sources without a power reading (RAPL) get their power from the counter.
                energy = source.energy_mj() if reading.power_mw is None else None
            except DeviceError:
                reading, energy = None, None
            readings.append(reading)
            energies.append(energy)
        self.rows.append(_Row(self._clock() - self._t0, readings, energies))

    def _run(self) -> None:
        while not self._stop.wait(self._period_s):
            self.take()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


@dataclass
class _Open:
    sources: Sequence[EnergySource]
    t0: float
    start_mj: list[float | None]
    sampler: _Sampler
    requested_clock_mhz: int | None


@dataclass
class IdleState:
    """The sources at rest, measured once per session."""

    power_w: dict[str, float]  # per source. Units: W.
    temperature_c: dict[str, int]  # per source that reports one. Units: °C.


@dataclass
class WindowHandle:
    """What ``with meter.window() as w`` gives; ``w.result`` is set when the block ends."""

    result: WindowResult | None = None


@dataclass
class EnergyMeter:
    """Measures energy over windows on a fixed set of sources."""

    sources: Sequence[EnergySource]
    sample_hz: float = 10.0
    min_window_s: float = 5.0  # the counter updates every ~100 ms: 5 s bounds that error at 2%
    clock_tolerance: float = 0.05  # relative deviation of the held clock that gets flagged
    max_disagreement: float = 0.10  # counter vs integrated power, beyond which we warn
    flag_prefix: str = CLI_PREFIX  # how warnings name the options to change (hints.py)
    clock: Callable[[], float] = time.monotonic
    idle: IdleState | None = None
    _open: dict[str, _Open] = field(default_factory=dict)
    _keys: Iterator[int] = field(default_factory=itertools.count)

    def begin(
        self,
        key: str,
        requested_clock_mhz: int | None = None,
        sources: Sequence[EnergySource] | None = None,
    ) -> None:
        """Open window ``key`` on ``sources`` (default: all); read counters, start sampling.

        Pass the sources the engine uses (under TP=2, its two GPUs): others are not measured.
        """
        if key in self._open:
            raise ValueError(f"measurement window {key!r} is already open")
        chosen = list(self.sources if sources is None else sources)
        unknown = [s.label for s in chosen if s not in self.sources]
        if unknown or not chosen:
            raise ValueError(f"sources {unknown or 'none'} are not among this meter's")
        t0 = self.clock()
        start_mj = [self._counter(s) for s in chosen]
        sampler = _Sampler(chosen, 1 / self.sample_hz, t0, self.clock)
        sampler.take()
        sampler.start()
        self._open[key] = _Open(chosen, t0, start_mj, sampler, requested_clock_mhz)

    def end(self, key: str) -> WindowResult:
        """Close window ``key`` and compute what it measured."""
        if key not in self._open:
            raise ValueError(f"no measurement window {key!r} is open")
        window = self._open.pop(key)
        window.sampler.stop()
        window.sampler.take()
        end_mj = [self._counter(s) for s in window.sources]
        duration_s = self.clock() - window.t0
        return self._result(window, end_mj, duration_s)

    @contextmanager
    def window(
        self,
        requested_clock_mhz: int | None = None,
        sources: Sequence[EnergySource] | None = None,
    ) -> Iterator[WindowHandle]:
        """Measure the block; the sampler thread stops however the block ends."""
        key = f"window-{next(self._keys)}"
        handle = WindowHandle()
        self.begin(key, requested_clock_mhz, sources)
        try:
            yield handle
        except BaseException:
            self._open.pop(key).sampler.stop()
            raise
        handle.result = self.end(key)

    def close(self) -> None:
        """Stop every open window's sampler."""
        for window in self._open.values():
            window.sampler.stop()
        self._open.clear()

    def measure_idle(self, duration_s: float, sleep: Callable[[float], None] = time.sleep) -> IdleState:
        """Measure the sources with nothing running; kept for energy-above-idle."""
        self.begin("idle")
        try:
            sleep(duration_s)
        finally:
            result = self.end("idle")
        temperatures = {
            d.label: d.temperature_c_max for d in result.devices if d.temperature_c_max is not None
        }
        self.idle = IdleState({d.label: d.avg_power_w for d in result.devices}, temperatures)
        return self.idle

    def cool_down(
        self,
        max_wait_s: float,
        margin_c: float = 3.0,
        poll_s: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        sources: Sequence[EnergySource] | None = None,
    ) -> tuple[float, bool]:
        """Wait until every one of ``sources`` (default: all) is within ``margin_c`` of its
        idle temperature: per GPU, as points on other GPUs may run meanwhile.

        Returns (seconds waited, whether it got there); gives up after ``max_wait_s``.
        """
        if self.idle is None or not self.idle.temperature_c or max_wait_s <= 0:
            return 0.0, True
        start = self.clock()
        while True:
            hot = False
            for source in self.sources if sources is None else sources:
                idle_c = self.idle.temperature_c.get(source.label)
                if idle_c is None:
                    continue
                try:
                    now_c = source.read().temperature_c
                except DeviceError:
                    continue
                hot = hot or (now_c is not None and now_c > idle_c + margin_c)
            waited = self.clock() - start
            if not hot:
                return waited, True
            if waited >= max_wait_s:
                return waited, False
            sleep(poll_s)

    def _counter(self, source: EnergySource) -> float | None:
        try:
            return source.energy_mj()
        except DeviceError:
            return None

    def _result(self, window: _Open, end_mj: list[float | None], duration_s: float) -> WindowResult:
        rows = window.sampler.rows
        warnings: list[str] = []
        devices = []
        series: list[list[tuple[float, float]]] = []
        for i, source in enumerate(window.sources):
            device, powered = self._device(source.label, i, rows, window, end_mj[i], duration_s, warnings)
            devices.append(device)
            series.append(powered)
        energy_j = sum(d.energy_j for d in devices)
        timeline = _summed(series)
        idle_w = None
        if self.idle is not None:
            idle_w = sum(self.idle.power_w.get(s.label, 0.0) for s in window.sources)
        short = duration_s < self.min_window_s
        if short:
            warnings.append(
                f"window of {duration_s:.2f} s is shorter than the {self.min_window_s:g} s minimum: "
                "the energy counter's ~100 ms updates make it unreliable; give the point more "
                + MORE_REQUESTS.render(self.flag_prefix)
            )
        if energy_j == 0 and duration_s > 0:
            warnings.append(
                f"the window read 0 J over {duration_s:.3f} s: shorter than the counter's update "
                "period; measure a longer window"
            )
        energies = [d.energy_j for d in devices]
        mean = sum(energies) / len(energies) if energies else 0.0
        imbalance = (max(energies) - min(energies)) / mean if len(energies) > 1 and mean > 0 else None
        return WindowResult(
            started_s=window.t0,
            duration_s=duration_s,
            energy_j=energy_j,
            devices=tuple(devices),
            avg_power_w=energy_j / duration_s if duration_s > 0 else 0.0,
            peak_power_w=max((w for _, w in timeline), default=None),
            timeline=timeline,
            imbalance=imbalance,
            idle_power_w=idle_w,
            energy_above_idle_j=None if idle_w is None else energy_j - idle_w * duration_s,
            requested_clock_mhz=window.requested_clock_mhz,
            short=short,
            warnings=tuple(warnings),
        )

    def _device(
        self,
        label: str,
        i: int,
        rows: list[_Row],
        window: _Open,
        end_mj: float | None,
        duration_s: float,
        warnings: list[str],
    ) -> tuple[DeviceWindow, list[tuple[float, float]]]:
        readings = [(row.t_s, row.readings[i]) for row in rows]
        present = [(t, r) for t, r in readings if r is not None]
        missing = len(readings) - len(present)
        powered = [(t, r.power_mw / 1000) for t, r in present if r.power_mw is not None]
        kinds = {r.power_kind or AVERAGE for _, r in present if r.power_mw is not None}
        power_kind = kinds.pop() if len(kinds) == 1 else "mixed"
        if not powered:
            powered = _power_from_counter([(row.t_s, row.energies_mj[i]) for row in rows])
            power_kind = COUNTER
        sampled_j = (
            trapezoid_j([t for t, _ in powered], [w for _, w in powered]) if len(powered) > 1 else None
        )
        start_mj = window.start_mj[i]
        if start_mj is not None and end_mj is not None:
            energy_j, method = (end_mj - start_mj) / 1000, COUNTER
        elif sampled_j is not None:
            energy_j, method = sampled_j, SAMPLED
        else:
            raise DeviceError(
                f"{label}: no energy counter and fewer than two power samples in {duration_s:.3f} s",
                hint=FASTER_SAMPLING,
            )
        disagreement = None
        if method == COUNTER and sampled_j is not None and energy_j > 0:
            disagreement = abs(energy_j - sampled_j) / energy_j
            if disagreement > self.max_disagreement and duration_s >= self.min_window_s:
                warnings.append(
                    f"{label}: energy counter {energy_j:.1f} J and integrated power "
                    f"{sampled_j:.1f} J disagree by {disagreement:.0%}"
                )
        if missing:
            warnings.append(f"{label}: {missing} of {len(readings)} samples could not be read")
        clocks = [r.sm_clock_mhz for _, r in present if r.sm_clock_mhz is not None]
        temperatures = [r.temperature_c for _, r in present if r.temperature_c is not None]
        mask = 0
        for _, r in present:
            mask |= r.event_reasons or 0
        clock_mean = sum(clocks) / len(clocks) if clocks else None
        strayed = False
        requested = window.requested_clock_mhz
        if requested is not None and clock_mean is not None:
            strayed = abs(clock_mean - requested) / requested > self.clock_tolerance
            if strayed:
                reasons = ", ".join(reason_names(mask)) or "none reported"
                warnings.append(
                    f"{label}: clock locked at {requested} MHz but held {clock_mean:.0f} MHz on "
                    f"average (clock-event reasons: {reasons})"
                )
        return DeviceWindow(
            label=label,
            energy_j=energy_j,
            method=method,
            sampled_energy_j=sampled_j,
            disagreement=disagreement,
            avg_power_w=energy_j / duration_s if duration_s > 0 else 0.0,
            peak_power_w=max((w for _, w in powered), default=None),
            samples=len(present),
            missing_samples=missing,
            sm_clock_mhz_mean=clock_mean,
            sm_clock_mhz_min=min(clocks, default=None),
            temperature_c_max=max(temperatures, default=None),
            event_reasons=reason_names(mask),
            clock_strayed=strayed,
            power_kind=power_kind,
        ), powered


def _power_from_counter(points: list[tuple[float, float | None]]) -> list[tuple[float, float]]:
    """Power between successive counter samples, stamped at each interval's midpoint. Units: W."""
    known = [(t, e) for t, e in points if e is not None]
    return [
        ((t0 + t1) / 2, (e1 - e0) / 1000 / (t1 - t0))
        for (t0, e0), (t1, e1) in zip(known, known[1:])
        if t1 > t0
    ]


def _summed(series: list[list[tuple[float, float]]]) -> tuple[tuple[float, float], ...]:
    """Total power at the instants where every source has a value. Units: s, W."""
    totals: dict[float, float] = {}
    counts: dict[float, int] = {}
    for points in series:
        for t, w in points:
            totals[t] = totals.get(t, 0.0) + w
            counts[t] = counts.get(t, 0) + 1
    return tuple((t, totals[t]) for t in sorted(totals) if counts[t] == len(series))
