"""The device seam: what the matrix, the meter, the clock guard and the reports ask of a device.

``EnergySource`` is anything the meter reads, ``Gpu`` a source whose clocks and power limit
can be changed, and ``Backend`` an opened device kind. NVML, RAPL, the fake and none are
implemented in this package (``backend.py``); a third-party backend (DCGM, a PDU, a board
meter) arrives through the ``pytest_greenllm_make_backend`` hook.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

DEVICE_KINDS = ("auto", "nvml", "rapl", "fake", "none")


@dataclass(frozen=True)
class Capabilities:
    """The parallel units an engine may use, the clocks that can be locked and the power
    limits that can be set."""

    kind: str  # the resolved device kind: nvml, rapl, fake or none
    accelerator: str  # e.g. 'NVIDIA H100 80GB HBM3' or 'CPU'
    parallel_units: int  # GPUs (or CPU cores for vLLM's CPU backend) one engine may span
    unit_name: str  # 'GPUs' or 'CPU cores', for messages
    clocks_mhz: tuple[int, ...]  # lockable SM clocks, ascending; empty: no clock control. Units: MHz.
    # The lowest and highest limit every GPU accepts; None: no power limit control. Units: mW.
    power_limit_range_mw: tuple[int, int] | None = None

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
    power_kind: str | None = None  # INSTANT or AVERAGE (a moving average); None: unknown


# What a power reading is: the power now, or a moving average (1 s on Hopper).
INSTANT = "instant"
AVERAGE = "average"


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


@dataclass(frozen=True)
class GpuInfo:
    """What does not change while a session runs."""

    index: int  # NVML's index, which CUDA_VISIBLE_DEVICES refers to
    name: str
    uuid: str
    supported_clocks_mhz: tuple[int, ...]  # ascending, for the current memory clock. Units: MHz.
    power_limit_mw: int  # Units: mW.
    power_limit_range_mw: tuple[int, int]  # Units: mW.


class Gpu(EnergySource, Protocol):
    """A GPU: an energy source whose SM clock and power limit can be changed (as root)."""

    @property
    def index(self) -> int:
        """The index CUDA_VISIBLE_DEVICES refers to."""

    @property
    def info(self) -> GpuInfo:
        """Name, UUID, supported clocks and power limits, read when opened."""

    def power_limit_mw(self) -> int:
        """The power limit now. Units: mW."""

    def lock_clocks(self, mhz: int) -> None:
        """Lock the SM clock at ``mhz``. Units: MHz."""

    def reset_clocks(self) -> None:
        """Give the clocks back to the driver."""

    def set_power_limit_mw(self, limit_mw: int) -> None:
        """Set the power limit. Units: mW."""


class ClockControl(Protocol):
    """Changes clocks and power limits and always puts them back (``guard.ClockGuard``)."""

    def install(self) -> None:
        """Restore on SIGINT, SIGTERM and exit from now on."""

    def lock_clocks(self, gpus: Sequence[Gpu], mhz: int) -> tuple[int, list[str]]:
        """Lock ``gpus`` at the supported clock nearest ``mhz``; returns it and notes."""

    def set_power_limit(self, gpus: Sequence[Gpu], limit_mw: int) -> None:
        """Set the power limit of ``gpus``. Units: mW."""

    def restore(self, clocks_only: bool = False) -> list[str]:
        """Put back what was changed (only the clocks if asked); returns what was done."""


@runtime_checkable
class Backend(Protocol):
    """An opened device: what it can do, what it measures, what it can change."""

    @property
    def kind(self) -> str:
        """nvml, rapl, fake, none, or a plugin backend's own name; reports keep it."""

    @property
    def capabilities(self) -> Capabilities:
        """What the knob matrix is checked against."""

    @property
    def gpus(self) -> Sequence[Gpu]:
        """GPUs in CUDA's order (those CUDA_VISIBLE_DEVICES leaves visible); may be empty."""

    @property
    def sources(self) -> Sequence[EnergySource]:
        """Everything it can measure; empty: no energy meter."""

    @property
    def guard(self) -> ClockControl | None:
        """What locks clocks and power limits; None where they cannot be changed."""

    @property
    def driver_version(self) -> str | None:
        """The accelerator driver's version, for the fingerprint."""

    @property
    def notes(self) -> list[str]:
        """What opening it did, for the session header."""

    def point_sources(self, tp: int) -> Sequence[EnergySource] | None:
        """The sources an engine of ``tp`` parallel units runs on; None where that cannot be
        known (the point then measures every source and says so)."""

    def close(self) -> None:
        """Put back what was changed and release the device."""
