"""CPU energy through Linux RAPL (powercap sysfs), for CPU-only boxes.

Each package zone ``/sys/class/powercap/intel-rapl:N`` has a microjoule counter
``energy_uj`` that wraps at ``max_energy_range_uj``. RAPL has no clock knob and no power
reading: the meter derives power from counter differences.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

from pytest_greenllm.devices.base import Reading
from pytest_greenllm.devices.errors import DeviceError, NoPermission, NotSupported
from pytest_greenllm.hints import Hint

POWERCAP = Path("/sys/class/powercap")
_PACKAGE_ZONE = re.compile(r"^intel-rapl:\d+$")


class RaplZone:
    """One RAPL package zone, its counter unwrapped into a monotonic total."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = self._read_text("name")
        self.max_energy_uj = self._read_int("max_energy_range_uj")
        self._last_uj = self._read_int("energy_uj")
        self._total_uj = 0
        # Two windows' samplers may read one zone at once; an interleaved update would
        # look like a wrap and add a whole counter range.
        self._lock = threading.Lock()

    @property
    def label(self) -> str:
        return f"cpu-{self.name}"

    def _read_text(self, name: str) -> str:
        file = self.path / name
        try:
            return file.read_text().strip()
        except PermissionError as e:
            raise NoPermission(
                f"{file} is readable by root only (since Linux 5.10); run as root, or "
                "`chmod o+r` the energy_uj files",
                hint=Hint("device", "none", ", or use {flag}"),
            ) from e
        except OSError as e:
            raise DeviceError(f"{file}: {e.strerror}") from e

    def _read_int(self, name: str) -> int:
        text = self._read_text(name)
        try:
            return int(text)
        except ValueError:
            raise DeviceError(f"{self.path / name}: {text!r} is not a whole number") from None

    def energy_mj(self) -> float:
        """Energy since this zone was opened, unwrapped. Units: mJ."""
        with self._lock:
            raw = self._read_int("energy_uj")
            delta = raw - self._last_uj
            if delta < 0:
                # One wrap between two reads; reads come far more often than the counter
                # wraps (minutes at full power), so more than one cannot hide here.
                delta += self.max_energy_uj
            self._last_uj = raw
            self._total_uj += delta
            return self._total_uj / 1000

    def read(self) -> Reading:
        """RAPL reports no power of its own; the meter derives it from the counter."""
        return Reading(power_mw=None)


def find_zones(root: Path = POWERCAP) -> list[RaplZone]:
    """The readable package zones under ``root``; raises when there are none."""
    paths = sorted(
        (p for p in root.glob("intel-rapl:*") if _PACKAGE_ZONE.match(p.name)),
        key=lambda p: int(p.name.split(":")[1]),
    )
    if not paths:
        raise NotSupported(f"no RAPL package zones under {root}; this kernel or CPU has no RAPL")
    return [RaplZone(p) for p in paths]
