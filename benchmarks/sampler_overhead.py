"""How much the energy meter's sampling thread slows the process it runs in.

A CPU-bound pure-Python loop runs for a fixed time with no meter, with the sampler at
10 Hz and at 100 Hz, over the fake NVML with 8 GPUs (each sample reads power, SM clock,
temperature and clock-event reasons of every GPU). Configurations are interleaved over
several rounds so that drift of a noisy machine hits them all alike; the figure is the
median throughput ratio against no meter, measured in one run.

    python benchmarks/sampler_overhead.py [--rounds 7] [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import statistics
import time

from tabulate import tabulate

from pytest_greenllm.devices.fake_nvml import FakeNvml
from pytest_greenllm.devices.nvml import NvmlSession
from pytest_greenllm.meter import EnergyMeter

RATES_HZ = (10.0, 100.0)
TARGET_AT_10_HZ = 0.99


def loop_rate(seconds: float) -> float:
    """Iterations per second of a CPU-bound loop, over ``seconds``."""
    deadline = time.perf_counter() + seconds
    iterations = 0
    acc = 0
    while time.perf_counter() < deadline:
        for i in range(1000):
            acc += i * i
        iterations += 1000
    return iterations / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description="Overhead of the energy meter's sampler.")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    fake = FakeNvml(gpus=8)
    fake.set_load(1.0)
    session = NvmlSession(fake)
    ratios: dict[float, list[float]] = {rate: [] for rate in RATES_HZ}
    loop_rate(0.2)  # warm-up
    for _ in range(args.rounds):
        base = loop_rate(args.seconds)
        for rate in RATES_HZ:
            meter = EnergyMeter(session.gpus, sample_hz=rate)
            with meter.window():
                measured = loop_rate(args.seconds)
            ratios[rate].append(measured / base)
    session.close()
    rows = [
        (f"{rate:g} Hz", statistics.median(r), min(r), max(r), len(r)) for rate, r in ratios.items()
    ]
    print(tabulate(rows, headers=("sampler", "median ratio", "min", "max", "rounds"), floatfmt=".4f"))
    at_10 = statistics.median(ratios[10.0])
    verdict = "meets" if at_10 >= TARGET_AT_10_HZ else "MISSES"
    print(f"throughput with the 10 Hz sampler / without: {at_10:.4f} ({verdict} >= {TARGET_AT_10_HZ})")
    return 0 if at_10 >= TARGET_AT_10_HZ else 1


if __name__ == "__main__":
    raise SystemExit(main())
