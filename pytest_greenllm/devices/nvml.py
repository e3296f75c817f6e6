"""NVIDIA GPUs through NVML (nvidia-ml-py's ``pynvml``), or through the fake that mimics it.

Every call goes through :func:`nvml_errors`, so callers see our small error hierarchy.
Units are converted here, once: names end in their unit and never change it afterwards.
"""

from __future__ import annotations

import os
from typing import Any

from pytest_greenllm.devices.base import AVERAGE, INSTANT, GpuInfo, Reading
from pytest_greenllm.devices.errors import DeviceError, DriverUnavailable, nvml_errors


class NvmlGpu:
    """One GPU. Readers return None where the GPU does not offer the reading."""

    def __init__(self, nvml: Any, handle: Any, index: int) -> None:
        self._nvml = nvml
        self._handle = handle
        self.index = index
        self.info = self._read_info()
        self.power_kind = INSTANT if self._has_instant_power() else AVERAGE

    def _call(self, what: str, function: str, *args: Any) -> Any:
        with nvml_errors(self._nvml, f"GPU {self.index}: {what}"):
            return getattr(self._nvml, function)(self._handle, *args)

    def _read_info(self) -> GpuInfo:
        name = self._call("name", "nvmlDeviceGetName")
        uuid = self._call("UUID", "nvmlDeviceGetUUID")
        memory_mhz = self._call("memory clock", "nvmlDeviceGetClockInfo", self._nvml.NVML_CLOCK_MEM)
        try:
            clocks = self._call("supported clocks", "nvmlDeviceGetSupportedGraphicsClocks", memory_mhz)
        except DeviceError:
            clocks = []
        limit = self._call("power limit", "nvmlDeviceGetPowerManagementLimit")
        try:
            low, high = self._call("power limit range", "nvmlDeviceGetPowerManagementLimitConstraints")
        except DeviceError:
            low = high = limit
        return GpuInfo(self.index, str(name), str(uuid), tuple(sorted(set(clocks))), limit, (low, high))

    @property
    def label(self) -> str:
        return f"gpu{self.index}"

    def energy_mj(self) -> float | None:
        """The total-energy counter since the driver loaded; None before Volta. Units: mJ."""
        try:
            return float(self._call("energy counter", "nvmlDeviceGetTotalEnergyConsumption"))
        except DeviceError:
            return None

    def _has_instant_power(self) -> bool:
        try:
            power = self.instant_power_mw()
        except DeviceError:
            return False
        # A GPU at rest draws tens of watts: a zero is a field the driver does not fill.
        return power is not None and power > 0

    def power(self) -> tuple[float, str]:
        """Board power now where the GPU reports it (NVML_FI_DEV_POWER_INSTANT), else
        nvmlDeviceGetPowerUsage, a 1 s moving average on Ampere (but A100) and newer: the
        timeline of a window must not lag the load by a second. Returns (mW, INSTANT or
        AVERAGE)."""
        if self.power_kind == INSTANT:
            power = self.instant_power_mw()
            if power is not None:
                return power, INSTANT
        return self.average_power_mw(), AVERAGE

    def average_power_mw(self) -> float:
        """nvmlDeviceGetPowerUsage: a 1 s moving average on Hopper. Units: mW."""
        return float(self._call("power", "nvmlDeviceGetPowerUsage"))

    def read(self) -> Reading:
        """Board power (see :meth:`power`), SM clock, temperature, clock-event reasons."""
        power_mw, kind = self.power()
        return Reading(
            power_mw=power_mw,
            sm_clock_mhz=int(self._call("SM clock", "nvmlDeviceGetClockInfo", self._nvml.NVML_CLOCK_SM)),
            temperature_c=int(
                self._call("temperature", "nvmlDeviceGetTemperature", self._nvml.NVML_TEMPERATURE_GPU)
            ),
            event_reasons=int(self._call("clock event reasons", "nvmlDeviceGetCurrentClocksEventReasons")),
            power_kind=kind,
        )

    def persistence_mode(self) -> bool:
        """Whether persistence mode is on (the driver stays loaded between processes)."""
        mode = int(self._call("persistence mode", "nvmlDeviceGetPersistenceMode"))
        return mode == int(self._nvml.NVML_FEATURE_ENABLED)

    def clock_changes_need_root(self) -> bool:
        """Whether NVML restricts clock changes to root, as it states it (nothing is tried)."""
        restricted = self._call(
            "API restriction",
            "nvmlDeviceGetAPIRestriction",
            self._nvml.NVML_RESTRICTED_API_SET_APPLICATION_CLOCKS,
        )
        return int(restricted) == int(self._nvml.NVML_FEATURE_ENABLED)

    def instant_power_mw(self) -> float | None:
        """Instantaneous board power (NVML_FI_DEV_POWER_INSTANT), where the GPU offers it;
        ``read`` gives the 1-second average on Hopper. Units: mW."""
        (value,) = self._call(
            "instantaneous power", "nvmlDeviceGetFieldValues", [self._nvml.NVML_FI_DEV_POWER_INSTANT]
        )
        # The call succeeds when any field was filled: each value carries its own return code.
        if value.nvmlReturn != self._nvml.NVML_SUCCESS:
            return None
        return float(value.value.uiVal)

    def power_limit_mw(self) -> int:
        """The power limit now. Units: mW."""
        return int(self._call("power limit", "nvmlDeviceGetPowerManagementLimit"))

    def lock_clocks(self, mhz: int) -> None:
        """Lock the SM clock at ``mhz`` (min = max). Needs root. Units: MHz."""
        self._call(f"lock clocks at {mhz} MHz", "nvmlDeviceSetGpuLockedClocks", mhz, mhz)

    def reset_clocks(self) -> None:
        """Give the clocks back to the driver. Needs root."""
        self._call("reset locked clocks", "nvmlDeviceResetGpuLockedClocks")

    def set_power_limit_mw(self, limit_mw: int) -> None:
        """Set the power limit. Needs root. Units: mW."""
        # Not the _v2 call: nvidia-ml-py 13.615.71 never checks its return code.
        self._call(f"set power limit {limit_mw} mW", "nvmlDeviceSetPowerManagementLimit", limit_mw)


