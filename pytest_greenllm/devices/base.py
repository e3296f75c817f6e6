"""What the knob matrix asks of a device before any test runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

DEVICE_KINDS = ("auto", "nvml", "rapl", "fake", "none")


@dataclass(frozen=True)
class Capabilities:
    """The parallel units an engine may use and the clocks that can be locked."""

    kind: str  # the resolved device kind: nvml, rapl, fake or none
    accelerator: str  # e.g. 'NVIDIA H100 80GB HBM3' or 'CPU'
    parallel_units: int  # GPUs (or CPU cores for vLLM's CPU backend) one engine may span
    unit_name: str  # 'GPUs' or 'CPU cores', for messages
    clocks_mhz: tuple[int, ...]  # lockable SM clocks, ascending; empty: no clock control. Units: MHz.

    @property
    def can_lock_clocks(self) -> bool:
        return bool(self.clocks_mhz)


@dataclass(frozen=True)
class Reading:
    """One sample of a device; None where the device does not offer the value."""

    power_mw: float | None  # Units: mW.
    sm_clock_mhz: int | None = None  # Units: MHz.
    temperature_c: int | None = None  # Units: °C.
    event_reasons: int | None = None  # NVML's clock-event bitmask


class EnergySource(Protocol):
    """Anything the energy meter can read: a GPU, a RAPL zone."""

    @property
    def label(self) -> str:
        """A short name for reports: gpu0, cpu-package-0."""

    def energy_mj(self) -> float | None:
        """A monotonic energy counter, or None without one. Units: mJ."""

    def read(self) -> Reading:
        """Sample power and what else the device reports; raises DeviceError on failure."""


def nearest_clock(supported_mhz: Sequence[int], mhz: int) -> int:
    """The supported clock nearest ``mhz``, the lower one on a tie. Units: MHz."""
    return min(supported_mhz, key=lambda c: (abs(c - mhz), c))
