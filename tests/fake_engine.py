"""A stand-in for ``vllm.LLM`` for plugin-level tests: a real engine takes ~45 s to build.

It speaks the part of vLLM's engine API that ``pytest_greenllm.engine.run_requests`` drives
(``llm_engine.add_request``, ``step``, ``has_unfinished_requests``, DELTA outputs, the step
details each step's outputs carry through ``engine_core.get_output``) and the part
``shutdown_llm`` calls (``llm_engine.engine_core.shutdown``). Every running request
gets one new token per step; at most ``max_num_seqs`` run at once, the rest wait in order.

Runs of pytest made by the tests load it through :func:`conftest_source`, which puts this
directory on ``sys.path`` (it works for in-process and subprocess runs alike) and supplies
the driver through the plugin's ``pytest_greenllm_make_driver`` hook. The step time comes
from the environment so that a test can slow one run down without rewriting the conftest.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_greenllm.engine import EngineCache, VllmOfflineDriver

# Seconds per engine step: timings must be non-zero, and a sweep must be slow enough to kill.
STEP_ENV = "GREENLLM_TEST_FAKE_STEP_S"
DEFAULT_STEP_S = 0.003


@dataclass(frozen=True)
class CompletionOutput:
    token_ids: list[int]  # new tokens of this step only (RequestOutputKind.DELTA)


@dataclass(frozen=True)
class RequestOutput:
    request_id: str
    outputs: list[CompletionOutput]
    finished: bool


@dataclass
class _Request:
    request_id: str
    prompt_len: int
    max_tokens: int
    generated: int = 0


@dataclass(frozen=True)
class IterationDetails:
    """What vLLM's engine core reports of a step (``SchedulerIterationDetails``)."""

    num_ctx_tokens: int
    num_generation_tokens: int
    is_dummy: bool = False


@dataclass(frozen=True)
class SchedulerStats:
    iteration_details: IterationDetails


@dataclass(frozen=True)
class EngineCoreOutputs:
    outputs: list[RequestOutput]
    scheduler_stats: SchedulerStats


@dataclass
class FakeEngineCore:
    """The engine's client: ``step`` gets each step's outputs through ``get_output``, as
    vLLM's ``LLMEngine.step`` does, so the plugin's reading of step details is exercised."""

    produce: Callable[[], EngineCoreOutputs] | None = None
    shutdowns: int = 0

    def get_output(self) -> EngineCoreOutputs:
        assert self.produce is not None
        return self.produce()

    def shutdown(self) -> None:
        self.shutdowns += 1


@dataclass
class FakeEngine:
    """The ``llm_engine`` of :class:`FakeLLM`."""

    max_num_seqs: int
    step_s: float = DEFAULT_STEP_S
    engine_core: FakeEngineCore = field(default_factory=FakeEngineCore)
    steps: int = 0
    _waiting: deque[_Request] = field(default_factory=deque)
    _running: list[_Request] = field(default_factory=list)

    def add_request(self, request_id: str, prompt: Any, params: Any) -> None:
        ids = list(prompt["prompt_token_ids"])
        if not ids or params.max_tokens < 1:
            raise ValueError(f"{request_id}: empty prompt or max_tokens < 1")
        self._waiting.append(_Request(request_id, len(ids), params.max_tokens))

    def __post_init__(self) -> None:
        self.engine_core.produce = self._core_step

    def has_unfinished_requests(self) -> bool:
        return bool(self._waiting or self._running)

    def step(self) -> list[RequestOutput]:
        return self.engine_core.get_output().outputs

    def _core_step(self) -> EngineCoreOutputs:
        while self._waiting and len(self._running) < self.max_num_seqs:
            self._running.append(self._waiting.popleft())
        time.sleep(self.step_s)
        self.steps += 1
        outputs = []
        prefill = decode = 0
        for request in self._running:
            # A request's first step computes its whole prompt (no chunking) and samples its
            # first token; every later step decodes one token.
            if request.generated == 0:
                prefill += request.prompt_len
            else:
                decode += 1
            # Token ids only need to be countable; make them distinct per position anyway.
            token = request.prompt_len + request.generated
            request.generated += 1
            finished = request.generated >= request.max_tokens
            outputs.append(RequestOutput(request.request_id, [CompletionOutput([token])], finished))
        self._running = [r for r in self._running if r.generated < r.max_tokens]
        return EngineCoreOutputs(outputs, SchedulerStats(IterationDetails(prefill, decode)))


@dataclass
class FakeLLM:
    """What ``vllm.LLM(...)`` returns, as far as the plugin uses it."""

    llm_engine: FakeEngine


def build_fake(spec: Any) -> FakeLLM:
    """The engine cache's ``build``: a fake sized like the spec's engine configuration."""
    step_s = float(os.environ.get(STEP_ENV, DEFAULT_STEP_S))
    return FakeLLM(FakeEngine(spec.config.max_num_seqs, step_s))


def shutdown_fake(llm: Any) -> None:
    llm.llm_engine.engine_core.shutdown()


def fake_driver() -> VllmOfflineDriver:
    """The offline driver, building fakes instead of vLLM engines."""
    return VllmOfflineDriver(EngineCache(build=build_fake, shutdown=shutdown_fake))


def conftest_source() -> str:
    """A conftest for a pytester directory that supplies the fake through the plugin's
    ``pytest_greenllm_make_driver`` hook."""
    return (
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
        "import fake_engine\n"
        "\n"
        "def pytest_greenllm_make_driver(config, settings):\n"
        "    return fake_engine.fake_driver()\n"
    )


# The plugin on, running only the test files a test writes: the built-in sweep would add
# its own items to every count.
OWN_TESTS = ("--greenllm", "--greenllm-builtin-sweep=off")


def sweep_knobs(min_window_s: float, batch: int, workloads: str) -> tuple[str, ...]:
    """The options of a quick sweep of the test's own tests on the fake device: tp1, locked at
    1410 MHz, no cool-down."""
    return (
        *OWN_TESTS,
        "--greenllm-device=fake",
        "--greenllm-cooldown=0",
        f"--greenllm-min-window={min_window_s:g}",
        "--greenllm-tp=1",
        f"--greenllm-batch={batch}",
        f"--greenllm-workloads={workloads}",
        "--greenllm-freqs=1410",
        # No p99 SLO by default: requests=auto would run each point's requests until 299 had
        # (docs/slo.md); the tests of SLO verdicts give their own.
        "--greenllm-slo=ttft_p99=none,tbt_p99=none",
    )
