"""The energy meter: joules, power and observed clocks over a window, for any energy source.

The hardware counter is preferred (NVML's total-energy counter, RAPL's energy_uj); a
background thread samples power at a fixed rate all the same, for the timeline, the peak,
the observed clocks, and a cross-check against the counter. Where a source has no counter
the integral of the sampled power (trapezoid rule) is the energy. The timeline's power is
instantaneous where the GPU reports it, else NVML's 1 s average, which lags a change by
about a second: sub-windows of a run take their energy from counter reads at their edges
(``phases.py``), never from the timeline.

A window opens and closes just after each counter updates (``EDGE_POLL_S``), so that its
energy is exact over the span it reports. A counter that goes backwards inside a window (a
driver reset) leaves that source's energy unknown (NaN), with a warning. Idle power is kept
per state (the clock and power limit a sweep set, ``DeviceState``): energy above idle takes
the idle of the state the window ran in.
"""

from __future__ import annotations

import itertools
import math
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

# The kinds (warning_types.KINDS) a window's warnings are stored under.
SHORT_WINDOW_KIND = "short-window"
CLOCK_STRAYED_KIND = "clock-strayed"
COUNTER_KIND = "counter"
IDLE_KIND = "idle"
OTHER_KIND = "other"

# A counter read shows the energy as of the counter's last update, up to one update period
# (NVML: 20-100 ms) before the read. At a window's end that stale part is the load's power,
# which the window missed; at its start it is the power before the load, which it counted:
# the energy read low by about half a period of load power at each edge (-0.7% at 5 s and
# -3.4% at 1 s on fake sweeps). So each edge reads the counter again until it updates:
# just after an update the counter is exact, and the window spans exactly the energy it
# reports. The price is up to a period of waiting at each edge; the wait at the end is at
# the state's idle power, which energy above idle takes out again. (Estimating the edge
# error instead would need the power at each edge, which NVML's 1 s average cannot give.)
EDGE_POLL_S = 0.001
# Past this, an edge keeps the read it has and the window says so: no NVML counter waits
# this long between updates, and RAPL's updates every millisecond.
EDGE_MAX_WAIT_S = 0.5
EDGE_POLLS = round(EDGE_MAX_WAIT_S / EDGE_POLL_S)

# A sub-window's energy from counter reads at its edges (the steady state's) is off by up
# to one update period (plus the gap between reads) at each edge, in opposite directions:
# at most (period + gap) / duration in all. Ten periods keep that under 10%, the
# disagreement the meter tolerates between its counter and its integrated power.
SUB_WINDOW_MIN_PERIODS = 10

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
class DeviceState:
    """What a sweep has set on a source: the SM clock it locked and the power limit it set;
    None where it left them as found."""

    clock_mhz: int | None = None  # Units: MHz.
    power_limit_w: float | None = None  # Units: W.

    def __str__(self) -> str:
        parts = []
        if self.clock_mhz is not None:
            parts.append(f"the SM clock locked at {self.clock_mhz} MHz")
        if self.power_limit_w is not None:
            parts.append(f"a {self.power_limit_w:g} W power limit")
        return " and ".join(parts) or "clocks and power limit as found"


AS_FOUND = DeviceState()


@dataclass(frozen=True)
class DeviceWindow:
    """One source's figures over a window."""

    label: str
    energy_j: float  # NaN where the counter went backwards (a driver reset). Units: J.
    method: str  # 'counter' or 'sampled'
    sampled_energy_j: float | None  # integral of sampled power, the cross-check. Units: J.
    disagreement: float | None  # |counter - sampled| / counter
    avg_power_w: float  # over the span the energy covers. Units: W.
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
    duration_s: float  # from the first source's opening counter update to the last's closing one. Units: s.
    energy_j: float  # all sources; NaN where a counter went backwards. Units: J.
    devices: tuple[DeviceWindow, ...]
    avg_power_w: float  # Units: W.
    peak_power_w: float | None  # highest summed sample. Units: W.
    timeline: tuple[tuple[float, float], ...]  # (seconds into the window, summed W)
    imbalance: float | None  # (max - min) / mean of per-source energy; None for one source
    idle_power_w: float | None  # all sources at rest, each in its state, if measured. Units: W.
    energy_above_idle_j: float | None  # None where idle or the energy is unknown. Units: J.
    requested_clock_mhz: int | None  # Units: MHz.
    short: bool  # shorter than the meter's minimum window: energy unreliable
    warnings: tuple[str, ...]
    warning_kinds: tuple[str, ...] = ()  # the kind of each of ``warnings`` (warning_types.KINDS)

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
                reading: Reading | None = source.read()
            except DeviceError:
                reading = None
            # Every sample reads the counter too: sources without a power reading (RAPL)
            # get their power from it, and a counter that went backwards shows between two.
            try:
                energy = source.energy_mj()
            except DeviceError:
                energy = None
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


