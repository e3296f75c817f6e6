"""The run loop tells an observer of every engine step with the work it scheduled, and a
short window runs its requests again until it is long enough."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from fake_engine import FakeEngine, FakeLLM

from pytest_greenllm.driver import EngineSpec, Step, StepObserver
from pytest_greenllm.engine import SCHEDULER, SchedulerView, run_requests
from pytest_greenllm.knobs import EngineConfig
from pytest_greenllm.metrics import RequestRecord
from pytest_greenllm.model_info import resolve_model
from pytest_greenllm.phases import update_grid
from pytest_greenllm.runner import MAX_PASSES, run_passes, unforced_lengths
from pytest_greenllm.workloads import RequestSpec

PROMPT = tuple(range(100, 110))  # 10 tokens


@dataclass
class Steps:
    seen: list[Step] = field(default_factory=list)

    def step(self, step: Step) -> None:
        self.seen.append(step)


def test_every_step_is_told_with_the_tokens_the_scheduler_gave(vllm_imported: None) -> None:
    llm = FakeLLM(FakeEngine(max_num_seqs=2, step_s=0.0))
    observer = Steps()
    requests = [RequestSpec(PROMPT, 3, 0.0)] * 3
    records = run_requests(llm, requests, [0.0] * 3, "t", observer=observer)
    assert [r.output_tokens for r in records] == [3, 3, 3]
    seen = observer.seen
    # Two requests prefill together and decode twice; then the third alone.
    assert [(s.prefill_tokens, s.decode_tokens) for s in seen] == [
        (20, 0),
        (0, 2),
        (0, 2),
        (10, 0),
        (0, 1),
        (0, 1),
    ]
    assert {s.tokens_from for s in seen} == {SCHEDULER}
    # The stamps and the step ends are the same clock values: counter reads line up.
    assert {t for r in records for t in r.token_s} == {s.end_s for s in seen}


def test_without_the_schedulers_count_tokens_come_from_the_outputs(vllm_imported: None) -> None:
    engine = FakeEngine(max_num_seqs=4, step_s=0.0)
    # An engine whose steps carry no details (vLLM without iteration details).
    engine.step = lambda: engine._core_step().outputs  # type: ignore[method-assign]
    observer = Steps()
    run_requests(FakeLLM(engine), [RequestSpec(PROMPT, 2, 0.0)] * 2, [0.0, 0.0], "t", observer=observer)
    assert [(s.prefill_tokens, s.decode_tokens, s.tokens_from) for s in observer.seen] == [
        (20, 0, "outputs"),
        (0, 2, "outputs"),
    ]


def test_a_wait_for_the_next_arrival_is_an_idle_step(vllm_imported: None) -> None:
    observer = Steps()
    llm = FakeLLM(FakeEngine(max_num_seqs=2, step_s=0.0))
    run_requests(llm, [RequestSpec(PROMPT, 1, 0.0)] * 2, [0.0, 0.05], "t", observer=observer)
    kinds = [(s.prefill_tokens, s.decode_tokens) for s in observer.seen]
    assert kinds == [(10, 0), (0, 0), (10, 0)]


def test_the_scheduler_view_puts_the_engine_back() -> None:
    class Client:
        def get_output(self) -> Any:
            return "outputs"

    client = Client()
    engine = type("Engine", (), {"engine_core": client})()
    with SchedulerView(engine) as view:
        assert client.get_output() == "outputs"
        assert view.take() is None  # no details on these outputs
    assert "get_output" not in vars(client)
    # An engine without a client (a test double) is left as it is.
    with SchedulerView(object()) as view:
        assert view.take() is None


SPEC = EngineSpec(EngineConfig("embedded", 1, 2), resolve_model("embedded"))


@dataclass
class Driver:
    """Each run takes ``run_s`` on a manual clock; ``short`` makes one output too short."""

    run_s: float
    now_s: float = 0.0
    tags: list[str] = field(default_factory=list)
    short: bool = False

    def clock(self) -> float:
        return self.now_s

    def run(
        self,
        spec: EngineSpec,
        requests: Sequence[RequestSpec],
        arrivals_s: Sequence[float],
        tag: str,
        observer: StepObserver | None = None,
    ) -> list[RequestRecord]:
        self.tags.append(tag)
        self.now_s += self.run_s
        tokens = [r.output_tokens - self.short for r in requests]
        return [
            RequestRecord(0.0, (self.now_s,) * n, len(r.prompt_token_ids)) for r, n in zip(requests, tokens)
        ]


def passes(driver: Driver, min_window_s: float) -> int:
    requests = [RequestSpec(PROMPT, 2, 0.0)]
    return len(run_passes(driver, SPEC, requests, [0.0], "p", None, min_window_s, driver.clock))  # type: ignore[arg-type]


def test_a_short_window_runs_the_requests_again_until_it_is_long_enough() -> None:
    driver = Driver(run_s=0.3)
    assert passes(driver, 1.0) == 4
    assert driver.tags == ["p", "p-p1", "p-p2", "p-p3"]  # request ids stay unique
    assert passes(Driver(run_s=2.0), 1.0) == 1
    assert passes(Driver(run_s=0.3), 0.0) == 1
    assert passes(Driver(run_s=0.0), 1.0) == MAX_PASSES  # a run that takes no time ends


def test_outputs_of_other_lengths_are_counted_not_failed() -> None:
    # A served endpoint may ignore ignore_eos and min_tokens: its point is flagged.
    requests = [RequestSpec(PROMPT, 2, 0.0), RequestSpec(PROMPT, 3, 0.0)]
    driver = Driver(run_s=0.3, short=True)
    runs = run_passes(driver, SPEC, requests, [0.0, 0.0], "p", None, 1.0, driver.clock)  # type: ignore[arg-type]
    assert len(runs) == 4
    assert unforced_lengths(runs, requests) == 8
    failed = [RequestRecord(0.0, (1.0,), 1, "HTTP 500: boom"), RequestRecord(0.0, (1.0, 2.0, 3.0), 1)]
    assert unforced_lengths([failed], requests) == 0  # a failed request is a failure, not a length
    assert unforced_lengths([failed, failed], requests) == 0


def test_a_counter_that_updates_irregularly_fits_no_grid() -> None:
    rng = np.random.default_rng(0)
    reads_s = np.cumsum(rng.uniform(0.01, 0.02, 400))
    periodic = np.floor(reads_s / 0.05)
    irregular = np.floor(np.cumsum(rng.uniform(0.0, 2.0, 400)) / 15)
    starts, ends = reads_s[:-1], reads_s[1:]
    grid = update_grid(starts, ends, np.diff(periodic) > 0, 0.05)
    assert grid is not None and grid[1] == pytest.approx(0.05, rel=1e-3)
    assert update_grid(starts, ends, np.diff(irregular) > 0, 0.05) is None
    # Updates that wander by a few milliseconds around their period still fit the grid.
    updates = np.arange(0.02, reads_s[-1], 0.05) + rng.uniform(
        -0.002, 0.002, len(np.arange(0.02, reads_s[-1], 0.05))
    )
    seen = np.diff(np.searchsorted(updates, reads_s, side="right")) > 0
    jittered = update_grid(starts, ends, seen, 0.05)
    assert jittered is not None and jittered[1] == pytest.approx(0.05, rel=1e-3)
