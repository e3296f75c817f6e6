"""An in-process stand-in for the ``pynvml`` functions pytest-greenllm calls.

It is a test double, used by the plugin's tests and by the fake device (``device=fake``): nothing
it reports is measured, and every report made with it says ``device: fake``. It keeps
NVML's contract: the same function names and arguments, the same units (mW, mJ, MHz, °C),
and the real ``pynvml.NVMLError`` classes with NVML's return codes.

The model behind it: an H100 SXM whose power rises with load and with the square of the
SM clock, capped by the power limit (which then lowers the clock, as the driver does); a
temperature that follows power with a lag; an energy counter that integrates the true power
exactly but shows it only as of its last update, every ``counter_period_s`` (100 ms by
default; NVML's counter updates every 20-100 ms), and that restarts from 0 every
``counter_reset_s`` where that is set (a driver reset; ``$GREENLLM_FAKE_COUNTER_RESET``
seconds for the fake device). As on Hopper, ``nvmlDeviceGetPowerUsage``
and the NVML_FI_DEV_POWER_AVERAGE field report the trailing one-second average of the true
power, so a step of load shows there over a second, while the NVML_FI_DEV_POWER_INSTANT field
reports the power now; every power reading carries Gaussian noise. Locked clocks and power
limits can be kept in a state file so that, like on real hardware, they outlive the process.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pynvml

from pytest_greenllm.devices.errors import DeviceUnavailable

NVMLError = pynvml.NVMLError
NVML_CLOCK_GRAPHICS = pynvml.NVML_CLOCK_GRAPHICS
NVML_CLOCK_SM = pynvml.NVML_CLOCK_SM
NVML_CLOCK_MEM = pynvml.NVML_CLOCK_MEM
NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU

GPU_NAME = "NVIDIA H100 80GB HBM3"
DRIVER_VERSION = "580.95.05"
NVML_VERSION = "13.580.95.05"
MEMORY_CLOCK_MHZ = 2619
# NVML lists an H100 SXM's graphics clocks from 1980 MHz down in 15 MHz steps.
GRAPHICS_CLOCKS_MHZ: tuple[int, ...] = tuple(range(1980, 209, -15))
IDLE_CLOCK_MHZ = 345
IDLE_POWER_W = 70.0
MAX_POWER_W = 700.0
POWER_LIMIT_RANGE_MW = (200_000, 700_000)
IDLE_TEMPERATURE_C = 32.0
KELVIN_PER_WATT = 0.06  # steady-state heating above idle
THERMAL_TIME_CONSTANT_S = 20.0
AVERAGING_WINDOW_S = 1.0  # Hopper's nvmlDeviceGetPowerUsage: a trailing 1 s average

REASON_GPU_IDLE = 0x1
REASON_SW_POWER_CAP = 0x4

# Seconds between driver resets of the fake device's energy counter (unset: none).
COUNTER_RESET_ENV = "GREENLLM_FAKE_COUNTER_RESET"


def counter_reset_from_env() -> float | None:
    """``$GREENLLM_FAKE_COUNTER_RESET`` in seconds, None where unset. Units: s."""
    text = os.environ.get(COUNTER_RESET_ENV, "")
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise DeviceUnavailable(f"${COUNTER_RESET_ENV}={text!r} must be a number of seconds > 0")
    return seconds


@dataclass
class _Gpu:
    index: int
    uuid: str
    locked_mhz: tuple[int, int] | None = None
    power_limit_mw: int = POWER_LIMIT_RANGE_MW[1]
    energy_mj: float = 0.0  # exact integral of the true power since init. Units: mJ.
    counter_mj: float = 0.0  # energy_mj at the counter's last update. Units: mJ.
    counter_zero_mj: float = 0.0  # energy_mj at the counter's last reset. Units: mJ.
    # (time in s, energy_mj) at each advance, back to the last one at or before the
    # averaging window's start: energy is linear between them, as power is constant.
    energy_history: deque[tuple[float, float]] = field(default_factory=deque)
    temperature_c: float = IDLE_TEMPERATURE_C
    last_t: float = 0.0
    power_w: float = IDLE_POWER_W  # true power since last_t. Units: W.
    sm_clock_mhz: int = IDLE_CLOCK_MHZ
    reasons: int = REASON_GPU_IDLE


F = TypeVar("F", bound=Callable[..., Any])


def _serialised(method: F) -> F:
    """Run an NVML function under the fake's lock.

    The meter's sampler thread calls in while the test's thread does, and the model's
    integration must not interleave; functools.wraps keeps pynvml's signature visible.
    """

    @functools.wraps(method)
    def wrapper(self: FakeNvml, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


@dataclass(frozen=True)
class _Handle:
    """What nvmlDeviceGetHandleByIndex returns: opaque to callers, as in pynvml."""

    index: int


def cpu_busy_fraction() -> Callable[[], float]:
    """A load source that reads the machine's CPU use from /proc/stat between calls.

    Under the fake device the engine runs on the CPU, so CPU use is the most
    honest stand-in for GPU load that this machine has.
    """
    previous: list[int] = []
    last = [0.0]

    def read() -> float:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except OSError:
            return 0.0
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        total = sum(fields)
        if not previous:
            previous[:] = [idle, total]
            return 0.0
        d_idle, d_total = idle - previous[0], total - previous[1]
        if d_total <= 0:
            # Called again within one kernel tick: nothing new to measure, keep the load.
            return last[0]
        previous[:] = [idle, total]
        last[0] = max(0.0, min(1.0, 1.0 - d_idle / d_total))
        return last[0]

    return read


@dataclass
class FakeNvml:
    """A fake NVML with ``gpus`` H100s. Pass it where the ``pynvml`` module is expected."""

    gpus: int = 8
    clock: Callable[[], float] = time.monotonic
    load: Callable[[int], float] | None = None  # per GPU index, 0..1; None: constant set_load
    noise: float = 0.02  # relative standard deviation of power readings
    power_scale: float = 1.0  # multiplies every watt: a test switch to inject a regression
    seed: int = 0
    state_path: Path | None = None  # where locked clocks and limits outlive the process
    root: bool = True  # False: setters raise NoPermission, as for a normal user
    energy_counter: bool = True  # False: a pre-Volta GPU without the counter
    persistence: bool = True  # persistence mode, as `nvidia-smi -pm` leaves it
    instant_power: bool = True  # False: a GPU without the NVML_FI_DEV_POWER_INSTANT field
    counter_period_s: float = 0.1  # how often the energy counter updates. Units: s.
    # How often a driver reset restarts the energy counter from 0; None: never. Units: s.
    counter_reset_s: float | None = field(default_factory=counter_reset_from_env)
    driver_loaded: bool = True
    _failures: dict[str, int] = field(default_factory=dict)
    _constant_load: float = 0.0
    _init_count: int = 0
    _rng: random.Random = field(init=False)
    _devices: list[_Gpu] = field(init=False)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    NVMLError = pynvml.NVMLError
    NVML_CLOCK_GRAPHICS = NVML_CLOCK_GRAPHICS
    NVML_CLOCK_SM = NVML_CLOCK_SM
    NVML_CLOCK_MEM = NVML_CLOCK_MEM
    NVML_TEMPERATURE_GPU = NVML_TEMPERATURE_GPU
    NVML_FEATURE_ENABLED = pynvml.NVML_FEATURE_ENABLED
    NVML_RESTRICTED_API_SET_APPLICATION_CLOCKS = pynvml.NVML_RESTRICTED_API_SET_APPLICATION_CLOCKS
    NVML_FI_DEV_POWER_INSTANT = pynvml.NVML_FI_DEV_POWER_INSTANT
    NVML_SUCCESS = pynvml.NVML_SUCCESS

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        now = self.clock()
        self._devices = [
            _Gpu(i, f"GPU-fa4e0000-0000-4000-8000-{i:012d}", last_t=now) for i in range(self.gpus)
        ]
        for gpu in self._devices:
            self._settle(gpu)
        self._load_state()
        for gpu in self._devices:
            # The GPU sat at its settled power before init: a point one window back lets
            # the first second's average include that time, as a real GPU's would.
            before_mj = -gpu.power_w * AVERAGING_WINDOW_S * 1000
            gpu.energy_history.extend([(now - AVERAGING_WINDOW_S, before_mj), (now, 0.0)])

    # --- test switches -------------------------------------------------------------------
    def fail(self, function: str, code: int) -> None:
        """Make every later call of ``function`` raise ``NVMLError(code)``."""
        self._failures[function] = code

    def heal(self, function: str) -> None:
        """Undo :meth:`fail` for ``function``."""
        self._failures.pop(function, None)

    def set_load(self, load: float) -> None:
        """Set the load of every GPU (0..1), from now on."""
        with self._lock:
            for gpu in self._devices:
                self._advance(gpu)
            self._constant_load = load
            for gpu in self._devices:
                self._settle(gpu)

    def true_energy_mj(self, index: int) -> float:
        """The exact energy since init, for tests to compare meters against. Units: mJ."""
        with self._lock:
            gpu = self._devices[index]
            self._advance(gpu)
            return gpu.energy_mj

    # --- the model -----------------------------------------------------------------------
    def _load_of(self, gpu: _Gpu) -> float:
        raw = self.load(gpu.index) if self.load is not None else self._constant_load
        return max(0.0, min(1.0, raw))

    def _power_at(self, load: float, mhz: int) -> float:
        dynamic = (MAX_POWER_W - IDLE_POWER_W) * load * (mhz / GRAPHICS_CLOCKS_MHZ[0]) ** 2
        return (IDLE_POWER_W + dynamic) * self.power_scale

    def _settle(self, gpu: _Gpu) -> None:
        """Pick the clock and power the driver would run at, for the current load and limits."""
        load = self._load_of(gpu)
        if gpu.locked_mhz is not None:
            target = gpu.locked_mhz[1]
        else:
            target = GRAPHICS_CLOCKS_MHZ[0] if load > 0.05 else IDLE_CLOCK_MHZ
        reasons = REASON_GPU_IDLE if load <= 0.05 else 0
        limit_w = gpu.power_limit_mw / 1000
        mhz = target
        while self._power_at(load, mhz) > limit_w and mhz > GRAPHICS_CLOCKS_MHZ[-1]:
            mhz -= 15
            reasons |= REASON_SW_POWER_CAP
        gpu.sm_clock_mhz, gpu.power_w, gpu.reasons = mhz, self._power_at(load, mhz), reasons

    def _advance(self, gpu: _Gpu) -> None:
        now = self.clock()
        dt = now - gpu.last_t
        if dt > 0:
            last_update = math.floor(now / self.counter_period_s) * self.counter_period_s
            if last_update > gpu.last_t:
                # Power was constant since last_t, so the energy at the update is exact.
                gpu.counter_mj = gpu.energy_mj + gpu.power_w * (last_update - gpu.last_t) * 1000
            if self.counter_reset_s is not None:
                last_reset = math.floor(now / self.counter_reset_s) * self.counter_reset_s
                if last_reset > gpu.last_t:
                    gpu.counter_zero_mj = gpu.energy_mj + gpu.power_w * (last_reset - gpu.last_t) * 1000
            gpu.energy_mj += gpu.power_w * dt * 1000
            target = IDLE_TEMPERATURE_C + KELVIN_PER_WATT * (gpu.power_w - IDLE_POWER_W)
            gpu.temperature_c = target + (gpu.temperature_c - target) * math.exp(
                -dt / THERMAL_TIME_CONSTANT_S
            )
            gpu.last_t = now
            history = gpu.energy_history
            history.append((now, gpu.energy_mj))
            while history[1][0] <= now - AVERAGING_WINDOW_S:
                history.popleft()
        if self.load is not None:
            self._settle(gpu)

    def _average_power_w(self, gpu: _Gpu) -> float:
        """The true power averaged over the window that ends at the last advance. Units: W."""
        start_s = gpu.last_t - AVERAGING_WINDOW_S
        # Pruning leaves the window's start between the first two points.
        (t0, e0_mj), (t1, e1_mj) = gpu.energy_history[0], gpu.energy_history[1]
        start_mj = e0_mj + (e1_mj - e0_mj) * (start_s - t0) / (t1 - t0)
        return (gpu.energy_mj - start_mj) / AVERAGING_WINDOW_S / 1000

    def _reading_mw(self, power_w: float) -> int:
        """A power sensor's reading of ``power_w``, with noise. Units: mW."""
        return max(0, round(power_w * (1 + self._rng.gauss(0.0, self.noise)) * 1000))

    def _load_state(self) -> None:
        if self.state_path is None or not self.state_path.exists():
            return
        state = json.loads(self.state_path.read_text())
        for gpu in self._devices:
            saved = state.get(gpu.uuid, {})
            locked = saved.get("locked_mhz")
            gpu.locked_mhz = (locked[0], locked[1]) if locked else None
            gpu.power_limit_mw = saved.get("power_limit_mw", gpu.power_limit_mw)
            self._settle(gpu)

    def _save_state(self) -> None:
        if self.state_path is None:
            return
        state = {
            g.uuid: {"locked_mhz": g.locked_mhz, "power_limit_mw": g.power_limit_mw} for g in self._devices
        }
        # Through a rename, like a driver's own state: a kill mid-write must not tear it.
        tmp = self.state_path.with_name(f".{self.state_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.state_path)

    def _check(self, function: str) -> None:
        code = self._failures.get(function)
        if code is not None:
            raise NVMLError(code)
        if function != "nvmlInit" and self._init_count == 0:
            raise NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)

    def _require_root(self) -> None:
        # Setters need root or CAP_SYS_ADMIN, as in NVML.
        if not self.root:
            raise NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)

    def _gpu(self, function: str, handle: Any) -> _Gpu:
        self._check(function)
        if not isinstance(handle, _Handle) or not 0 <= handle.index < self.gpus:
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        gpu = self._devices[handle.index]
        self._advance(gpu)
        return gpu

    # --- the pynvml functions ------------------------------------------------------------
    @_serialised
    def nvmlInit(self) -> None:
        self._check("nvmlInit")
        if not self.driver_loaded:
            raise NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
        self._init_count += 1

    @_serialised
    def nvmlShutdown(self) -> None:
        self._check("nvmlShutdown")
        self._init_count -= 1

    @_serialised
    def nvmlSystemGetDriverVersion(self) -> str:
        self._check("nvmlSystemGetDriverVersion")
        return DRIVER_VERSION

    @_serialised
    def nvmlSystemGetNVMLVersion(self) -> str:
        self._check("nvmlSystemGetNVMLVersion")
        return NVML_VERSION

    @_serialised
    def nvmlDeviceGetCount(self) -> int:
        self._check("nvmlDeviceGetCount")
        return self.gpus

    @_serialised
    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self._check("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < self.gpus:
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return _Handle(index)

    @_serialised
    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> _Handle:
        self._check("nvmlDeviceGetHandleByUUID")
        for gpu in self._devices:
            if gpu.uuid == uuid:
                return _Handle(gpu.index)
        raise NVMLError(pynvml.NVML_ERROR_NOT_FOUND)

    @_serialised
    def nvmlDeviceGetIndex(self, handle: _Handle) -> int:
        return self._gpu("nvmlDeviceGetIndex", handle).index

    @_serialised
    def nvmlDeviceGetName(self, handle: _Handle) -> str:
        self._gpu("nvmlDeviceGetName", handle)
        return GPU_NAME

    @_serialised
    def nvmlDeviceGetUUID(self, handle: _Handle) -> str:
        return self._gpu("nvmlDeviceGetUUID", handle).uuid

    @_serialised
    def nvmlDeviceGetSupportedMemoryClocks(self, handle: _Handle) -> list[int]:
        self._gpu("nvmlDeviceGetSupportedMemoryClocks", handle)
        return [MEMORY_CLOCK_MHZ]

    @_serialised
    def nvmlDeviceGetSupportedGraphicsClocks(self, handle: _Handle, memoryClockMHz: int) -> list[int]:
        self._gpu("nvmlDeviceGetSupportedGraphicsClocks", handle)
        if memoryClockMHz != MEMORY_CLOCK_MHZ:
            raise NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return list(GRAPHICS_CLOCKS_MHZ)

    @_serialised
    def nvmlDeviceGetClockInfo(self, handle: _Handle, type: int) -> int:
        gpu = self._gpu("nvmlDeviceGetClockInfo", handle)
        if type in (NVML_CLOCK_SM, NVML_CLOCK_GRAPHICS):
            return gpu.sm_clock_mhz
        if type == NVML_CLOCK_MEM:
            return MEMORY_CLOCK_MHZ
        raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)

    @_serialised
    def nvmlDeviceGetTemperature(self, handle: _Handle, sensor: int) -> int:
        gpu = self._gpu("nvmlDeviceGetTemperature", handle)
        if sensor != NVML_TEMPERATURE_GPU:
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return round(gpu.temperature_c)

    @_serialised
    def nvmlDeviceGetPowerManagementLimit(self, handle: _Handle) -> int:
        return self._gpu("nvmlDeviceGetPowerManagementLimit", handle).power_limit_mw

    @_serialised
    def nvmlDeviceGetPowerManagementLimitConstraints(self, handle: _Handle) -> list[int]:
        self._gpu("nvmlDeviceGetPowerManagementLimitConstraints", handle)
        return list(POWER_LIMIT_RANGE_MW)

    @_serialised
    def nvmlDeviceSetPowerManagementLimit(self, handle: _Handle, limit: int) -> None:
        gpu = self._gpu("nvmlDeviceSetPowerManagementLimit", handle)
        self._require_root()
        if not POWER_LIMIT_RANGE_MW[0] <= limit <= POWER_LIMIT_RANGE_MW[1]:
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        gpu.power_limit_mw = limit
        self._settle(gpu)
        self._save_state()

    @_serialised
    def nvmlDeviceGetPowerUsage(self, handle: _Handle) -> int:
        gpu = self._gpu("nvmlDeviceGetPowerUsage", handle)
        return self._reading_mw(self._average_power_w(gpu))

    @_serialised
    def nvmlDeviceGetTotalEnergyConsumption(self, handle: _Handle) -> int:
        gpu = self._gpu("nvmlDeviceGetTotalEnergyConsumption", handle)
        if not self.energy_counter:
            raise NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        # The counter shows the energy at its last update, up to counter_period_s ago, since
        # its last reset (0 until it updates after one).
        return math.floor(max(0.0, gpu.counter_mj - gpu.counter_zero_mj))

    @_serialised
    def nvmlDeviceGetPersistenceMode(self, handle: _Handle) -> int:
        self._gpu("nvmlDeviceGetPersistenceMode", handle)
        return int(pynvml.NVML_FEATURE_ENABLED if self.persistence else pynvml.NVML_FEATURE_DISABLED)

    @_serialised
    def nvmlDeviceGetAPIRestriction(self, device: _Handle, apiType: int) -> int:
        self._gpu("nvmlDeviceGetAPIRestriction", device)
        if apiType not in (
            pynvml.NVML_RESTRICTED_API_SET_APPLICATION_CLOCKS,
            pynvml.NVML_RESTRICTED_API_SET_AUTO_BOOSTED_CLOCKS,
        ):
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        # Restricted to root, NVML's default.
        return int(pynvml.NVML_FEATURE_ENABLED)

    @_serialised
    def nvmlDeviceGetFieldValues(self, handle: _Handle, fieldIds: list[int]) -> Any:
        gpu = self._gpu("nvmlDeviceGetFieldValues", handle)
        # The same ctypes array pynvml returns: callers read each entry's nvmlReturn.
        values = (pynvml.c_nvmlFieldValue_t * len(fieldIds))()
        for entry, field_id in zip(values, fieldIds):
            entry.fieldId = field_id
            entry.timestamp = round(self.clock() * 1e6)
            if field_id == pynvml.NVML_FI_DEV_POWER_AVERAGE:
                power_w = self._average_power_w(gpu)
            elif field_id == pynvml.NVML_FI_DEV_POWER_INSTANT and self.instant_power:
                power_w = gpu.power_w
            else:
                entry.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
                continue
            entry.nvmlReturn = pynvml.NVML_SUCCESS
            entry.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
            entry.value.uiVal = self._reading_mw(power_w)
        return values

    @_serialised
    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: _Handle) -> int:
        return self._gpu("nvmlDeviceGetCurrentClocksEventReasons", handle).reasons

    @_serialised
    def nvmlDeviceSetGpuLockedClocks(self, handle: _Handle, minGpuClockMHz: int, maxGpuClockMHz: int) -> None:
        gpu = self._gpu("nvmlDeviceSetGpuLockedClocks", handle)
        self._require_root()
        lowest, highest = GRAPHICS_CLOCKS_MHZ[-1], GRAPHICS_CLOCKS_MHZ[0]
        if not lowest <= minGpuClockMHz <= maxGpuClockMHz <= highest:
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        gpu.locked_mhz = (minGpuClockMHz, maxGpuClockMHz)
        self._settle(gpu)
        self._save_state()

    @_serialised
    def nvmlDeviceResetGpuLockedClocks(self, handle: _Handle) -> None:
        gpu = self._gpu("nvmlDeviceResetGpuLockedClocks", handle)
        self._require_root()
        gpu.locked_mhz = None
        self._settle(gpu)
        self._save_state()

    # --- for tests and `greenllm` diagnostics, not part of pynvml ------------------------
    def locked_clocks(self, index: int) -> tuple[int, int] | None:
        """The clocks locked on GPU ``index``, as the driver holds them."""
        return self._devices[index].locked_mhz
