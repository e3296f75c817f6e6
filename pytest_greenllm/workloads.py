"""Workloads: length buckets, custom shapes and trace replay, as seeded token-id prompts.

Prompts are token ids, not text, so the embedded model needs no tokenizer and every model
sees the same request shapes. Ids are drawn below 10000, like ``vllm bench latency``, so any
model with a vocabulary of at least 10000 accepts them.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from pytest_greenllm.trace import Trace

# Chosen by us, modelled on the paper's S/M/L; the paper's own lengths are not public.
DEFAULT_BUCKETS: dict[str, tuple[int, int]] = {"S": (128, 64), "M": (1024, 256), "L": (4096, 512)}
REPLAY = "trace"
TOKEN_ID_LOW = 100  # below this, Llama-style vocabularies keep their special tokens
TOKEN_ID_HIGH = 10000
MIN_AUTO_REQUESTS = 8


@dataclass(frozen=True)
class Workload:
    """A request shape. For trace replay the lengths are the trace's longest, for the context check."""

    name: str  # test-id part: S, M, L, 512x128 or trace
    input_tokens: int
    output_tokens: int
    replay: bool = False  # requests, lengths and arrivals come from the trace

    @property
    def context_tokens(self) -> int:
        """Tokens a request of this shape holds at its end. Units: tokens."""
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class RequestSpec:
    """One request to submit: its prompt, its forced output length, its arrival."""

    prompt_token_ids: tuple[int, ...]
    output_tokens: int
    arrival_s: float  # offset from the start of the run; 0 for a closed batch


def custom_workload(input_tokens: int, output_tokens: int) -> Workload:
    """A workload of fixed ``input_tokens`` in, ``output_tokens`` out."""
    return Workload(f"{input_tokens}x{output_tokens}", input_tokens, output_tokens)


def replay_workload(trace: Trace) -> Workload:
    """The workload that replays ``trace``; its lengths are the trace's longest."""
    return Workload(
        REPLAY,
        max(r.input_tokens for r in trace.requests),
        max(r.output_tokens for r in trace.requests),
        replay=True,
    )


def request_count(batch: int, requested: int | None) -> int:
    """Requests per point: ``requested``, or two full batches (at least 8) for 'auto'."""
    if requested is not None:
        return requested
    return max(MIN_AUTO_REQUESTS, 2 * batch)


def prompt_token_ids(seed: int, input_tokens: int, index: int) -> tuple[int, ...]:
    """The prompt of request ``index``: the same on every run, process and machine."""
    # Seeding from a digest, not hash(), keeps prompts independent of PYTHONHASHSEED;
    # the index in the key keeps request i's prompt the same whatever the request count.
    key = hashlib.sha256(f"greenllm:{seed}:{input_tokens}:{index}".encode()).digest()
    rng = random.Random(int.from_bytes(key[:8], "big"))
    return tuple(rng.randrange(TOKEN_ID_LOW, TOKEN_ID_HIGH) for _ in range(input_tokens))


def build_requests(
    workload: Workload, count: int, seed: int, trace: Trace | None = None
) -> list[RequestSpec]:
    """The ``count`` requests of a point; replay takes lengths and arrivals from ``trace``."""
    if not workload.replay:
        return [
            RequestSpec(prompt_token_ids(seed, workload.input_tokens, i), workload.output_tokens, 0.0)
            for i in range(count)
        ]
    if trace is None:
        raise ValueError("the trace workload needs the trace it replays")
    return [
        RequestSpec(prompt_token_ids(seed, r.input_tokens, i), r.output_tokens, r.arrival_s)
        for i, r in enumerate(trace.replay(count))
    ]
