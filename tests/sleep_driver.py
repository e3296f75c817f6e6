"""A timing-realistic fake driver for parallel sweeps: its engine builds and its engine
steps are sleeps, so a point lasts as long as a real engine's would while it leaves the
CPU free, and no worker imports vLLM (seconds of CPU each, which on a small machine would
measure the imports rather than the scheduling). Its power is the fake device's.

A step gives one token to each of at most ``max_num_seqs`` running requests, admitted in
arrival order; a request's first step is its prefill.

Runs of pytest load it through :func:`conftest_source` (``pytest_greenllm_make_driver``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pytest_greenllm.driver import EngineSpec, Step, StepObserver
from pytest_greenllm.knobs import count_of
from pytest_greenllm.metrics import RequestRecord
from pytest_greenllm.workloads import RequestSpec

STEP_ENV = "GREENLLM_TEST_SLEEP_STEP_S"  # seconds per engine step
BUILD_ENV = "GREENLLM_TEST_SLEEP_BUILD_S"  # seconds per engine build


@dataclass
class SleepDriver:
    """A :class:`~pytest_greenllm.driver.Driver` whose engine is time passing."""

    step_s: float = 0.01
    build_s: float = 0.0
    builds: int = 0
    _live: EngineSpec | None = field(default=None, repr=False)

    def engine(self, spec: EngineSpec) -> EngineSpec:
        if spec != self._live:
            time.sleep(self.build_s)
            self.builds += 1
            self._live = spec
        return spec

    def warm_up(self, spec: EngineSpec, tag: str) -> None:
        self.engine(spec)

    def run(
        self,
        spec: EngineSpec,
        requests: Sequence[RequestSpec],
        arrivals_s: Sequence[float],
        tag: str,
        observer: StepObserver | None = None,
    ) -> list[RequestRecord]:
        self.engine(spec)
        start = time.monotonic()
        sent = [start + a for a in arrivals_s]
        tokens: list[list[float]] = [[] for _ in requests]
        waiting = list(range(len(requests)))
        running: list[int] = []
        while waiting or running:
            now = time.monotonic()
            while waiting and len(running) < spec.config.max_num_seqs and sent[waiting[0]] <= now:
                running.append(waiting.pop(0))
            if not running:
                time.sleep(max(0.0, sent[waiting[0]] - now))
                continue
            time.sleep(self.step_s)
            end = time.monotonic()
            prefill = sum(len(requests[i].prompt_token_ids) for i in running if not tokens[i])
            decode = sum(1 for i in running if tokens[i])
            for i in running:
                tokens[i].append(end)
            running = [i for i in running if len(tokens[i]) < requests[i].output_tokens]
            if observer is not None:
                observer.step(Step(end, prefill, decode, "scheduler"))
        return [
            RequestRecord(sent[i], tuple(tokens[i]), len(requests[i].prompt_token_ids))
            for i in range(len(requests))
        ]

    def close(self) -> None:
        self._live = None

    def summary_lines(self, planned_configs: int) -> list[str]:
        return [f"{count_of(self.builds, 'fake engine build')} ({planned_configs} planned)"]


def from_env() -> SleepDriver:
    return SleepDriver(float(os.environ.get(STEP_ENV, "0.01")), float(os.environ.get(BUILD_ENV, "0")))


def conftest_source() -> str:
    """A conftest that supplies the sleep driver, and runs it on the fake device's GPUs
    (vLLM's CPU build, if installed, does not bound its TP by this machine's cores)."""
    return (
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
        "import sleep_driver\n"
        "import pytest_greenllm.sweep\n"
        "pytest_greenllm.sweep.cpu_build_installed = lambda: False\n"
        "\n"
        "def pytest_greenllm_make_driver(config, settings):\n"
        "    return sleep_driver.from_env()\n"
    )
