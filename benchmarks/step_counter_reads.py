"""What reading the energy counters after every engine step costs the run.

The offline driver tells a ``phases.CounterLog`` of every step; the log reads the counters
of the point's GPUs there, on the driver's thread. This runs vLLM's real engine (the CPU
build, the embedded model) on one workload, alternately without the log and with it over
the fake NVML's GPUs, for several rounds in one process, and prints the median ratio of
output throughput with the reads to without: the target is at least 0.99. It prints too
what one step's reads cost on their own, for 1 and 8 fake GPUs, and the ratio that cost
bounds: a step's time over that time plus the reads', free of the machine's noise (on a
shared 2-core machine the measured ratio swings by tens of percent between rounds: run it
on a quiet one).

    python benchmarks/step_counter_reads.py [--rounds 15] [--requests 32] [--gpus 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from tabulate import tabulate

from pytest_greenllm.devices.fake_nvml import FakeNvml
from pytest_greenllm.devices.nvml import NvmlSession
from pytest_greenllm.driver import EngineSpec, Step
from pytest_greenllm.engine import build_llm, run_requests, shutdown_llm
from pytest_greenllm.knobs import EngineConfig
from pytest_greenllm.metrics import run_metrics
from pytest_greenllm.model_info import resolve_model
from pytest_greenllm.phases import CounterLog
from pytest_greenllm.workloads import Workload, build_requests

TARGET = 0.99
BATCH = 8


def read_cost_us(gpus: int, reads: int = 2000) -> float:
    """Microseconds one step's counter reads take over ``gpus`` fake GPUs."""
    session = NvmlSession(FakeNvml(gpus=gpus))
    log = CounterLog(session.gpus)
    start = time.perf_counter()
    for i in range(reads):
        log.step(Step(float(i), 0, 8))
    cost = (time.perf_counter() - start) / reads * 1e6
    session.close()
    return cost


def main() -> int:
    parser = argparse.ArgumentParser(description="Cost of per-step energy counter reads.")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--gpus", type=int, default=1, help="fake GPUs read at every step")
    args = parser.parse_args()
    costs = [(gpus, read_cost_us(gpus)) for gpus in (1, 8)]
    print(tabulate(costs, headers=("fake GPUs", "µs per step's reads"), floatfmt=".1f"))
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    spec = EngineSpec(EngineConfig("embedded", 1, BATCH), resolve_model("embedded"))
    llm = build_llm(spec)
    session = NvmlSession(FakeNvml(gpus=args.gpus))
    requests = build_requests(Workload("bench", 64, 64), args.requests, seed=0)
    arrivals = [0.0] * len(requests)
    try:
        run_requests(llm, requests, arrivals, "warm")
        ratios, steps, step_s = [], 0, []
        for index in range(args.rounds):
            # Interleaved, each first in every other round, so that drift of a noisy machine
            # and whatever the run before leaves behind hit both alike.
            log = CounterLog(session.gpus)
            log.start()
            runs = {}
            for name in ("plain", "log") if index % 2 else ("log", "plain"):
                observer = log if name == "log" else None
                records = run_requests(llm, requests, arrivals, f"{name}-{index}", observer=observer)
                runs[name] = run_metrics(records, BATCH)
            plain, logged = runs["plain"], runs["log"]
            steps = len(log.steps)
            step_s.append(plain.duration_s / steps)
            ratios.append(logged.output_throughput / plain.output_throughput)
    finally:
        shutdown_llm(llm)
        session.close()
    median = statistics.median(ratios)
    print(
        tabulate(
            [(args.gpus, steps, median, min(ratios), max(ratios), len(ratios))],
            headers=("fake GPUs", "steps/run", "median ratio", "min", "max", "rounds"),
            floatfmt=".4f",
        )
    )
    verdict = "meets" if median >= TARGET else "MISSES"
    print(f"output throughput with per-step counter reads / without: {median:.4f} ({verdict} >= {TARGET})")
    cost_s = dict(costs).get(args.gpus, read_cost_us(args.gpus)) / 1e6
    typical = statistics.median(step_s)
    bound = typical / (typical + cost_s)
    print(
        f"bound from the reads' cost: {typical * 1000:.2f} ms per step, {cost_s * 1e6:.1f} µs of reads: "
        f"{bound:.4f} ({'meets' if bound >= TARGET else 'MISSES'} >= {TARGET})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
