"""The driver seam: what builds an engine for a configuration and runs a point's requests.

The runner knows only this protocol. The offline vLLM engine (``engine.VllmOfflineDriver``)
is the first implementation; another (a served vLLM, any OpenAI-compatible endpoint, a test
fake) arrives through the ``pytest_greenllm_make_driver`` hook.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from pytest_greenllm.knobs import EngineConfig
from pytest_greenllm.metrics import RequestRecord
from pytest_greenllm.model_info import ModelInfo
from pytest_greenllm.workloads import RequestSpec


class EngineFailed(Exception):
    """The engine could not be built or failed during a run; the message is the engine's."""


@dataclass(frozen=True)
class Step:
    """One engine step of a run, as the driver saw it return. ``end_s`` is the driver's
    monotonic clock, the one its token stamps use. A step that scheduled no tokens is the
    engine waiting (for the next arrival)."""

    end_s: float  # Units: s.
    prefill_tokens: int  # prompt tokens the step computed (chunks of a chunked prefill too)
    decode_tokens: int  # output tokens the step generated for requests already past prefill
    tokens_from: str = "outputs"  # 'scheduler': the engine's own count; 'outputs': the driver's


class StepObserver(Protocol):
    """Told of every engine step of a run, as it returns; the energy meter reads its
    counters there (``phases.CounterLog``). Called on the driver's thread, so it must be
    quick."""

    def step(self, step: Step) -> None: ...


@dataclass(frozen=True)
class EngineSpec:
    """Everything an engine is built from."""

    config: EngineConfig
    model: ModelInfo
    engine_args: tuple[tuple[str, Any], ...] = ()  # passed through to the engine as they are
    max_model_len: int | None = None


class Driver(Protocol):
    """Builds, reuses and closes engines, and runs requests on them.

    One engine is live at a time: asking for another spec closes the live one first. Every
    failure of the engine is raised as :class:`EngineFailed` with the engine's message.
    """

    def engine(self, spec: EngineSpec) -> object:
        """The engine for ``spec``: the live one, or a new one. What the ``greenllm_engine``
        fixture hands to tests."""
        ...

    def warm_up(self, spec: EngineSpec, tag: str) -> None:
        """A few unmeasured requests, so the first measured one pays no start-up cost."""
        ...

    def run(
        self,
        spec: EngineSpec,
        requests: Sequence[RequestSpec],
        arrivals_s: Sequence[float],
        tag: str,
        observer: StepObserver | None = None,
    ) -> list[RequestRecord]:
        """Send ``requests`` at their arrival offsets (seconds from the start) to the engine
        of ``spec`` and stamp every output token; outputs have the lengths the requests force.
        ``tag`` keeps request ids unique across runs. ``observer`` hears of every step, with
        the work it scheduled, as soon as it returns."""
        ...

    def close(self) -> None:
        """Shut the live engine down, if any. Idempotent; the driver stays usable."""
        ...

    def summary_lines(self, planned_configs: int) -> list[str]:
        """What the terminal summary says of the engines: builds against the
        ``planned_configs`` engine configurations, memory returned after each shutdown."""
        ...


@runtime_checkable
class ServesMetrics(Protocol):
    """A driver whose engine exports Prometheus metrics (a served vLLM): the runner scrapes
    them during each measured window (``scrape.Scraper``)."""

    def metrics_url(self, spec: EngineSpec) -> str | None:
        """The live engine's ``/metrics`` URL for ``spec``; None where it has none."""
        ...
