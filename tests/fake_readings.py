"""Repeats drawn from the fake NVML's noisy power sensor, for the gate's error-rate tests and
``benchmarks/gate_power.py``: each repeat's figure is one reading of a half-loaded fake H100.

One reading a repeat keeps the sensor's full relative noise in each repeat: a mean of N
readings would shrink it to noise/sqrt(N) and test a quieter world than the one asked for.
"""

from __future__ import annotations

import dataclasses

from pytest_greenllm.devices.fake_nvml import FakeNvml
from pytest_greenllm.record import Summary, summarise

WINDOW_S, TOKENS = 2.0, 400  # one repeat's window and output tokens


class ManualClock:
    """Simulated time: the fake's readings need no sleeping."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def power_readings(count: int, noise: float, seed: int, power_scale: float = 1.0) -> list[float]:
    """``count`` readings, in W, one a window apart, of a fake H100 at half load that draws
    ``power_scale`` times its power."""
    clock = ManualClock()
    fake = FakeNvml(
        gpus=1, clock=clock, noise=noise, seed=seed, power_scale=power_scale, energy_counter=False
    )
    fake.nvmlInit()
    fake.set_load(0.5)
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    out = []
    for _ in range(count):
        clock.now_s += WINDOW_S
        out.append(fake.nvmlDeviceGetPowerUsage(handle) / 1000)
    return out


def j_per_token(watts: list[float]) -> list[float]:
    """J/output token of repeats whose window drew ``watts``."""
    return [w * WINDOW_S / TOKENS for w in watts]


def gated_repeats(
    count: int, noise: float, seed: int, power_scale: float = 1.0
) -> tuple[list[float], list[float]]:
    """(J/output token, average W) of ``count`` repeats: independent readings, both scaled by
    ``power_scale``, as when the GPU draws more for the same work."""
    readings = power_readings(2 * count, noise, seed, power_scale)
    return j_per_token(readings[:count]), readings[count:]


def gated_summary(per_token: list[float], watts: list[float]) -> Summary:
    """A summary holding only the per-repeat lists the gate tests."""
    return dataclasses.replace(
        summarise(()), j_per_output_token_repeats=tuple(per_token), avg_power_w_repeats=tuple(watts)
    )
