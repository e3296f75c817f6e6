"""Percentile SLO verdicts with a stated confidence: met, violated or inconclusive (pure).

A p99 SLO says: at most 1% of requests may take longer than the limit. Whether a point meets
it is a question about the share p of requests over the limit, and the number m of measured
samples over it is Binomial(n, p) when the samples are independent. So, at confidence 1 − α:

- **met** when P(Binomial(n, 1 − q) <= m) <= α: had the true share over the limit been the
  SLO's 1 − q or more, so few exceedances would have been seen at most α of the time;
- **violated** when P(Binomial(n, 1 − q) >= m) <= α / k, for k percentile SLOs on the point
  (Bonferroni: the point is violated if any one is);
- **inconclusive** otherwise: too few samples to tell.

This is the test of MLPerf LoadGen's early stopping (mlcommons/inference,
``loadgen/early_stopping.cc``: "the odds of t or fewer overlatency queries in h + t total
queries", a binomial CDF), here applied in both directions. It is exact for independent
samples of any distribution, the same for every latency law: no normality. With no sample
over the limit it certifies a p99 from ``certifying_samples(0.99, 0.95)`` = 299 samples up.

The bounds printed beside the estimate are the order-statistic confidence bounds of the
percentile (X_(u) >= ξ_q with probability >= 1 − α): the verdict is met exactly when the upper
bound is within the limit.

Samples may arrive as a tail only: the largest values and the count of all of them (token gaps
are too many to keep each). A count of exceedances that runs past the known tail is only a
lower bound: it can still prove a violation, never a pass.
"""

from __future__ import annotations

import bisect
import heapq
import math
import operator
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pytest_greenllm.gate import t_quantile

MET = "met"
VIOLATED = "violated"
INCONCLUSIVE = "inconclusive"
DEFAULT_CONFIDENCE = 0.95
# Token gaps kept per repeat: their largest values, enough for p99's bounds when pooled.
TAIL_SHARE = 0.05
MIN_TAIL = 64
ASSUMPTION = "independent samples (binomial order statistics)"


def tail_size(count: int) -> int:
    """How many of ``count`` values a repeat keeps (its largest)."""
    return min(count, max(MIN_TAIL, math.ceil(TAIL_SHARE * count)))


def keep_tail(values: Sequence[float]) -> tuple[float, ...]:
    """The largest ``tail_size`` of ``values``, largest first."""
    return tuple(heapq.nlargest(tail_size(len(values)), values))


@dataclass(frozen=True)
class Samples:
    """A pooled sample: its largest values (largest first) and how many there are in all.
    ``exact`` counts the leading values that are certainly the largest of the pool."""

    tail: tuple[float, ...]
    count: int
    exact: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Samples:
        """Every value known."""
        ordered = tuple(sorted(values, reverse=True))
        return cls(ordered, len(ordered), len(ordered))

    @classmethod
    def pooled(cls, parts: Sequence[tuple[Sequence[float], int]]) -> Samples:
        """Tails (largest first, or in any order) with the count each was cut from. A value
        a cut tail left out is at most that tail's smallest: the pool's top values are exact
        down to the highest such floor, and beyond it a value of that part may be missing.
        (Not merely as far as the shortest cut tail reaches: with k equal repeats that is
        1/k of each tail, short of a p99 from five repeats of 5% tails.)"""
        tail = tuple(sorted((v for values, _ in parts for v in values), reverse=True))
        count = sum(n for _, n in parts)
        cut = [values for values, n in parts if len(values) < n]
        if not cut:
            return cls(tail, count, len(tail))
        if not all(cut):
            return cls(tail, count, 0)
        floor = max(min(values) for values in cut)
        return cls(tail, count, bisect.bisect_right(tail, -floor, key=operator.neg))

    def over(self, limit: float) -> tuple[int, bool]:
        """(values over ``limit``, whether that count is exact rather than a lower bound)."""
        # The tail is largest first: the values over the limit are its head.
        m = bisect.bisect_left(self.tail, -limit, key=operator.neg)
        return m, m < self.exact or self.exact == self.count

    def largest(self, rank: int) -> float | None:
        """The ``rank``-th largest value (1: the maximum); None where it is not known."""
        return self.tail[rank - 1] if 1 <= rank <= self.exact else None


