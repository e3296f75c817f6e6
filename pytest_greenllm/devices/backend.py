"""Open the device a session measures with: NVML, RAPL, the fake NVML, or none.

``auto`` tries NVML (a GPU answers), then RAPL (its counters are readable), then none.
``fake`` is used only when asked for.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_greenllm.devices.base import Capabilities, EnergySource, Gpu
from pytest_greenllm.devices.errors import DeviceError, DeviceUnavailable
from pytest_greenllm.devices.guard import ClockGuard, default_state_path
from pytest_greenllm.devices.nvml import NvmlGpu, NvmlSession, load_pynvml
from pytest_greenllm.devices.rapl import POWERCAP, find_zones
from pytest_greenllm.hints import Hint

if TYPE_CHECKING:
    from pytest_greenllm.devices.fake_nvml import FakeNvml

# Test switches of the fake device, documented in README ("The fake device").
FAKE_GPUS_ENV = "GREENLLM_FAKE_GPUS"
FAKE_STATE_ENV = "GREENLLM_FAKE_STATE"  # a file that keeps locked clocks across processes
FAKE_POWER_SCALE_ENV = "GREENLLM_FAKE_POWER_SCALE"  # 1.1 injects a 10% power regression
FAKE_FAIL_ENV = "GREENLLM_FAKE_FAIL"  # e.g. nvmlDeviceSetGpuLockedClocks=4 (NoPermission)
FAKE_LOAD_ENV = "GREENLLM_FAKE_LOAD"  # a constant load 0..1 instead of this machine's CPU use
FAKE_COUNTER_PERIOD_ENV = "GREENLLM_FAKE_COUNTER_PERIOD"  # energy counter updates, in seconds
NO_METER = (
    "no energy meter here (device=none): install the NVIDIA driver and nvidia-ml-py for "
    "GPUs, or make RAPL readable (/sys/class/powercap/intel-rapl:*/energy_uj, root) for "
    "CPUs"
)
TRY_FAKE = Hint("device", "fake", "; {flag} tries the plugin with a simulated GPU")


@dataclass
class DeviceBackend:
    """A :class:`~pytest_greenllm.devices.base.Backend` of this package: NVML, the fake NVML,
    RAPL or none."""

    kind: str  # nvml, fake, rapl or none
    capabilities: Capabilities
    gpus: list[NvmlGpu] = field(default_factory=list)
    sources: list[EnergySource] = field(default_factory=list)
    nvml: NvmlSession | None = None
    guard: ClockGuard | None = None
    driver_version: str | None = None
    notes: list[str] = field(default_factory=list)  # what opening it did, to print

    def point_sources(self, tp: int) -> list[EnergySource]:
        """CUDA's first ``tp`` GPUs; RAPL's packages, which vLLM's CPU engine runs on."""
        return list(self.gpus[:tp]) if self.gpus else list(self.sources)

    def close(self) -> None:
        """Put clocks back and shut NVML down."""
        try:
            if self.guard is not None:
                self.guard.restore()
        finally:
            # Even when a reset failed: the record stays in the state file for
            # `greenllm reset-clocks`, and handlers must not retry on a closed NVML.
            if self.guard is not None:
                self.guard.uninstall()
            if self.nvml is not None:
                self.nvml.close()
                self.nvml = None


def cpu_capabilities(kind: str) -> Capabilities:
    """vLLM's CPU backend: one core per tensor-parallel rank at least, no clock control."""
    return Capabilities(kind, "CPU", len(os.sched_getaffinity(0)), "CPU cores", ())


def gpu_capabilities(kind: str, gpus: Sequence[Gpu]) -> Capabilities:
    """What a set of GPUs can do together: only clocks and power limits every one of them
    accepts can be swept."""
    common = set(gpus[0].info.supported_clocks_mhz)
    for gpu in gpus[1:]:
        common &= set(gpu.info.supported_clocks_mhz)
    low_mw = max(gpu.info.power_limit_range_mw[0] for gpu in gpus)
    high_mw = min(gpu.info.power_limit_range_mw[1] for gpu in gpus)
    return Capabilities(kind, gpus[0].info.name, len(gpus), "GPUs", tuple(sorted(common)), (low_mw, high_mw))


