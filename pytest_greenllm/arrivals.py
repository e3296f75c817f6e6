"""How a point's requests arrive: the load modes, named as the anchors name them.

``vllm bench serve`` and GuideLLM measure a server at an infinite rate with a concurrency
cap (a closed loop), at Poisson or constant request rates, and over a sweep of rates;
replaying a trace keeps its recorded arrivals, sped up or slowed down by a time scale. In
every mode at most ``batch`` requests are in flight, as ``--max-concurrency`` does in
``vllm bench serve``: the batch knob is the client's concurrency and the engine's
``max_num_seqs``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

CLOSED = "closed"  # every request sent at once; at most batch in flight
POISSON = "poisson"  # exponential gaps at the rate
CONSTANT = "constant"  # equal gaps at the rate
TRACE = "trace"  # the trace's own arrivals, times the time scale
RATE_KINDS = (POISSON, CONSTANT)
# In point ids: short, and the load is read right after the workload ('S-poisson2rps-...').
_ID_NAMES = {POISSON: "poisson", CONSTANT: "const"}


@dataclass(frozen=True)
class Load:
    """One value of the load axis. ``rate_per_s`` is set for Poisson and constant loads,
    ``time_scale`` matters for trace replay only."""

    kind: str = CLOSED
    rate_per_s: float | None = None  # Units: requests/s.
    time_scale: float = 1.0  # trace arrival offsets are multiplied by it: 0.5 is twice as fast

    def __post_init__(self) -> None:
        if self.kind not in (CLOSED, TRACE, *RATE_KINDS):
            raise ValueError(f"unknown load kind {self.kind!r}")
        if (self.kind in RATE_KINDS) != (self.rate_per_s is not None):
            raise ValueError(f"a {self.kind} load {'needs' if self.kind in RATE_KINDS else 'has no'} rate")
        if self.rate_per_s is not None and not 0 < self.rate_per_s < float("inf"):
            raise ValueError(f"rate {self.rate_per_s} must be a finite number > 0")
        if not 0 < self.time_scale < float("inf"):
            raise ValueError(f"time scale {self.time_scale} must be a finite number > 0")

    @property
    def fragment(self) -> str:
        """This load's part of a point id; the closed loop and a trace at its own pace add
        none, so the ids of sweeps without a load axis stay as they were."""
        if self.kind in RATE_KINDS:
            return f"{_ID_NAMES[self.kind]}{self.rate_per_s:.12g}rps"
        if self.kind == TRACE and self.time_scale != 1:
            return f"ts{self.time_scale:.12g}"
        return ""

    @property
    def label(self) -> str:
        """As tables show it: 'closed', 'poisson 2 req/s', 'trace x0.5'."""
        if self.kind in RATE_KINDS:
            return f"{self.kind} {self.rate_per_s:g} req/s"
        if self.kind == TRACE:
            return f"trace x{self.time_scale:g}"
        return CLOSED


CLOSED_LOOP = Load()


def poisson_arrivals(count: int, rate_per_s: float, seed: int) -> list[float]:
    """Arrival offsets of a Poisson process at ``rate_per_s``, seeded. Units: s."""
    rng = random.Random(f"greenllm-arrivals:{seed}")
    t, out = 0.0, []
    for _ in range(count):
        out.append(t)
        t += rng.expovariate(rate_per_s)
    return out


def arrival_offsets(load: Load, trace_offsets_s: Sequence[float], seed: int) -> list[float]:
    """When each request is sent, in seconds from the start of the run: ``trace_offsets_s``
    are the requests' recorded arrivals (all 0 outside a trace), one per request."""
    count = len(trace_offsets_s)
    if load.kind == POISSON:
        assert load.rate_per_s is not None
        return poisson_arrivals(count, load.rate_per_s, seed)
    if load.kind == CONSTANT:
        assert load.rate_per_s is not None
        return [i / load.rate_per_s for i in range(count)]
    if load.kind == TRACE:
        return [offset * load.time_scale for offset in trace_offsets_s]
    return [0.0] * count
