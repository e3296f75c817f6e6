"""The energy gate's statistics: is a point's change within the tolerance, beyond it, or not
yet known? Pure; ``docs/gate.md`` gives the reasoning and the sources.

The user's tolerance τ is the centre of an indifference zone [τ/2, 2τ] of relative change.
For each gated metric a confidence interval of the change is computed from the log of each
repeat's value: a pooled two-sample t interval where the baseline is one run, or, where it is
a history of runs or a noise profile gives the box's run-to-run spread, a one-way random
effects interval (each run its own offset, Satterthwaite's degrees of freedom). The point:

- regressed when some metric's interval lies wholly above τ/2 (credibly worse than a change
  the user surely accepts) and that metric's change is above τ or its interval reaches 2τ;
- ok when every metric's interval lies wholly below 2τ (credibly not a change the user
  surely rejects) and no metric regressed;
- inconclusive otherwise: the repeats are too few for their noise (one repeat a side, with
  nothing else to estimate the noise from, is always inconclusive).

A tolerance of 0 leaves no zone: any credible rise regresses, anything else is ok.

The error rates hold for the point as a whole: P(regressed | every metric changed by at most
τ/2) <= FALSE_ALARM, split evenly over the gated metrics (Bonferroni: the point regresses if
any one does), and P(ok | some metric changed by 2τ or more) <= MISS (the point is ok only if
that metric is). With several looks (sequential repeats), one critical value holds at every
look: for the pooled t, a Pocock-type boundary found by simulating the exact sequence of t
statistics (pivotal under normal noise, so the value depends on the repeat counts alone); for
random effects, whose statistics are not pivotal, each look gets an equal share of the level
(Bonferroni), which holds whatever the noise.
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
# The fewest repeats 'auto' runs without a baseline: the report will be the next run's
# baseline, and 2 repeats of it leave +10% caught 41% of the time.
BASELINE_REPEATS = 5
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
    # 'repeats' (pooled t), 'history' (random effects over a history of runs), 'profile'
    # (random effects with a noise profile's between-run floor) or 'none' (nothing to tell
    # noise from change: inconclusive)
    noise: str


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
def critical_value(base_n: int, looks: tuple[int, ...], level: float) -> float:
    """The c with P(max over ``looks`` of the pooled two-sample t statistic > c) = ``level``
    when the change is exactly at a zone edge (df = base_n + n - 2 at look n). Seeded: the
    same c every run."""
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
        variance = (base_ss + head_ss[:, n - 1]) / (base_n + n - 2)
        t = (head_mean[:, n - 1] - base_mean) / np.sqrt(variance * (1 / base_n + 1 / n))
        peak = np.maximum(peak, t)
    return float(np.quantile(peak, 1 - level))


@dataclass(frozen=True)
class Noise:
    """What a noise profile (``greenllm calibrate``) knows of one metric on one box: the
    variance of log values within a run and between runs' means, with their degrees of
    freedom."""

    within_var: float
    within_df: int
    between_var: float
    between_df: int


@dataclass(frozen=True)
class Term:
    """One mean square of a variance estimate, its coefficient and degrees of freedom."""

    coefficient: float
    mean_square: float
    df: float  # math.inf for a variance taken as known

    @property
    def value(self) -> float:
        return self.coefficient * self.mean_square


def satterthwaite(terms: Sequence[Term]) -> tuple[float, float]:
    """(variance, degrees of freedom) of a linear combination of mean squares (Satterthwaite,
    Biometrics Bulletin 2, 1946)."""
    variance = sum(t.value for t in terms)
    spread = sum(t.value**2 / t.df for t in terms if math.isfinite(t.df) and t.df > 0)
    return variance, (variance**2 / spread if spread > 0 else math.inf)


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta function I_x(a, b), by
    Lentz's method (Numerical Recipes, 3rd ed., 6.4)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 100_000):
        even = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        for numerator in (even, odd):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return fraction


def _t_tail(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom, t >= 0:
    I_x(df/2, 1/2) / 2 with x = df / (df + t²)."""
    a, b = df / 2, 0.5
    x, y = df / (df + t * t), t * t / (df + t * t)  # y = 1 - x, without its cancellation
    if y == 0:
        return 0.5
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(y))
    if x < (a + 1) / (a + b + 2):
        return front * _beta_fraction(a, b, x) / a / 2
    return (1 - front * _beta_fraction(b, a, y) / b) / 2


@lru_cache(maxsize=1024)
def t_quantile(level: float, df: float) -> float:
    """Student's t quantile (no SciPy): the regularized incomplete beta function inverted by
    Newton's method inside a bisection bracket, to about 1e-12; the normal's where ``df`` is
    infinite. Exact and quick, where a draw-based one would be neither: Satterthwaite's
    degrees of freedom differ from point to point."""
    if not 0 < level < 1 or not df > 0:
        raise ValueError(f"t_quantile: level {level} must be in (0, 1) and df {df} > 0")
    z = statistics.NormalDist().inv_cdf(level)
    if math.isinf(df) or level == 0.5:
        return z
    if level < 0.5:
        return -t_quantile(1 - level, df)
    tail = 1 - level
    log_scale = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - math.log(df * math.pi) / 2
    low, high = 0.0, math.inf
    t = z + (z**3 + z) / (4 * df)  # Cornish-Fisher's first term: a start near the answer
    for _ in range(200):
        excess = _t_tail(t, df) - tail
        if excess > 0:
            low = t
        else:
            high = t
        density = math.exp(log_scale - (df + 1) / 2 * math.log1p(t * t / df))
        step = t + excess / density  # the tail falls by the density as t rises
        if not low < step < high:
            step = (low + high) / 2 if math.isfinite(high) else 2 * t
        if abs(step - t) <= 1e-13 * step:
            return step
        t = step
    return t