def _gpu_backend(kind: str, session: NvmlSession, state_path: Path) -> DeviceBackend:
    gpus = session.gpus
    if not gpus:
        session.close()
        raise DeviceUnavailable(
            "NVML answers but CUDA_VISIBLE_DEVICES leaves no GPU visible; check the variable",
            hint=Hint("device", "none", " or use {flag}"),
        )
    caps = gpu_capabilities(kind, gpus)
    guard = ClockGuard(session, state_path)
    try:
        notes = guard.recover_stale()
    except DeviceError:
        session.close()
        raise
    return DeviceBackend(kind, caps, list(gpus), list(gpus), session, guard, session.driver_version, notes)


def _env_number(name: str, default: str, kind: type[int] | type[float]) -> float:
    text = os.environ.get(name, default)
    try:
        value = kind(text)
    except ValueError:
        value = -1
    if not 0 < value < math.inf:
        raise DeviceUnavailable(f"${name}={text!r} must be a number > 0")
    return value


def fake_nvml_from_env() -> FakeNvml:
    """The fake NVML of the fake device; its load follows this machine's CPU use."""
    load_pynvml()  # the fake raises pynvml's own errors: without it, say what to install
    from pytest_greenllm.devices.fake_nvml import FakeNvml, cpu_busy_fraction

    state = os.environ.get(FAKE_STATE_ENV)
    if os.environ.get(FAKE_LOAD_ENV):
        constant = _env_number(FAKE_LOAD_ENV, "1", float)
        if constant > 1:
            raise DeviceUnavailable(f"${FAKE_LOAD_ENV}={constant:g} must be at most 1")
        load: Callable[[int], float] = lambda index: constant  # noqa: E731
    else:
        busy = cpu_busy_fraction()
        load = lambda index: busy()  # noqa: E731
    fake = FakeNvml(
        gpus=int(_env_number(FAKE_GPUS_ENV, "8", int)),
        load=load,
        power_scale=_env_number(FAKE_POWER_SCALE_ENV, "1", float),
        counter_period_s=_env_number(FAKE_COUNTER_PERIOD_ENV, "0.1", float),
        state_path=Path(state) if state else None,
    )
    for entry in filter(None, (e.strip() for e in os.environ.get(FAKE_FAIL_ENV, "").split(","))):
        function, _, code = (part.strip() for part in entry.partition("="))
        if not code.isdigit() or not function.startswith("nvml") or not hasattr(fake, function):
            raise DeviceUnavailable(
                f"${FAKE_FAIL_ENV}: {entry!r} is not FUNCTION=CODE with a function the fake "
                "NVML has, e.g. nvmlDeviceSetGpuLockedClocks=4"
            )
        fake.fail(function, int(code))
    return fake


def open_backend(kind: str, state_path: Path | None = None, rapl_root: Path = POWERCAP) -> DeviceBackend:
    """Open ``kind`` (auto, nvml, rapl, fake, none); DeviceUnavailable says why not."""
    state_path = state_path or default_state_path()
    if kind == "fake":
        return _gpu_backend("fake", NvmlSession(fake_nvml_from_env()), state_path)
    if kind == "none":
        return DeviceBackend("none", cpu_capabilities("none"))
    errors: list[str] = []
    if kind in ("nvml", "auto"):
        try:
            return _gpu_backend("nvml", NvmlSession(load_pynvml()), state_path)
        except DeviceError as e:
            if kind == "nvml":
                raise DeviceUnavailable(e.message, e.code, e.hint) from e
            errors.append(f"NVML: {e}")
    if kind in ("rapl", "auto"):
        try:
            zones = find_zones(rapl_root)
            return DeviceBackend("rapl", cpu_capabilities("rapl"), sources=list(zones))
        except DeviceError as e:
            if kind == "rapl":
                raise DeviceUnavailable(e.message, e.code, e.hint) from e
            errors.append(f"RAPL: {e}")
    return DeviceBackend(
        "none", cpu_capabilities("none"), notes=[f"auto found no meter ({'; '.join(errors)})"]
    )