def visible_indices(count: int, uuid_of: dict[str, int]) -> list[int]:
    """NVML indices that ``CUDA_VISIBLE_DEVICES`` leaves visible, in CUDA's order.

    NVML ignores the variable, CUDA does not: the engine sees only these GPUs, so only
    these are measured. Entries are indices or UUIDs (a prefix is enough, as for CUDA);
    CUDA stops at the first entry it cannot use, and so do we.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return list(range(count))
    chosen: list[int] = []
    for entry in (e.strip() for e in visible.split(",")):
        if entry.startswith("MIG-"):
            raise DeviceError(
                f"CUDA_VISIBLE_DEVICES names a MIG instance ({entry}); NVML measures whole "
                "GPUs, so give GPU indices or GPU UUIDs"
            )
        if entry.isdigit() and int(entry) < count:
            index = int(entry)
        else:
            matches = [i for uuid, i in uuid_of.items() if entry and uuid.startswith(entry)]
            if len(matches) != 1:
                break
            index = matches[0]
        if index in chosen:
            break
        chosen.append(index)
    return chosen


class NvmlSession:
    """NVML initialised, with the GPUs this process may use. Close it when done."""

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        with nvml_errors(nvml, "NVML init"):
            nvml.nvmlInit()
        try:
            with nvml_errors(nvml, "NVML"):
                count = nvml.nvmlDeviceGetCount()
                handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
                uuids = {str(nvml.nvmlDeviceGetUUID(h)): i for i, h in enumerate(handles)}
                self.driver_version = str(nvml.nvmlSystemGetDriverVersion())
                self.nvml_version = str(nvml.nvmlSystemGetNVMLVersion())
            self.gpus = [NvmlGpu(nvml, handles[i], i) for i in visible_indices(count, uuids)]
        except BaseException:
            nvml.nvmlShutdown()
            raise

    def by_uuid(self, uuid: str) -> NvmlGpu:
        """A GPU by UUID, whether or not it is visible to CUDA here."""
        with nvml_errors(self._nvml, f"GPU {uuid}"):
            handle = self._nvml.nvmlDeviceGetHandleByUUID(uuid)
            index = self._nvml.nvmlDeviceGetIndex(handle)
        return NvmlGpu(self._nvml, handle, index)

    def close(self) -> None:
        with nvml_errors(self._nvml, "NVML shutdown"):
            self._nvml.nvmlShutdown()


def load_pynvml() -> Any:
    """The real ``pynvml`` module, imported only when NVML is asked for."""
    try:
        import pynvml
    except ImportError as e:
        raise DriverUnavailable("nvidia-ml-py is not installed; pip install 'pytest-greenllm[gpu]'") from e
    return pynvml