def _random_effects(
    base_runs: Sequence[Sequence[float]], head: Sequence[float], noise: Noise | None
) -> tuple[float, float] | None:
    """(variance, df) of mean(head) − mean of the base runs' means, on log values, when each
    run has its own offset (one-way random effects): the head is one more run. Within-run
    variance is pooled from every run, the head's own included; between-run variance is the
    base runs' means' spread less its within part, never below the profile's floor. None
    where nothing estimates the noise."""
    runs = len(base_runs)
    # Each run's offset is shared by all its repeats: the head's counts once, the base
    # mean's R runs' offsets average to 1/R of one.
    offsets = 1 + 1 / runs
    between = (
        Term(offsets, statistics.variance([statistics.fmean(r) for r in base_runs]), runs - 1)
        if runs > 1
        else None
    )
    within_ss = sum(_sum_squares(r) for r in base_runs if len(r) > 1) + (
        _sum_squares(head) if len(head) > 1 else 0
    )
    within_df = sum(len(r) - 1 for r in base_runs) + len(head) - 1
    within = Term(1.0, within_ss / within_df, within_df) if within_df > 0 else None
    if within is None and noise is not None:
        within = Term(1.0, noise.within_var, noise.within_df)
    if within is None:
        # One repeat in every run: the spread of the runs' values holds both kinds of noise,
        # in the share the head's one repeat has (a history of single-repeat reports).
        return None if between is None else satterthwaite([between])
    h_bar = statistics.fmean(1 / len(r) for r in base_runs)
    floor = noise.between_var if noise is not None else 0.0
    floor_df = noise.between_df if noise is not None else math.inf
    floored = [
        Term(offsets, floor, floor_df),
        Term(1 / len(head) + h_bar / runs, within.mean_square, within.df),
    ]
    candidates = [satterthwaite(floored)]
    if between is not None:
        # E[var of run means] = σ_b² + σ_w² · mean(1/n_i): what is left of σ_w² after the
        # base's share is the head's own. Where the head has more repeats than the runs
        # (1/n_h < mean(1/n_i)) that is a subtraction, whose Satterthwaite df can fall below
        # 1 (Gaylor & Hopper, Technometrics 11, 1969): it is left out, which overstates the
        # variance by at most that share, and the df stay the runs' R - 1.
        head_share = max(0.0, 1 / len(head) - h_bar)
        candidates.append(satterthwaite([between, Term(head_share, within.mean_square, within.df)]))
    # The larger variance; where two agree but for rounding, the fewer df, so that scaling
    # every value (which moves each only by rounding) cannot change which one is used.
    variance = max(v for v, _ in candidates)
    return variance, min(df for v, df in candidates if v >= variance * (1 - 1e-9))


def judge(
    base_runs: Sequence[Sequence[float]],
    head: Sequence[float],
    design: Design,
    noise: Noise | None = None,
) -> Change:
    """The change of ``head`` (one run's per-repeat values > 0 of one metric) against the
    baseline's runs (one report's repeats, or each of a history of reports'). With one base
    run and no ``noise``, the two runs' repeats are the noise (pooled t); with several, or a
    noise profile, each run's own offset counts too (random effects)."""
    values = [v for r in base_runs for v in r]
    if not values or not head or any(not r for r in base_runs):
        raise ValueError("both sides need at least one repeat")
    if not all(math.isfinite(v) and v > 0 for v in [*values, *head]):
        raise ValueError("every repeat needs a finite value > 0")
    runs = [_logs(r) for r in base_runs]
    h = _logs(head)
    # _mean: runs that agree have exactly their common mean, so identical sides change by 0.
    base_mean = _mean([statistics.fmean(r) for r in runs])
    d = statistics.fmean(h) - base_mean
    increase = math.expm1(d)
    low_edge, high_edge = design.zone
    # Compared as a product of plain means, not as `increase > tolerance`: a rise of exactly
    # the tolerance must pass, and a division's or a logarithm's rounding would fail it.
    beyond = _mean(head) > _mean(values) * (1 + design.tolerance)
    looks = design.looks or (len(h),)
    if len(runs) == 1 and noise is None:
        b = runs[0]
        df = len(b) + len(h) - 2
        if df < 1:
            # Nothing tells noise from change: one repeat a side is no verdict.
            return Change(increase, None, None, INCONCLUSIVE, "none")
        se = math.sqrt((_sum_squares(b) + _sum_squares(h)) / df * (1 / len(b) + 1 / len(h)))
        fire_c = critical_value(len(b), looks, FALSE_ALARM / design.metrics)
        pass_c = critical_value(len(b), looks, MISS)
        kind = "repeats"
    else:
        estimate = _random_effects(runs, h, noise)
        if estimate is None or not estimate[1] >= 1:
            return Change(increase, None, None, INCONCLUSIVE, "none")
        variance, df_re = estimate
        se = math.sqrt(variance)
        # Several looks share each level equally (Bonferroni): valid whatever the ratio of
        # between- to within-run noise, on which the exact sequential boundary would depend.
        fire_c = t_quantile(1 - FALSE_ALARM / design.metrics / len(looks), round(df_re, 1))
        pass_c = t_quantile(1 - MISS / len(looks), round(df_re, 1))
        kind = "history" if len(runs) > 1 else "profile"
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
    return Change(increase, low, high, verdict, kind)


def point_verdict(verdicts: Sequence[str]) -> str | None:
    """The point's verdict from its metrics': any regressed, else all ok, else inconclusive;
    None where no metric was judged."""
    if not verdicts:
        return None
    if REGRESSED in verdicts:
        return REGRESSED
    return OK if all(v == OK for v in verdicts) else INCONCLUSIVE
