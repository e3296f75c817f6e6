"""Energy of a run's phases from energy-counter reads taken as each engine step returns.

The counter (NVML's total energy, RAPL's energy_uj) is exact at the instants it updates,
every 20-100 ms; averaged power (NVML's power reading on Hopper is a 1 s moving average)
smears a short sub-window in time. So the run loop reads the counters after every step
(:class:`CounterLog`, the driver's step observer), and energies of sub-windows come from
reads at their edges: the steady state (:func:`counter_energy_j`) and the prefill/decode
split (:func:`split_phases`).

How the split works, and the rule for steps that mix both kinds of work:

- Every step is one of four kinds by the tokens it scheduled: prefill (prompt tokens only),
  decode (output tokens only), mixed (both: chunked prefill sharing a step with decodes)
  and idle (none: the engine waited for an arrival). A step spans the time from the end of
  the one before to its own end.
- The counter's updates cut the run into intervals of exactly known energy. Each update
  is placed on the counter's update grid, fitted to the reads (NVML updates its counter
  periodically: every read that saw a change, and every one that did not, pins the grid
  down); where no periodic grid fits the reads, midway between the two reads it fell
  between (or within one period before the later one).
- Each kind's average power is fitted to those intervals by least squares (the energy of
  an interval is the sum over kinds of power x time spent in that kind): ``method='fit'``.
  Where the fit is not determined (too few intervals, a kind that never appears apart
  from another, a negative power) every interval's energy is shared among its kinds in
  proportion to time instead: ``method='shared'``.
- Kind energies (power x time) are scaled so that they add up to the counter's energy over
  the run. A mixed step's energy goes to prefill and decode in proportion to the tokens it
  scheduled of each; ``mixed_j`` says how much energy this rule placed.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from pytest_greenllm.devices.base import EnergySource
from pytest_greenllm.devices.errors import DeviceError
from pytest_greenllm.driver import Step

KINDS = ("prefill", "decode", "mixed", "idle")
FIT = "fit"
SHARED = "shared"
# The fit needs this many intervals per fitted power before it is trusted.
INTERVALS_PER_UNKNOWN = 2


def kind_of(step: Step) -> str:
    """prefill, decode, mixed or idle, by the tokens the step scheduled."""
    if step.prefill_tokens and step.decode_tokens:
        return "mixed"
    if step.prefill_tokens:
        return "prefill"
    if step.decode_tokens:
        return "decode"
    return "idle"


@dataclass
class CounterLog:
    """The step observer of a measured run: reads the counters of ``sources`` (summed) when
    the run starts and after every step. A source without a counter, or a failed read,
    leaves that read out."""

    sources: Sequence[EnergySource]
    clock: Callable[[], float] = time.monotonic
    steps: list[Step] = field(default_factory=list)
    reads: list[tuple[float, float]] = field(default_factory=list)  # (s, mJ) ascending in time

    def start(self) -> None:
        """The read at the start of the run (before its first step). Call once per pass."""
        self._read(self.clock())

    def step(self, step: Step) -> None:
        self.steps.append(step)
        self._read(step.end_s)

    def _read(self, t_s: float) -> None:
        total = 0.0
        for source in self.sources:
            try:
                value = source.energy_mj()
            except DeviceError:
                return
            if value is None:
                return
            total += value
        self.reads.append((t_s, total))


# Token stamps and step ends are the same clock values, but a steady state's edges come
# back through (t - start) + start, which may round below the read it names.
TIME_TOLERANCE_S = 1e-6


def counter_energy_j(reads: Sequence[tuple[float, float]], start_s: float, end_s: float) -> float | None:
    """Counter energy between the reads taken at ``start_s`` and ``end_s`` (the latest read
    at or before each instant); None where either has no read or the counter did not move.
    Exact to one counter update at each edge. Units: J."""
    times = [t for t, _ in reads]
    i = bisect.bisect_right(times, start_s + TIME_TOLERANCE_S) - 1
    j = bisect.bisect_right(times, end_s + TIME_TOLERANCE_S) - 1
    if i < 0 or j <= i:
        return None
    joules = (reads[j][1] - reads[i][1]) / 1000
    return joules if joules > 0 else None


@dataclass(frozen=True)
class PhaseSplit:
    """Where a run's energy went: prefill, decode and idle waiting. Units: J, s, W."""

    method: str  # 'fit' or 'shared' (module docstring)
    tokens_from: str  # 'scheduler' (vLLM's step details) or 'outputs' (counted by the driver)
    prefill_j: float
    decode_j: float
    idle_j: float
    mixed_j: float  # energy of mixed steps, included in prefill_j and decode_j by tokens
    prefill_tokens: int
    decode_tokens: int
    prefill_s: float  # time in prefill-only steps
    decode_s: float  # time in decode-only steps
    mixed_s: float
    idle_s: float
    prefill_power_w: float | None  # average power in prefill-only steps; None without any
    decode_power_w: float | None
    mixed_power_w: float | None
    steps: int
    counter_updates: int  # counter changes seen: the resolution the split rests on
    j_per_prefill_token: float | None  # Units: J/token.
    j_per_decode_token: float | None  # Units: J/token.
    prefill_share: float | None  # prefill's share of prefill + decode energy (idle left out)


