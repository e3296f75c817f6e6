"""Workloads: reproducible prompts, request shapes and counts, trace replay."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_greenllm.trace import Trace, TraceError, TraceRequest
from pytest_greenllm.workloads import (
    MIN_AUTO_REQUESTS,
    REPLAY,
    TOKEN_ID_HIGH,
    TOKEN_ID_LOW,
    Workload,
    build_requests,
    custom_workload,
    prompt_token_ids,
    replay_workload,
    request_count,
)

# (seed, input_tokens, index): a zero seed, a long prompt, a late index.
CASES = [(0, 16, 0), (1, 128, 3), (2**40, 1024, 0), (7, 33, 511)]
TRACE = Trace(
    "t.csv",
    (TraceRequest(0.0, 10, 5), TraceRequest(0.25, 300, 7), TraceRequest(2.5, 3, 1)),
)


@pytest.mark.parametrize("hash_seed", ["0", "4242"])
def test_prompts_are_the_same_in_another_process(hash_seed: str) -> None:
    # Runs compared across CI jobs must have sent the same prompts; str hashing differs
    # between processes unless PYTHONHASHSEED is fixed, so any use of hash() would show here.
    code = (
        "import json, sys\n"
        "from pytest_greenllm.workloads import prompt_token_ids\n"
        "cases = json.loads(sys.argv[1])\n"
        "print(json.dumps([list(prompt_token_ids(*case)) for case in cases]))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(CASES)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert json.loads(done.stdout) == [list(prompt_token_ids(*case)) for case in CASES]


@pytest.mark.parametrize(("seed", "input_tokens", "index"), CASES)
def test_prompt_depends_on_seed_and_index(seed: int, input_tokens: int, index: int) -> None:
    prompt = prompt_token_ids(seed, input_tokens, index)
    assert prompt == prompt_token_ids(seed, input_tokens, index)
    assert prompt != prompt_token_ids(seed + 1, input_tokens, index)
    assert prompt != prompt_token_ids(seed, input_tokens, index + 1)


@given(st.integers(0, 2**63), st.integers(0, 600), st.integers(0, 10_000))
def test_prompt_has_the_exact_length_and_ids_in_range(seed: int, input_tokens: int, index: int) -> None:
    prompt = prompt_token_ids(seed, input_tokens, index)
    assert len(prompt) == input_tokens
    assert all(TOKEN_ID_LOW <= token < TOKEN_ID_HIGH for token in prompt)


def test_prompt_ids_span_the_whole_range() -> None:
    # A range bug that shrank the draw (say to one id) would still pass the bounds check above.
    ids = set(prompt_token_ids(0, 100_000, 0))
    assert min(ids) < TOKEN_ID_LOW + 50 and max(ids) >= TOKEN_ID_HIGH - 50
    assert len(ids) > 0.9 * (TOKEN_ID_HIGH - TOKEN_ID_LOW)


@given(
    st.builds(custom_workload, st.integers(1, 300), st.integers(1, 300)),
    st.integers(0, 20),
    st.integers(0, 20),
    st.integers(0, 2**32),
)
def test_closed_batch_requests_have_the_workload_shape(
    workload: Workload, count: int, more: int, seed: int
) -> None:
    requests = build_requests(workload, count, seed)
    assert len(requests) == count
    for request in requests:
        assert len(request.prompt_token_ids) == workload.input_tokens
        assert request.output_tokens == workload.output_tokens
        assert request.arrival_s == 0.0
    # Request i must not change with --greenllm-requests, or runs of different sizes would
    # not be comparable request by request.
    assert build_requests(workload, count + more, seed)[:count] == requests


@pytest.mark.parametrize(
    ("batch", "requested", "expected"),
    [
        (64, 3, 3),  # an explicit count wins, even below one batch
        (1, 1000, 1000),
        (1, None, MIN_AUTO_REQUESTS),
        (4, None, MIN_AUTO_REQUESTS),
        (5, None, 10),
        (32, None, 64),
    ],
)
def test_request_count(batch: int, requested: int | None, expected: int) -> None:
    assert request_count(batch, requested) == expected


def test_replay_workload_is_sized_for_the_longest_request() -> None:
    # The matrix checks the workload's context against the model, so it must be the worst case.
    assert replay_workload(TRACE) == Workload(REPLAY, 300, 7, replay=True)


@pytest.mark.parametrize("count", [0, 1, 2, 3])
def test_replay_takes_lengths_and_arrivals_from_the_trace(count: int) -> None:
    requests = build_requests(replay_workload(TRACE), count, 9, TRACE)
    expected = TRACE.requests[:count]
    assert [len(r.prompt_token_ids) for r in requests] == [t.input_tokens for t in expected]
    assert [r.output_tokens for r in requests] == [t.output_tokens for t in expected]
    assert [r.arrival_s for r in requests] == [t.arrival_s for t in expected]
    assert [r.prompt_token_ids for r in requests] == [
        prompt_token_ids(9, t.input_tokens, i) for i, t in enumerate(expected)
    ]


def test_replay_beyond_the_trace_is_an_error() -> None:
    with pytest.raises(TraceError, match="4 requests asked for, the trace holds 3"):
        build_requests(replay_workload(TRACE), 4, 0, TRACE)


def test_replay_without_a_trace_is_an_error() -> None:
    with pytest.raises(ValueError, match="needs the trace it replays"):
        build_requests(replay_workload(TRACE), 1, 0)
