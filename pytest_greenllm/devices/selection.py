"""A device seen through the part of it a user named: the GPUs a running server uses.

Measuring a server greenllm did not start (``--greenllm-endpoint``), only the user knows
which GPUs it runs on. Through this view, only those are metered, and only their clocks and
power limits change; the session, the meter and the guard need not know.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from pytest_greenllm.devices.backend import gpu_capabilities
from pytest_greenllm.devices.base import Backend, Capabilities, ClockControl, EnergySource, Gpu


class SelectionError(ValueError):
    """Devices named that the backend does not have; the message says which exist."""


@dataclass
class SelectedBackend:
    """A :class:`~pytest_greenllm.devices.base.Backend` limited to some of another's
    devices; closing it closes the whole backend."""

    inner: Backend
    gpus: Sequence[Gpu]
    sources: Sequence[EnergySource]
    capabilities: Capabilities

    @property
    def kind(self) -> str:
        return self.inner.kind

    @property
    def guard(self) -> ClockControl | None:
        return self.inner.guard if self.gpus else None

    @property
    def driver_version(self) -> str | None:
        return self.inner.driver_version

    @property
    def notes(self) -> list[str]:
        return self.inner.notes

    def point_sources(self, tp: int) -> Sequence[EnergySource]:
        return self.sources

    def close(self) -> None:
        self.inner.close()


def select(backend: Backend, which: tuple[int, ...] | Literal["all"]) -> SelectedBackend:
    """``backend`` limited to the GPUs at CUDA indices ``which`` (every source for 'all';
    none for ()). One engine spans them, so TP is their count."""
    if which == "all":
        gpus, sources = list(backend.gpus), list(backend.sources)
    else:
        visible = len(backend.gpus)
        missing = [index for index in which if index >= visible]
        if missing:
            have = f"GPUs 0-{visible - 1} are" if visible > 1 else ("GPU 0 is" if visible else "no GPU is")
            raise SelectionError(
                f"no GPU {', '.join(map(str, missing))} here: {have} visible (device={backend.kind})"
            )
        gpus = [backend.gpus[index] for index in which]
        sources = list(gpus)
    caps = backend.capabilities
    if gpus:
        caps = gpu_capabilities(caps.kind, gpus)
    else:
        # Nothing to lock or limit: the server's own devices are out of reach.
        caps = replace(caps, parallel_units=1, clocks_mhz=(), power_limit_range_mw=None)
    return SelectedBackend(backend, gpus, sources, caps)
