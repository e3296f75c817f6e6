"""Energy of a run's phases from energy-counter reads taken as each engine step returns.

The counter (NVML's total energy, RAPL's energy_uj) is exact at the instants it updates,
every 20-100 ms; averaged power (NVML's power reading on Hopper is a 1 s moving average)
smears a short sub-window in time. So the run loop reads the counters after every step
(:class:`CounterLog`, the driver's step observer), and energies of sub-windows come from
reads at their edges: the steady state (:func:`counter_energy_j`) and the prefill/decode
split (:func:`split_phases`).

The prefill/decode split is a regression over the counter's intervals (docs/phases.md):

- The counter's updates cut the run into intervals of exactly known energy. Each update
  is placed on the counter's update grid, fitted to the reads (NVML updates its counter
  periodically: every read that saw a change, and every one that did not, pins the grid
  down; of the grids that explain the reads equally well, the middle one); where no
  periodic grid fits the reads, midway between the two reads it fell between (or within
  one period before the later one).
- A step spans the time from the end of the one before to its own end. Its prefill and
  decode tokens go to the intervals it overlaps, in proportion to the time it spends in
  each (:func:`interval_tokens`).
- Over the intervals, ``E = a * prefill tokens + b * decode tokens + c * seconds`` is fitted
  by least squares, each interval weighted by 1/seconds (:func:`fit_intervals`): ``a`` is
  the energy per prefill token and ``b`` per decode token (J/token), ``c`` the static power
  (W), which is all an idle wait draws. A step that mixes both kinds of work (chunked
  prefill) needs no rule: it is a row with both kinds of tokens, and the fit tells ``a``
  from ``b`` wherever the prefill:decode mix varies between intervals.

**Assumption.** Within the counter's resolution, energy is linear in the tokens scheduled
and the time taken (``a``, ``b`` and ``c`` hold over the run, and a step's power is even
over the step), and the intervals' errors are independent, with a variance proportional to
an interval's length: the sum of many steps' own deviations. That variance is what the
1/seconds weights undo; where the intervals are of one length the fit is ordinary least
squares.

**The error stated.** Standard errors from the residual variance, ``s² (XᵀWX)⁻¹``, with
``s²`` the weighted residual sum of squares over ``n - 3`` degrees of freedom; the condition
number of the weighted design with its columns scaled to unit length; ``n`` and the degrees
of freedom. Where the assumption holds, ``estimate ± 2 SE`` covers the truth about 95% of
the time (``tests/test_phases.py`` checks it on simulated runs). Errors that persist over
several intervals (a slow drift, a long wait whose power strays) break the assumption, and
the standard errors understate them.

**Not identified.** The per-token figures are None, and ``reason`` says why, where the run
scheduled no tokens of a kind, where there are fewer than :data:`MIN_INTERVALS` intervals,
where the design's condition number is above :data:`MAX_CONDITION_NUMBER` (infinite where
the prefill:decode mix is the same in every interval: no data can tell ``a`` from ``b``
then), where ``a``, ``b`` or ``c`` is negative beyond twice its standard error (energy is
not linear in tokens over the run), or where ``a`` or ``b`` has a standard error above
:data:`MAX_RELATIVE_SE` of itself (too uncertain to state, or not told apart from zero). No
rule (sharing by tokens or by time) stands in for a fit that cannot be made.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from pytest_greenllm.devices.base import EnergySource
from pytest_greenllm.devices.errors import DeviceError
from pytest_greenllm.driver import Step

Array = npt.NDArray[np.float64]

KINDS = ("prefill", "decode", "mixed", "idle")
REGRESSION = "regression"  # the per-token figures are fitted, with their errors
UNIDENTIFIED = "unidentified"  # they are None; ``reason`` says why
UNKNOWNS = 3  # a, b and c
# Fewer degrees of freedom than 7 leave the residual variance, and with it every stated
# error, too uncertain to state: ± 2 SE would cover well under 95% (Student's t).
MIN_INTERVALS = 10
# Past this, a small misfit of the linear model moves a and b by more than their standard
# errors say (they only cover noise): the split is no measurement.
MAX_CONDITION_NUMBER = 1000.0
# Above this, estimate ± 2 SE spans more than 10% of the estimate either way: a figure the
# report would state more precisely than it was measured. Shorter runs then say why.
MAX_RELATIVE_SE = 0.05
# Negative by more than this many standard errors: not noise, a model that does not fit.
NEGATIVE_SE = 2.0


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


def update_period_s(reads: Sequence[tuple[float, float]]) -> float | None:
    """The counter's update period, estimated from which reads saw it move.

    A gap of ``g`` seconds between reads sees an update with probability ``min(1, g / p)``
    for a period ``p``; the estimate is the ``p`` at which the expected number of reads that
    see one equals the number that did. Where every read saw one, the period is at most
    the shortest gap, which is the estimate. None without a change.
    """
    gaps = np.array([t1 - t0 for (t0, e0), (t1, e1) in zip(reads, reads[1:]) if t1 > t0])
    changed = sum(1 for (t0, e0), (t1, e1) in zip(reads, reads[1:]) if t1 > t0 and e1 != e0)
    if not changed:
        return None
    if changed == len(gaps):
        return float(gaps.min())

    def excess(period_s: float) -> float:
        return float(np.minimum(1.0, gaps / period_s).sum()) - changed

    low, high = float(gaps.min()), float(gaps.sum())
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
        # Many grids explain the reads equally well; the first of them is at the edge of
        # what the reads allow (the shortest period), and its updates drift from the true
        # ones over a run, by several ms. The middle of them does not.
        best = np.flatnonzero(score.max(axis=1) == score.max())
        i = best[len(best) // 2]
        angles = 2 * np.pi * fractions[score[i] == score.max()]
        fraction = math.atan2(np.sin(angles).mean(), np.cos(angles).mean()) / (2 * np.pi) % 1
        best_period = float(periods[i])
        best_phase = fraction * best_period
        step = periods[1] - periods[0]
        periods = best_period + np.linspace(-step, step, 41)
    if score.max() < GRID_FIT:
        return None
    return best_phase, best_period


@dataclass(frozen=True)
class PhaseSplit:
    """Where a run's energy went: energy per prefill and per decode token, fitted over the
    counter's intervals with their standard errors, or why they cannot be (module
    docstring). Units: J/token, W, s."""

    method: str  # REGRESSION or UNIDENTIFIED; 'fit' or 'shared' in reports of earlier versions
    tokens_from: str  # 'scheduler' (vLLM's step details) or 'outputs' (counted by the driver)
    prefill_tokens: int
    decode_tokens: int
    prefill_s: float  # time in prefill-only steps
    decode_s: float  # time in decode-only steps
    mixed_s: float  # time in steps that scheduled both
    idle_s: float  # time in steps that scheduled none
    steps: int
    counter_updates: int  # counter changes seen: the resolution the split rests on
    j_per_prefill_token: float | None  # a; None: not identified. Units: J/token.
    j_per_decode_token: float | None  # b; None: not identified. Units: J/token.
    # a x prefill tokens / (a x prefill tokens + b x decode tokens): static power left out.
    prefill_share: float | None
    # Added with the regression; reports of earlier versions read them as unknown.
    j_per_prefill_token_se: float | None = None  # standard error. Units: J/token.
    j_per_decode_token_se: float | None = None  # Units: J/token.
    prefill_share_se: float | None = None  # by the delta method, from a's and b's covariance
    static_power_w: float | None = None  # c, the power drawn whatever the tokens. Units: W.
    static_power_w_se: float | None = None  # Units: W.
    # Of the weighted design with unit-length columns; None where not fitted or singular.
    condition_number: float | None = None
    intervals: int = 0  # counter intervals fitted over
    degrees_of_freedom: int = 0  # intervals less the 3 unknowns
    reason: str | None = None  # why the per-token figures are None; None where measured

    @property
    def measured(self) -> bool:
        """Whether the per-token figures are this version's fit (earlier versions' 'fit'
        and 'shared' shared energy among kinds of step by rule)."""
        return self.method == REGRESSION and self.j_per_prefill_token is not None


@dataclass(frozen=True)
class TokenFit:
    """``E = a * prefill tokens + b * decode tokens + c * seconds`` over counter intervals."""

    coefficients: Array | None  # (a J/token, b J/token, c W); None where not fitted
    covariance: Array | None  # 3 x 3, of the coefficients
    condition_number: float  # inf where the design is singular, nan where not computed
    intervals: int
    degrees_of_freedom: int
    reason: str | None  # why a and b are no measurement; None where they are


def _unfitted(intervals: int, reason: str, condition_number: float = math.nan) -> TokenFit:
    return TokenFit(None, None, condition_number, intervals, max(intervals - UNKNOWNS, 0), reason)


def _collinear(design: Array) -> str:
    """What makes a weighted, unit-column design ill-conditioned, in words."""
    if np.linalg.cond(design[:, :2]) > MAX_CONDITION_NUMBER:
        return "prefill and decode tokens come in (nearly) the same proportion in every counter interval"
    return "the tokens and the seconds of the counter intervals rise and fall together"


def _doubt(coefficients: Array, errors: Array) -> str | None:
    """Why fitted (a, b, c) are no measurement: one negative beyond its noise, or a or b
    too uncertain; None where they are one."""
    names = ("J per prefill token", "J per decode token", "the static power")
    for name, value, error in zip(names, coefficients, errors):
        if value < -NEGATIVE_SE * error:
            return (
                f"{name} comes out negative beyond its noise ({value:.3g} ± {error:.2g}): "
                "energy is not linear in tokens and time over this run"
            )
    for name, value, error in zip(names[:2], coefficients, errors):
        if value <= 0 or error > MAX_RELATIVE_SE * value:
            return (
                f"{name} is too uncertain to state ({value:.3g} ± {error:.2g}: the standard "
                f"error is above {MAX_RELATIVE_SE:.0%} of the estimate)"
            )
    return None


def fit_intervals(prefill: Array, decode: Array, seconds_s: Array, energy_j: Array) -> TokenFit:
    """The weighted least-squares fit of the intervals' energy to their tokens and seconds,
    with its errors, or why a and b cannot be told (module docstring)."""
    n = len(energy_j)
    if n < MIN_INTERVALS:
        return _unfitted(
            n,
            f"only {n} counter intervals: the fit of {UNKNOWNS} unknowns and its error needs {MIN_INTERVALS}",
        )
    for tokens, kind in ((prefill, "prefill"), (decode, "decode")):
        if not np.any(tokens > 0):
            return _unfitted(
                n, f"no {kind} tokens in the counter intervals: nothing to fit J per {kind} token to"
            )
    root_weight = 1 / np.sqrt(seconds_s)
    weighted = np.column_stack([prefill, decode, seconds_s]) * root_weight[:, None]
    norms = np.linalg.norm(weighted, axis=0)
    design = weighted / norms
    u, singular, vt = np.linalg.svd(design, full_matrices=False)
    # numpy's matrix_rank tolerance: a singular value below it is rounding, not data.
    singular_floor = singular[0] * n * np.finfo(float).eps
    condition = float(singular[0] / singular[-1]) if singular[-1] > singular_floor else math.inf
    if condition > MAX_CONDITION_NUMBER:
        return _unfitted(
            n,
            f"{_collinear(design)}: they cannot tell J per prefill token from J per decode token "
            f"(condition number {'infinite' if math.isinf(condition) else f'{condition:.3g}'}, "
            f"above {MAX_CONDITION_NUMBER:g})",
            condition,
        )
    target = energy_j * root_weight
    coefficients = vt.T @ ((u.T @ target) / singular) / norms
    residual = target - weighted @ coefficients
    dof = n - UNKNOWNS
    variance = float(residual @ residual) / dof
    covariance = (vt.T / singular**2) @ vt * variance / np.outer(norms, norms)
    reason = _doubt(coefficients, np.sqrt(np.diag(covariance)))
    return TokenFit(coefficients, covariance, condition, n, dof, reason)


def interval_tokens(steps: Sequence[Step], start_s: float, edges_s: Sequence[float]) -> tuple[Array, Array]:
    """Prefill and decode tokens in each interval between consecutive ``edges_s``: a step's
    tokens spread evenly over the time from the end of the step before (``start_s`` for the
    first) to its own end."""
    knots = [start_s]
    prefill = [0.0]
    decode = [0.0]
    for step in steps:
        if step.end_s > knots[-1]:
            knots.append(step.end_s)
            prefill.append(prefill[-1])
            decode.append(decode[-1])
        # A step that returned no later than the one before has no time of its own: its
        # tokens join that one's.
        prefill[-1] += step.prefill_tokens
        decode[-1] += step.decode_tokens
    edges = np.asarray(edges_s, dtype=float)
    return np.diff(np.interp(edges, knots, prefill)), np.diff(np.interp(edges, knots, decode))


def _kind_seconds(steps: Sequence[Step], start_s: float) -> dict[str, float]:
    seconds = dict.fromkeys(KINDS, 0.0)
    previous = start_s
    for step in steps:
        if step.end_s > previous:
            seconds[kind_of(step)] += step.end_s - previous
            previous = step.end_s
    return seconds


def _intervals(updates: Sequence[tuple[float, float]]) -> tuple[list[float], Array]:
    """Edges (s) and energies (J) of the intervals between the counter's updates."""
    kept: list[tuple[float, float]] = []
    for t, value in updates:
        # An update placed no later than the one before (a grid a read contradicts) has no
        # interval of its own: its energy joins the next one's.
        if not kept or t > kept[-1][0]:
            kept.append((t, value))
    return [t for t, _ in kept], np.diff([e for _, e in kept]) / 1000


