"""Resolve ``--greenllm-device`` into the capabilities the knob matrix is checked against."""

from __future__ import annotations

import os

from pytest_greenllm.devices.base import Capabilities, DeviceUnavailable
from pytest_greenllm.devices.fake import fake_capabilities


def cpu_capabilities() -> Capabilities:
    """vLLM's CPU backend: one core per tensor-parallel rank at least, no clock control."""
    return Capabilities("none", "CPU", len(os.sched_getaffinity(0)), "CPU cores", ())


def probe_capabilities(kind: str) -> Capabilities:
    """Capabilities for a device kind; auto falls back to the CPU when no meter answers."""
    if kind == "fake":
        return fake_capabilities()
    if kind in ("none", "auto"):
        return cpu_capabilities()
    raise DeviceUnavailable(
        "this device kind is not available in this version of pytest-greenllm; "
        "use --greenllm-device=fake to try the sweep or none to run without a meter"
    )