def _log_pmf(n: int, p: float, ks: np.ndarray) -> np.ndarray:
    """log P(Binomial(n, p) = k) for each k of ``ks`` (0 <= k <= n). The log factorials come
    from one cumulative sum, in numpy: a TBT SLO judges hundreds of thousands of token gaps,
    which math.lgamma one at a time took half a second for."""
    log_factorial = np.concatenate(([0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=float)))))
    out: np.ndarray = log_factorial[n] - log_factorial[ks] - log_factorial[n - ks]
    return out + ks * math.log(p) + (n - ks) * math.log1p(-p)


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= k)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return float(min(1.0, np.exp(_log_pmf(n, p, np.arange(k + 1))).sum()))


def binom_sf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) >= k)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return float(min(1.0, np.exp(_log_pmf(n, p, np.arange(k, n + 1))).sum()))


def certifying_samples(quantile: float, confidence: float) -> int:
    """The fewest samples that certify a ``quantile`` SLO at ``confidence`` when none is over
    the limit: the smallest n with quantile^n <= 1 − confidence."""
    return math.ceil(math.log(1 - confidence) / math.log(quantile) - 1e-12)


def quantile_bounds(
    samples: Samples, quantile: float, confidence: float
) -> tuple[float | None, float | None]:
    """Order-statistic bounds (lower, upper) of the ``quantile``, each holding with
    probability >= ``confidence``; None where the sample is too small or its tail too short."""
    n = samples.count
    if n == 0:
        return None, None
    # Upper: the smallest rank u (from the bottom) with P(Bin(n, q) <= u − 1) >= confidence.
    ks = np.arange(n + 1)
    cdf = np.cumsum(np.exp(_log_pmf(n, quantile, ks)))
    ups = np.nonzero(cdf >= confidence)[0]
    upper = None
    if len(ups) and ups[0] + 1 <= n:
        upper = samples.largest(n - int(ups[0]))
    # Lower: the largest rank l with P(Bin(n, q) >= l) = 1 − cdf(l − 1) >= confidence.
    lows = np.nonzero(1 - cdf[:-1] >= confidence)[0]
    lower = samples.largest(n - int(lows[-1])) if len(lows) else None
    return lower, upper


def percentile_estimate(samples: Samples, quantile: float) -> float | None:
    """The ``quantile`` by linear interpolation (numpy.percentile's default), where the
    tail reaches it."""
    n = samples.count
    if n == 0:
        return None
    position = (n - 1) * quantile  # from the bottom, 0-based
    below = math.floor(position)
    fraction = position - below
    at = samples.largest(n - below)  # rank n - i from the top is index i from the bottom
    if fraction == 0:
        return at
    above = samples.largest(n - below - 1)
    return None if at is None or above is None else at + (above - at) * fraction