def _tokens_from(steps: Sequence[Step]) -> str:
    """Who counted the steps' tokens: 'scheduler', 'outputs', or 'both' (some steps each)."""
    sources = {s.tokens_from for s in steps if kind_of(s) != "idle"}
    return sources.pop() if len(sources) == 1 else ("both" if sources else "outputs")


def split_phases(
    steps: Sequence[Step], reads: Sequence[tuple[float, float]], start_s: float
) -> PhaseSplit | None:
    """The prefill/decode split of a run whose steps began at ``start_s`` (module docstring);
    None without a step."""
    if not steps:
        return None
    updates = _updates(reads)
    edges, energy_j = _intervals(updates)
    prefill, decode = interval_tokens(steps, start_s, edges)
    fit = fit_intervals(prefill, decode, np.diff(edges), energy_j)
    seconds = _kind_seconds(steps, start_s)
    prefill_tokens = sum(s.prefill_tokens for s in steps)
    decode_tokens = sum(s.decode_tokens for s in steps)
    split = PhaseSplit(
        method=UNIDENTIFIED,
        tokens_from=_tokens_from(steps),
        prefill_tokens=prefill_tokens,
        decode_tokens=decode_tokens,
        prefill_s=seconds["prefill"],
        decode_s=seconds["decode"],
        mixed_s=seconds["mixed"],
        idle_s=seconds["idle"],
        steps=len(steps),
        counter_updates=len(updates),
        j_per_prefill_token=None,
        j_per_decode_token=None,
        prefill_share=None,
        condition_number=fit.condition_number if math.isfinite(fit.condition_number) else None,
        intervals=fit.intervals,
        degrees_of_freedom=fit.degrees_of_freedom,
        reason=fit.reason,
    )
    if fit.reason is not None or fit.coefficients is None or fit.covariance is None:
        return split
    (a, b, c), (a_se, b_se, c_se) = fit.coefficients, np.sqrt(np.diag(fit.covariance))
    prefill_j, decode_j = a * prefill_tokens, b * decode_tokens
    # The share's gradient in (a, b), for its variance by the delta method.
    gradient = np.array([prefill_tokens * decode_j, -decode_tokens * prefill_j]) / (prefill_j + decode_j) ** 2
    share_variance = float(gradient @ fit.covariance[:2, :2] @ gradient)
    return replace(
        split,
        method=REGRESSION,
        j_per_prefill_token=float(a),
        j_per_decode_token=float(b),
        prefill_share=float(prefill_j / (prefill_j + decode_j)),
        j_per_prefill_token_se=float(a_se),
        j_per_decode_token_se=float(b_se),
        prefill_share_se=math.sqrt(max(share_variance, 0.0)),
        static_power_w=float(c),
        static_power_w_se=float(c_se),
    )