def _segments(steps: Sequence[Step], start_s: float) -> list[tuple[float, float, str]]:
    """(from, to, kind) of every step: from the end of the one before to its own end."""
    out = []
    previous = start_s
    for step in steps:
        if step.end_s > previous:
            out.append((previous, step.end_s, kind_of(step)))
            previous = step.end_s
    return out


def _time_in(segments: Sequence[tuple[float, float, str]], lo: float, hi: float) -> np.ndarray:
    """Seconds of each kind (in KINDS order) inside [lo, hi]."""
    times = np.zeros(len(KINDS))
    for a, b, kind in segments:
        overlap = min(b, hi) - max(a, lo)
        if overlap > 0:
            times[KINDS.index(kind)] += overlap
    return times


def update_period_s(reads: Sequence[tuple[float, float]]) -> float | None:
    """The counter's update period, estimated from which reads saw it move.

    A gap of ``g`` seconds between reads sees an update with probability ``min(1, g / p)``
    for a period ``p``; the estimate is the ``p`` at which the expected number of reads that
    see one equals the number that did. Where every read saw one, the period is at most
    the shortest gap, which is the estimate. None without a change.
    """
    gaps = [t1 - t0 for (t0, e0), (t1, e1) in zip(reads, reads[1:]) if t1 > t0]
    changed = sum(1 for (t0, e0), (t1, e1) in zip(reads, reads[1:]) if t1 > t0 and e1 != e0)
    if not changed:
        return None
    if changed == len(gaps):
        return min(gaps)

    def excess(period_s: float) -> float:
        return sum(min(1.0, g / period_s) for g in gaps) - changed

    low, high = min(gaps), sum(gaps)
    for _ in range(60):  # bisection: excess falls as the period grows
        middle = (low + high) / 2
        low, high = (middle, high) if excess(middle) > 0 else (low, middle)
    return (low + high) / 2


