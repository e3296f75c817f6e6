"""The energy gate's statistics: is a point's change within the tolerance, beyond it, or not
yet known? Pure; ``docs/gate.md`` gives the reasoning and the sources.

The user's tolerance τ is the centre of an indifference zone [τ/2, 2τ] of relative change.
For each gated metric a confidence interval of the change is computed from the repeats
(the log of each repeat's value, a pooled two-sample t statistic, or the spread of a history
of reports as the noise). The point:

- regressed when some metric's interval lies wholly above τ/2 (credibly worse than a change
  the user surely accepts) and that metric's change is above τ or its interval reaches 2τ;
- ok when every metric's interval lies wholly below 2τ (credibly not a change the user
  surely rejects) and no metric regressed;
- inconclusive otherwise: the repeats are too few for their noise.

A tolerance of 0 leaves no zone: any credible rise regresses, anything else is ok.

The error rates hold for the point as a whole: P(regressed | every metric changed by at most
τ/2) <= FALSE_ALARM, split evenly over the gated metrics (Bonferroni: the point regresses if
any one does), and P(ok | some metric changed by 2τ or more) <= MISS (the point is ok only if
that metric is). With several looks (sequential repeats), one critical value holds at every
look (a Pocock-type boundary), found by simulating the exact sequence of t statistics: they are
pivotal under normal noise, so the value depends on the repeat counts alone.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# Per point, across the gated metrics: a false alarm wastes a developer's afternoon and
# teaches them to ignore the gate, so it is held tighter than a miss.
FALSE_ALARM = 0.03
MISS = 0.05
ZONE_FACTOR = 2.0  # the zone is [τ / ZONE_FACTOR, τ * ZONE_FACTOR]
MIN_REPEATS = 2  # the fewest a sequential run takes: one repeat has no spread
SIMULATIONS = 200_000
_SEED = 20240501

REGRESSED = "regressed"
OK = "ok"
INCONCLUSIVE = "inconclusive"
INCONCLUSIVE_POLICIES = ("fail", "pass", "warn")


@dataclass(frozen=True)
class Design:
    """What the gate is asked: the tolerance, and the repeat counts at which it looks."""

    tolerance: float
    metrics: int = 2  # gated metrics the false-alarm rate is split over
    # Head repeat counts at which a verdict is computed; () means one look, at the count the
    # head has (fixed repeats, as ``greenllm compare`` judges).
    looks: tuple[int, ...] = ()

    @property
    def zone(self) -> tuple[float, float]:
        """The indifference zone's edges, as relative changes."""
        return self.tolerance / ZONE_FACTOR, self.tolerance * ZONE_FACTOR


@dataclass(frozen=True)
class Change:
    """One metric's change and its verdict."""

    increase: float  # relative change of the geometric means: 0.1 is 10% more
    low: float | None  # interval of the increase; None: no spread to build one from
    high: float | None
    verdict: str  # REGRESSED, OK or INCONCLUSIVE
    noise: str  # 'repeats', 'history' or 'none' (a single repeat a side: the plain threshold)


def _logs(values: Sequence[float]) -> list[float]:
    return [math.log(v) for v in values]


def _mean(values: Sequence[float]) -> float:
    """The mean, exact where every value is the same: fmean of n copies of x may round to
    the next float above x, and a rise of exactly the tolerance would then fail."""
    first = values[0]
    return first + math.fsum(v - first for v in values) / len(values)


def _sum_squares(values: Sequence[float]) -> float:
    mean = statistics.fmean(values)
    return sum((v - mean) ** 2 for v in values)


@lru_cache(maxsize=256)
def critical_value(base_n: int, looks: tuple[int, ...], level: float, history: bool) -> float:
    """The c with P(max over ``looks`` of the t statistic > c) = ``level`` when the change is
    exactly at a zone edge. With ``history`` the noise is the baseline's spread alone (df =
    base_n - 1), else both sides' pooled (df = base_n + n - 2). Seeded: the same c every run."""
    rng = np.random.default_rng(_SEED)
    last = max(looks)
    base = rng.standard_normal((SIMULATIONS, base_n))
    head = rng.standard_normal((SIMULATIONS, last))
    base_mean = base.mean(axis=1)
    base_ss = ((base - base_mean[:, None]) ** 2).sum(axis=1)
    counts = np.arange(1, last + 1)
    head_mean = np.cumsum(head, axis=1) / counts
    head_ss = np.cumsum(head**2, axis=1) - counts * head_mean**2
    peak = np.full(SIMULATIONS, -np.inf)
    for n in looks:
        if history:
            variance = base_ss / (base_n - 1)
        else:
            variance = (base_ss + head_ss[:, n - 1]) / (base_n + n - 2)
        t = (head_mean[:, n - 1] - base_mean) / np.sqrt(variance * (1 / base_n + 1 / n))
        peak = np.maximum(peak, t)
    return float(np.quantile(peak, 1 - level))


def judge(base: Sequence[float], head: Sequence[float], design: Design, history: bool = False) -> Change:
    """The change of ``head`` against ``base`` (per-repeat values > 0 of one metric) and its
    verdict. With ``history``, ``base`` pools several reports and its spread is the noise."""
    if not base or not head:
        raise ValueError("both sides need at least one repeat")
    if not all(math.isfinite(v) and v > 0 for v in [*base, *head]):
        raise ValueError("every repeat needs a finite value > 0")
    b, h = _logs(base), _logs(head)
    d = statistics.fmean(h) - statistics.fmean(b)
    increase = math.expm1(d)
    low_edge, high_edge = design.zone
    # Compared as a product of plain means, not as `increase > tolerance`: a rise of exactly
    # the tolerance must pass, and a division's or a logarithm's rounding would fail it.
    beyond = _mean(head) > _mean(base) * (1 + design.tolerance)
    history = history and len(b) > 1
    df = len(b) - 1 if history else len(b) + len(h) - 2
    if df < 1:
        # Nothing to tell noise from change: the plain threshold, as the verdict says.
        return Change(increase, None, None, REGRESSED if beyond else OK, "none")
    variance = _sum_squares(b) / df if history else (_sum_squares(b) + _sum_squares(h)) / df
    se = math.sqrt(variance * (1 / len(b) + 1 / len(h)))
    looks = design.looks or (len(h),)
    fire_c = critical_value(len(b), looks, FALSE_ALARM / design.metrics, history)
    pass_c = critical_value(len(b), looks, MISS, history)
    low, high = math.expm1(d - fire_c * se), math.expm1(d + pass_c * se)
    above, below = low > low_edge, high < high_edge
    if design.tolerance == 0:
        # No zone: any credible rise regresses, and nothing is left to settle.
        verdict = REGRESSED if above else OK
    elif above and below:
        # Narrower than the zone: both edges are settled, the tolerance itself decides.
        verdict = REGRESSED if beyond else OK
    else:
        verdict = REGRESSED if above else OK if below else INCONCLUSIVE
    return Change(increase, low, high, verdict, "history" if history else "repeats")


def point_verdict(verdicts: Sequence[str]) -> str | None:
    """The point's verdict from its metrics': any regressed, else all ok, else inconclusive;
    None where no metric was judged."""
    if not verdicts:
        return None
    if REGRESSED in verdicts:
        return REGRESSED
    return OK if all(v == OK for v in verdicts) else INCONCLUSIVE
