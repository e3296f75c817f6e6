"""What the knob matrix asks of a device before any test runs."""

from __future__ import annotations

from dataclasses import dataclass

DEVICE_KINDS = ("auto", "nvml", "rapl", "fake", "none")


class DeviceUnavailable(Exception):
    """The device kind asked for cannot be used here; the message says what to do."""


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