def _updates(reads: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """(instant, counter value) of the last counter update before each read that saw the
    counter move: on the counter's own update grid where its updates are periodic (as
    NVML's are), else where each is expected between its two reads."""
    period_s = update_period_s(reads)
    if period_s is None:
        return []
    pairs = [(t0, t1, e1 != e0, e1) for (t0, e0), (t1, e1) in zip(reads, reads[1:]) if t1 > t0]
    grid = update_grid(
        np.array([t0 for t0, _, _, _ in pairs]),
        np.array([t1 for _, t1, _, _ in pairs]),
        np.array([c for _, _, c, _ in pairs]),
        period_s,
    )
    out = []
    for t0, t1, changed, value in pairs:
        if not changed:
            continue
        if grid is not None:
            phase_s, period = grid
            out.append((phase_s + math.floor((t1 - phase_s) / period) * period, value))
        else:
            # The last update fell after the read before, and within one period of this one.
            out.append(((max(t0, t1 - period_s) + t1) / 2, value))
    return out


GRID_FIT = 0.95  # share of read gaps a periodic update grid must explain (jitter misses some)


def update_grid(
    starts_s: np.ndarray, ends_s: np.ndarray, changed: np.ndarray, period_s: float
) -> tuple[float, float] | None:
    """(phase, period) of the periodic update grid that best explains which read gaps
    (``starts_s``-``ends_s``) saw the counter change; None where no grid explains at least
    ``GRID_FIT`` of them (a counter that does not update periodically)."""
    if changed.sum() < 3:
        return None

    def fit(phases: np.ndarray, periods: np.ndarray) -> np.ndarray:
        # Grid points in each gap, for every phase at once, a period at a time (memory).
        scores = np.empty((len(periods), len(phases)))
        for i, p in enumerate(periods):
            f = phases[:, None] * p
            count = np.floor((ends_s - f) / p) - np.floor((starts_s - f) / p)
            scores[i] = ((count > 0) == changed).mean(axis=1)
        return scores

    periods = period_s * (1 + np.linspace(-0.05, 0.05, 101))
    fractions = np.linspace(0.0, 1.0, 50, endpoint=False)
    for _ in range(3):  # each round narrows the periods around the best
        score = fit(fractions, periods)
        i, j = np.unravel_index(np.argmax(score), score.shape)
        best_period, best_phase = float(periods[i]), float(fractions[j] * periods[i])
        step = periods[1] - periods[0]
        periods = best_period + np.linspace(-step, step, 41)
    if score.max() < GRID_FIT:
        return None
    return best_phase, best_period


def _fit(interval_times: np.ndarray, energies_j: np.ndarray, present: np.ndarray) -> np.ndarray | None:
    """Per-kind power (W) by least squares over the intervals; None where not determined."""
    columns = interval_times[:, present]
    unknowns = int(present.sum())
    if len(energies_j) < INTERVALS_PER_UNKNOWN * unknowns or np.linalg.matrix_rank(columns) < unknowns:
        return None
    solution, *_ = np.linalg.lstsq(columns, energies_j, rcond=None)
    if np.any(solution < 0):
        return None
    powers = np.zeros(len(KINDS))
    powers[present] = solution
    return powers


def _tokens_from(steps: Sequence[Step]) -> str:
    """Who counted the steps' tokens: 'scheduler', 'outputs', or 'both' (some steps each)."""
    sources = {s.tokens_from for s in steps if kind_of(s) != "idle"}
    return sources.pop() if len(sources) == 1 else ("both" if sources else "outputs")


def split_phases(
    steps: Sequence[Step], reads: Sequence[tuple[float, float]], start_s: float
) -> PhaseSplit | None:
    """The prefill/decode split of a run whose steps began at ``start_s`` (module docstring);
    None where the counter never moved between two reads: too short a run to split."""
    segments = _segments(steps, start_s)
    updates = _updates(reads)
    if not segments or len(updates) < 2:
        return None
    edges = [t for t, _ in updates]
    energies_j = np.diff([e for _, e in updates]) / 1000
    interval_times = np.array([_time_in(segments, lo, hi) for lo, hi in zip(edges, edges[1:])])
    total_times = _time_in(segments, segments[0][0], segments[-1][1])
    present = total_times > 0
    powers = _fit(interval_times, energies_j, present)
    method = FIT
    if powers is None:
        method = SHARED
        shares = np.zeros(len(KINDS))
        for times, joules in zip(interval_times, energies_j):
            if times.sum() > 0:
                shares += joules * times / times.sum()
        covered = interval_times.sum(axis=0)
        powers = np.divide(shares, covered, out=np.zeros(len(KINDS)), where=covered > 0)
    kind_j = powers * total_times
    # The counter's energy over the whole run is exact to an update at each end; the
    # kinds' estimates only share it out.
    run_j = (reads[-1][1] - reads[0][1]) / 1000
    if kind_j.sum() > 0:
        kind_j *= run_j / kind_j.sum()
    prefill_j, decode_j, mixed_j, idle_j = (float(v) for v in kind_j)
    mixed_prefill = sum(s.prefill_tokens for s in steps if kind_of(s) == "mixed")
    mixed_decode = sum(s.decode_tokens for s in steps if kind_of(s) == "mixed")
    mixed_tokens = mixed_prefill + mixed_decode
    if mixed_tokens:
        prefill_j += mixed_j * mixed_prefill / mixed_tokens
        decode_j += mixed_j * mixed_decode / mixed_tokens
    power = [float(kind_j[i] / total_times[i]) if present[i] else None for i in range(len(KINDS))]
    prefill_tokens = sum(s.prefill_tokens for s in steps)
    decode_tokens = sum(s.decode_tokens for s in steps)
    busy_j = prefill_j + decode_j
    return PhaseSplit(
        method=method,
        tokens_from=_tokens_from(steps),
        prefill_j=prefill_j,
        decode_j=decode_j,
        idle_j=idle_j,
        mixed_j=mixed_j,
        prefill_tokens=prefill_tokens,
        decode_tokens=decode_tokens,
        prefill_s=float(total_times[0]),
        decode_s=float(total_times[1]),
        mixed_s=float(total_times[2]),
        idle_s=float(total_times[3]),
        prefill_power_w=power[0],
        decode_power_w=power[1],
        mixed_power_w=power[2],
        steps=len(steps),
        counter_updates=len(updates),
        j_per_prefill_token=prefill_j / prefill_tokens if prefill_tokens else None,
        j_per_decode_token=decode_j / decode_tokens if decode_tokens else None,
        prefill_share=prefill_j / busy_j if busy_j > 0 else None,
    )
