"""Repeats drawn from the fake NVML's noisy power sensor, for the gate's error-rate tests and
``benchmarks/gate_power.py``: each repeat's figure is one reading of a half-loaded fake H100;
runs of a point differ by a run offset (run_scales), as separate CI runs do.

One reading a repeat keeps the sensor's full relative noise in each repeat: a mean of N
readings would shrink it to noise/sqrt(N) and test a quieter world than the one asked for.
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
from collections.abc import Sequence

from pytest_greenllm.devices.fake_nvml import FakeNvml
from pytest_greenllm.knobs import KnobPoint
from pytest_greenllm.record import PointRecord, Summary, summarise
from pytest_greenllm.workloads import Workload

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


# --- run-to-run noise: offsets between runs, as separate CI runs see them ------------------------
def run_scales(runs: int, sd: float, rho: float, seed: int) -> list[float]:
    """The power scale e^o of each of ``runs`` consecutive runs: run offsets o normal with
    standard deviation ``sd`` (on the log scale: 0.015 is about 1.5%), an AR(1) series whose
    neighbours correlate by ``rho`` (0: independent runs; 0.5: a drift)."""
    rng = random.Random(seed)
    offsets = [rng.gauss(0.0, sd)]
    for _ in range(runs - 1):
        offsets.append(rho * offsets[-1] + math.sqrt(1 - rho**2) * rng.gauss(0.0, sd))
    return [math.exp(o) for o in offsets]


Side = tuple[list[float], list[float]]  # (J/output token, W) of one run's repeats of a point


def point_runs(
    count: int, noise: float, seed: int, scales: Sequence[float], change: float = 0.0
) -> list[Side]:
    """One point measured in each run of ``scales`` (gated_repeats, ``count`` repeats each):
    the last run is the head, its power also changed by ``change``."""
    last = len(scales) - 1
    return [
        gated_repeats(count, noise, seed * len(scales) + r, scale * (1 + change if r == last else 1))
        for r, scale in enumerate(scales)
    ]


def with_outlier(side: Side, factor: float) -> Side:
    """``side`` with its first repeat's energy ``factor`` times what it read (a window that
    another job on the GPU disturbed)."""
    per_token, watts = side
    return [per_token[0] * factor, *per_token[1:]], [watts[0] * factor, *watts[1:]]


def pooled_summary(runs: Sequence[Side]) -> Summary:
    """A baseline of several runs' repeats, as a history of reports pools them
    (history._pool): every run's repeats in one list, grouped by ``Summary.runs``."""
    summary = gated_summary([v for r in runs for v in r[0]], [v for r in runs for v in r[1]])
    return dataclasses.replace(summary, runs=tuple(len(r[0]) for r in runs))


def point_record(index: int, side: Side) -> PointRecord:
    """Point ``index`` (its own workload, so its own id) holding the repeats of ``side``."""
    per_token, watts = side
    summary = dataclasses.replace(
        gated_summary(per_token, watts),
        j_per_output_token=statistics.fmean(per_token),
        avg_power_w=statistics.fmean(watts),
    )
    config = KnobPoint("embedded", 1, 4, Workload(f"{16 + index}x8", 16 + index, 8), 1410)
    return PointRecord(config.id, config, 1410, (), summary)