@dataclass(frozen=True)
class SloVerdict:
    """One percentile SLO of a point, judged over every request of its repeats."""

    metric: str  # e.g. 'ttft_p99'
    quantile: float | None  # 0.99 for p99; None for the throughput floor
    limit: float  # Units: ms.
    estimate: float | None  # the pooled percentile. Units: ms.
    low: float | None  # confidence bounds of the percentile; None: too few samples
    high: float | None
    samples: int
    over: int  # samples over the limit (a lower bound where ``over_exact`` is false)
    over_exact: bool
    confidence: float
    verdict: str  # MET, VIOLATED or INCONCLUSIVE
    # The error rates this verdict holds at: P(met | truly violated) <= false_pass, and
    # P(violated | truly met) <= false_fail.
    false_pass: float
    false_fail: float
    assumption: str = ASSUMPTION
    unit: str = "ms"

    def message(self, point_id: str) -> str:
        """One line: the verdict, estimate, bounds, limit and error rates."""
        estimate = "n/a" if self.estimate is None else f"{self.estimate:.4g}"
        bounds = (
            f"{self.confidence:.0%} bounds {_fmt(self.low)} to {_fmt(self.high)} {self.unit}"
            if self.samples
            else "no samples"
        )
        side = "under" if self.quantile is None else "over"
        over = f"{self.over}{'' if self.over_exact else '+'} of {self.samples} {side}"
        return (
            f"SLO {self.verdict} at {point_id}: {self.metric} = {estimate} {self.unit} "
            f"({bounds}; {over}) against limit {self.limit:.4g} {self.unit}; "
            f"P(met | violated) <= {self.false_pass:.1%}, P(violated | met) <= {self.false_fail:.1%}, "
            f"assuming {self.assumption}"
        )


def _fmt(value: float | None) -> str:
    return "?" if value is None else f"{value:.4g}"


def judge_percentile(
    metric: str,
    samples: Samples,
    limit: float,
    quantile: float,
    confidence: float = DEFAULT_CONFIDENCE,
    slos: int = 1,
) -> SloVerdict:
    """The verdict of one percentile SLO (module docstring); ``slos``: how many percentile
    SLOs the point has, over which the false-violation rate is split."""
    alpha = 1 - confidence
    n = samples.count
    m, exact = samples.over(limit)
    share = 1 - quantile
    verdict = INCONCLUSIVE
    if n and exact and binom_cdf(m, n, share) <= alpha:
        verdict = MET
    elif n and binom_sf(m, n, share) <= alpha / slos:
        verdict = VIOLATED
    low, _ = quantile_bounds(samples, quantile, 1 - alpha / slos)
    _, high = quantile_bounds(samples, quantile, confidence)
    return SloVerdict(
        metric=metric,
        quantile=quantile,
        limit=limit,
        estimate=percentile_estimate(samples, quantile),
        low=low,
        high=high,
        samples=n,
        over=m,
        over_exact=exact,
        confidence=confidence,
        verdict=verdict,
        false_pass=alpha,
        false_fail=alpha / slos,
    )


def point_slo_verdict(verdicts: Sequence[str]) -> str | None:
    """Violated if any is, met if all are, else inconclusive; None without an SLO."""
    if not verdicts:
        return None
    if VIOLATED in verdicts:
        return VIOLATED
    return MET if all(v == MET for v in verdicts) else INCONCLUSIVE


def judge_throughput(
    values: Sequence[float], minimum: float, confidence: float = DEFAULT_CONFIDENCE, slos: int = 1
) -> SloVerdict:
    """The throughput floor over the repeats' throughputs (tokens/s): met when the t lower
    bound of the mean is at least ``minimum``, violated when its upper bound (at the split
    level) is below; one repeat has no spread, and is inconclusive."""
    n = len(values)
    mean = statistics.fmean(values) if values else None
    alpha = 1 - confidence
    low = high = None
    verdict = INCONCLUSIVE
    if n >= 2 and mean is not None:
        se = statistics.stdev(values) / math.sqrt(n)
        low = mean - t_quantile(confidence, n - 1) * se
        high = mean + t_quantile(1 - alpha / slos, n - 1) * se
        if low >= minimum:
            verdict = MET
        elif high < minimum:
            verdict = VIOLATED
    return SloVerdict(
        metric="throughput_min",
        quantile=None,
        limit=minimum,
        estimate=mean,
        low=low,
        high=high,
        samples=n,
        over=sum(1 for v in values if v < minimum),
        over_exact=True,
        confidence=confidence,
        verdict=verdict,
        false_pass=alpha,
        false_fail=alpha / slos,
        assumption="independent repeats, normal throughput (t interval)",
        unit="tok/s",
    )
