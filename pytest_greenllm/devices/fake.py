"""The fake device: a simulated 8-GPU H100 node, used only when asked for (device=fake)."""

from __future__ import annotations

import os

from pytest_greenllm.devices.base import Capabilities

FAKE_GPU_NAME = "NVIDIA H100 80GB HBM3 (fake)"
FAKE_GPU_COUNT = 8
# An H100 SXM lists its graphics clocks in 15 MHz steps up to 1980 MHz.
FAKE_CLOCKS_MHZ: tuple[int, ...] = tuple(range(210, 1981, 15))


def visible_fake_gpus() -> int:
    """How many fake GPUs ``CUDA_VISIBLE_DEVICES`` leaves visible, as CUDA would count them."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return FAKE_GPU_COUNT
    count = 0
    # CUDA stops at the first entry it cannot use, so '0,1,9,2' shows two GPUs.
    for entry in visible.split(","):
        entry = entry.strip()
        if not entry.isdigit() or int(entry) >= FAKE_GPU_COUNT:
            break
        count += 1
    return count


def fake_capabilities() -> Capabilities:
    """Capabilities of the fake node."""
    return Capabilities("fake", FAKE_GPU_NAME, visible_fake_gpus(), "GPUs", FAKE_CLOCKS_MHZ)