@dataclass(frozen=True)
class _Edge:
    """A source's counter read at one edge of a window."""

    t_s: float  # when it was read: just after the counter updated, where ``aligned``. Units: s.
    mj: float | None  # None: no counter, or it could not be read. Units: mJ.
    aligned: bool  # read just after an update (else as of the last one, up to a period old)


@dataclass
class _Open:
    sources: Sequence[EnergySource]
    t0: float
    starts: list[_Edge]
    sampler: _Sampler
    requested_clock_mhz: int | None
    states: list[DeviceState]  # each source's, as the window opened


@dataclass
class IdleState:
    """The sources at rest with clocks and power limits as found, measured once per session."""

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
    # Edges are exact (EDGE_POLL_S); what remains is the wait for the closing update, up to a
    # period (100 ms) at idle power: a 5 s window keeps that under 2% of its energy.
    min_window_s: float = 5.0
    clock_tolerance: float = 0.05  # relative deviation of the held clock that gets flagged
    max_disagreement: float = 0.10  # counter vs integrated power, beyond which we warn
    flag_prefix: str = CLI_PREFIX  # how warnings name the options to change (hints.py)
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep  # waits between counter reads at the edges
    idle: IdleState | None = None  # as found: measured here, or handed in (a parallel worker)
    # What a sweep has set on each source now, by label; absent: as found.
    states: dict[str, DeviceState] = field(default_factory=dict)
    # Idle power of a source in a state other than as found, measured in it. Units: W.
    state_idle_w: dict[tuple[str, DeviceState], float] = field(default_factory=dict)
    _open: dict[str, _Open] = field(default_factory=dict)
    _keys: Iterator[int] = field(default_factory=itertools.count)

    def begin(
        self,
        key: str,
        requested_clock_mhz: int | None = None,
        sources: Sequence[EnergySource] | None = None,
    ) -> None:
        """Open window ``key`` on ``sources`` (default: all) at their counters' next update;
        start sampling.

        Pass the sources the engine uses (under TP=2, its two GPUs): others are not measured.
        """
        if key in self._open:
            raise ValueError(f"measurement window {key!r} is already open")
        chosen = list(self.sources if sources is None else sources)
        unknown = [s.label for s in chosen if s not in self.sources]
        if unknown or not chosen:
            raise ValueError(f"sources {unknown or 'none'} are not among this meter's")
        starts = self._edges(chosen)
        t0 = min(edge.t_s for edge in starts)
        sampler = _Sampler(chosen, 1 / self.sample_hz, t0, self.clock)
        sampler.take()
        sampler.start()
        states = [self.states.get(s.label, AS_FOUND) for s in chosen]
        self._open[key] = _Open(chosen, t0, starts, sampler, requested_clock_mhz, states)

    def end(self, key: str) -> WindowResult:
        """Close window ``key`` at its counters' next update and compute what it measured."""
        if key not in self._open:
            raise ValueError(f"no measurement window {key!r} is open")
        window = self._open.pop(key)
        window.sampler.stop()
        ends = self._edges(window.sources)
        # After the closing updates, so that the integrated power spans what the counters do.
        window.sampler.take()
        return self._result(window, ends)

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

    def measure_idle(self, duration_s: float) -> IdleState:
        """Measure every source at rest, with clocks and power limits as found: the idle of
        that state, and the temperatures ``cool_down`` waits for."""
        result = self._at_rest(self.sources, duration_s)
        temperatures = {
            d.label: d.temperature_c_max for d in result.devices if d.temperature_c_max is not None
        }
        self.idle = IdleState(_idle_powers(result), temperatures)
        return self.idle

    def measure_state_idle(self, duration_s: float) -> list[str]:
        """Measure at rest every source whose state (``states``) has no idle power yet, so
        that each state is measured once; returns the labels measured."""
        pending = [
            s
            for s in self.sources
            if (state := self.states.get(s.label, AS_FOUND)) != AS_FOUND
            and (s.label, state) not in self.state_idle_w
        ]
        if not pending:
            return []
        powers = _idle_powers(self._at_rest(pending, duration_s))
        for source in pending:
            if source.label in powers:
                self.state_idle_w[(source.label, self.states[source.label])] = powers[source.label]
        return [s.label for s in pending]

    def _at_rest(self, sources: Sequence[EnergySource], duration_s: float) -> WindowResult:
        self.begin("idle", sources=sources)
        try:
            self.sleep(duration_s)
        finally:
            result = self.end("idle")
        return result

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

    def _edges(self, sources: Sequence[EnergySource]) -> list[_Edge]:
        """Each source's counter, read again until it updates (see EDGE_POLL_S). One that
        does not update keeps its first value, as of the wait's end: it held all along."""
        now = self.clock()
        first = [self._counter(s) for s in sources]
        edges: list[_Edge | None] = [None] * len(sources)
        waiting = {i for i, mj in enumerate(first) if mj is not None}
        for _ in range(EDGE_POLLS):
            if not waiting:
                break
            self.sleep(EDGE_POLL_S)
            now = self.clock()
            for i in sorted(waiting):
                mj = self._counter(sources[i])
                if mj is not None and mj != first[i]:
                    edges[i] = _Edge(now, mj, True)
                    waiting.discard(i)
        return [_Edge(now, mj, False) if edge is None else edge for edge, mj in zip(edges, first)]

    def _result(self, window: _Open, ends: list[_Edge]) -> WindowResult:
        rows = window.sampler.rows
        duration_s = max(edge.t_s for edge in ends) - window.t0
        warnings: list[tuple[str, str]] = []
        devices = []
        spans = []
        series: list[list[tuple[float, float]]] = []
        for i, source in enumerate(window.sources):
            start, end = window.starts[i], ends[i]
            counted = start.mj is not None and end.mj is not None
            span_s = end.t_s - start.t_s if counted else duration_s
            device, powered = self._device(source.label, i, rows, window, start, end, span_s, warnings)
            devices.append(device)
            spans.append(span_s)
            series.append(powered)
        energy_j = sum(d.energy_j for d in devices)
        timeline = _summed(series)
        idle_w, above_j = self._above_idle(window, devices, spans, warnings)
        short = duration_s < self.min_window_s
        if short:
            warnings.append(
                (
                    f"window of {duration_s:.2f} s is shorter than the {self.min_window_s:g} s minimum: "
                    "the energy counter's ~100 ms updates make it unreliable; give the point more "
                    + MORE_REQUESTS.render(self.flag_prefix),
                    SHORT_WINDOW_KIND,
                )
            )
        if energy_j == 0 and duration_s > 0:
            warnings.append(
                (
                    f"the window read 0 J over {duration_s:.3f} s: shorter than the counter's update "
                    "period; measure a longer window",
                    SHORT_WINDOW_KIND,
                )
            )
        energies = [d.energy_j for d in devices]
        mean = sum(energies) / len(energies)
        imbalance = None
        if len(energies) > 1 and mean > 0:  # False for NaN too
            imbalance = (max(energies) - min(energies)) / mean
        return WindowResult(
            started_s=window.t0,
            duration_s=duration_s,
            energy_j=energy_j,
            devices=tuple(devices),
            avg_power_w=sum(d.avg_power_w for d in devices),
            peak_power_w=max((w for _, w in timeline), default=None),
            timeline=timeline,
            imbalance=imbalance,
            idle_power_w=idle_w,
            energy_above_idle_j=above_j,
            requested_clock_mhz=window.requested_clock_mhz,
            short=short,
            warnings=tuple(text for text, _ in warnings),
            warning_kinds=tuple(kind for _, kind in warnings),
        )

    def _above_idle(
        self,
        window: _Open,
        devices: Sequence[DeviceWindow],
        spans: Sequence[float],
        warnings: list[tuple[str, str]],
    ) -> tuple[float | None, float | None]:
        """The window's idle power (each source's in its state) and its energy above that,
        each source's idle over the span its energy covers. Units: W, J."""
        total_w = 0.0
        above_j = 0.0
        for device, span_s, state in zip(devices, spans, window.states):
            idle_w = self._idle_w(device.label, state, warnings)
            if idle_w is None:
                return None, None
            total_w += idle_w
            above_j += device.energy_j - idle_w * span_s
        if not math.isfinite(above_j):
            return total_w, None
        # Any negative is said, however small: a device whose power never leaves idle reads
        # a hair either side of it, and the warning's last clause says so.
        if above_j < 0:
            average_w = sum(d.avg_power_w for d in devices)
            warnings.append(
                (
                    f"energy above idle is negative ({above_j:.1f} J): the window averaged "
                    f"{average_w:.1f} W against {total_w:.1f} W at idle; idle was measured under "
                    "another load, or the work draws too little to tell from idle",
                    IDLE_KIND,
                )
            )
        return total_w, above_j

    def _idle_w(self, label: str, state: DeviceState, warnings: list[tuple[str, str]]) -> float | None:
        """A source's idle power in ``state``: measured in it, else as found (said in
        ``warnings``); None where neither was measured. Units: W."""
        if state != AS_FOUND and (label, state) in self.state_idle_w:
            return self.state_idle_w[(label, state)]
        as_found = None if self.idle is None else self.idle.power_w.get(label)
        if as_found is not None and state != AS_FOUND:
            warnings.append(
                (
                    f"{label}: no idle power was measured with {state}: energy above idle and the "
                    f"static share use its idle with {AS_FOUND}",
                    IDLE_KIND,
                )
            )
        return as_found

    def _device(
        self,
        label: str,
        i: int,
        rows: list[_Row],
        window: _Open,
        start: _Edge,
        end: _Edge,
        span_s: float,
        warnings: list[tuple[str, str]],
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
        if start.mj is not None and end.mj is not None:
            energy_j, method = (end.mj - start.mj) / 1000, COUNTER
            late = [name for name, edge in (("start", start), ("end", end)) if not edge.aligned]
            if _went_backwards(start, end, rows, i, window.t0):
                energy_j = math.nan
                warnings.append(
                    (
                        f"{label}: the energy counter went backwards during the window (a driver "
                        "reset?): its energy is unknown, and the repeat is left out",
                        COUNTER_KIND,
                    )
                )
            elif late:
                warnings.append(
                    (
                        f"{label}: the energy counter did not update within {EDGE_MAX_WAIT_S:g} s "
                        f"of the window's {' and '.join(late)}: its energy may be off by up to one "
                        "update period of power at each such edge",
                        COUNTER_KIND,
                    )
                )
        elif sampled_j is not None:
            energy_j, method = sampled_j, SAMPLED
        else:
            raise DeviceError(
                f"{label}: no energy counter and fewer than two power samples in {span_s:.3f} s",
                hint=FASTER_SAMPLING,
            )
        disagreement = None
        if method == COUNTER and sampled_j is not None and energy_j > 0:
            disagreement = abs(energy_j - sampled_j) / energy_j
            if disagreement > self.max_disagreement and span_s >= self.min_window_s:
                warnings.append(
                    (
                        f"{label}: energy counter {energy_j:.1f} J and integrated power "
                        f"{sampled_j:.1f} J disagree by {disagreement:.0%}",
                        COUNTER_KIND,
                    )
                )
        if missing:
            warnings.append((f"{label}: {missing} of {len(readings)} samples could not be read", OTHER_KIND))
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
                    (
                        f"{label}: clock locked at {requested} MHz but held {clock_mean:.0f} MHz on "
                        f"average (clock-event reasons: {reasons})",
                        CLOCK_STRAYED_KIND,
                    )
                )
        return DeviceWindow(
            label=label,
            energy_j=energy_j,
            method=method,
            sampled_energy_j=sampled_j,
            disagreement=disagreement,
            avg_power_w=energy_j / span_s if span_s > 0 else 0.0,
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


def _went_backwards(start: _Edge, end: _Edge, rows: Sequence[_Row], i: int, t0: float) -> bool:
    """Whether source ``i``'s counter decreased between any two of its reads in a window,
    taken in time order: the edges and every sample."""
    reads = [(start.t_s, start.mj), (end.t_s, end.mj)]
    reads += [(t0 + row.t_s, row.energies_mj[i]) for row in rows]
    values = [mj for _, mj in sorted(reads, key=lambda read: read[0]) if mj is not None]
    return any(later < earlier for earlier, later in zip(values, values[1:]))


def _idle_powers(result: WindowResult) -> dict[str, float]:
    """Each source's power in an idle window. Where its counter went backwards, the
    integrated power: at rest power is flat, so the 1 s averaging of NVML's readings does
    not matter. Units: W."""
    powers = {}
    for device in result.devices:
        if math.isfinite(device.avg_power_w):
            powers[device.label] = device.avg_power_w
        elif device.sampled_energy_j is not None and result.duration_s > 0:
            powers[device.label] = device.sampled_energy_j / result.duration_s
    return powers


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
