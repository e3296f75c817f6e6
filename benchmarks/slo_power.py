"""The SLO verdicts' power: how often a p99 SLO is judged met, and violated, by the true p99
over the limit and the requests a point pools.

Each session is one point whose per-request latency follows a known law: lognormal with
log-sd ``--sigma`` (0.5: the stand-in OpenAI server's TTFT law, tests/test_slo_endpoint.py).
Its limit is set so that the law's true p99 is the row's multiple of it. The methods:

- ``verdict``: the binomial order-statistic verdict (``slo_verdicts.judge_percentile``) over
  every request of the point's repeats pooled, at ``--confidence``; pooled, the split into
  repeats does not change it;
- ``before``: the rule before it, for comparison: each repeat's p99 interpolated
  (numpy.percentile) and the mean over repeats within the limit; with 1 repeat of the
  column's requests, and with 5 repeats of that many each.

A p99 more than the limit is judged met at most 1 − confidence of the time whatever the
requests (docs/slo.md); what more requests buy is the 'met' of a p99 within the limit.

    python benchmarks/slo_power.py [--sessions 2000] [--sigma 0.5] [--confidence 0.95]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np
from tabulate import tabulate

from pytest_greenllm.slo_verdicts import MET, VIOLATED, Samples, certifying_samples, judge_percentile

RATIOS = (0.5, 0.7, 0.9, 1.0, 1.1, 1.25, 1.5)  # true p99 ÷ limit
SIZES = (16, 100, 300, 600)  # requests pooled
BEFORE_REPEATS = 5
P99 = 0.99


@dataclasses.dataclass
class Cell:
    """The verdicts of one (true p99 ÷ limit, requests) cell."""

    sessions: int = 0
    met: int = 0
    violated: int = 0
    before_one: int = 0  # the rule before, 1 repeat, judged within the limit
    before_five: int = 0  # ...5 repeats of the column's requests each


def _seed(ratio: float, requests: int) -> int:
    return 1000 * round(ratio * 100) + requests


def run(sessions: int, sigma: float, confidence: float) -> dict[tuple[float, int], Cell]:
    """Every cell: {(true p99 ÷ limit, requests): cell}."""
    true_p99 = math.exp(sigma * statistics.NormalDist().inv_cdf(P99))  # the law's median is 1
    cells: dict[tuple[float, int], Cell] = {}
    for ratio in RATIOS:
        limit = true_p99 / ratio
        for requests in SIZES:
            rng = np.random.default_rng(_seed(ratio, requests))
            cell = cells.setdefault((ratio, requests), Cell())
            draws = rng.lognormal(0.0, sigma, size=(sessions, requests))
            for row in draws:
                verdict = judge_percentile("ttft_p99", Samples.of(row.tolist()), limit, P99, confidence)
                cell.sessions += 1
                cell.met += verdict.verdict == MET
                cell.violated += verdict.verdict == VIOLATED
            cell.before_one = int((np.percentile(draws, 99, axis=1) <= limit).sum())
            more = rng.lognormal(0.0, sigma, size=(sessions, BEFORE_REPEATS, requests))
            cell.before_five = int((np.percentile(more, 99, axis=2).mean(axis=1) <= limit).sum())
    return cells


def _over_share(ratio: float, sigma: float) -> float:
    """The law's share of requests over the limit, where its p99 is ``ratio`` times it."""
    normal = statistics.NormalDist()
    return 1 - normal.cdf(normal.inv_cdf(P99) - math.log(ratio) / sigma)


def main(argv: Sequence[str] | None = None, out: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=2000, help="sessions a cell. Default: 2000.")
    parser.add_argument("--sigma", type=float, default=0.5, help="the law's log-sd. Default: 0.5.")
    parser.add_argument("--confidence", type=float, default=0.95, help="Default: 0.95.")
    args = parser.parse_args(argv)
    if args.sessions < 1 or not args.sigma > 0 or not 0.5 < args.confidence < 1:
        parser.error("--sessions >= 1, --sigma > 0, 0.5 < --confidence < 1")
    started = time.monotonic()
    cells = run(args.sessions, args.sigma, args.confidence)
    out(
        f"\nlognormal latency (log-sd {args.sigma}), {args.sessions} sessions a cell, "
        f"{args.confidence:.0%} confidence ({certifying_samples(P99, args.confidence)} requests "
        "certify a p99 with none over)"
    )
    out("judged met (violated) by the verdict, every request of the point's repeats pooled:")
    rows = []
    for ratio in RATIOS:
        shown = []
        for requests in SIZES:
            cell = cells[(ratio, requests)]
            shown.append(f"{cell.met / cell.sessions:.1%} ({cell.violated / cell.sessions:.1%})")
        rows.append((f"{ratio:g}", f"{_over_share(ratio, args.sigma):.2%}", *shown))
    headers = ("true p99 ÷ limit", "share over", *(f"{n} requests" for n in SIZES))
    out(tabulate(rows, headers=headers, disable_numparse=True))
    out(
        f"\njudged met by the rule before (mean of per-repeat interpolated p99s <= limit), "
        f"1 repeat / {BEFORE_REPEATS} repeats of the column's requests each:"
    )
    rows = []
    for ratio in RATIOS:
        shown = []
        for requests in SIZES:
            cell = cells[(ratio, requests)]
            shown.append(f"{cell.before_one / cell.sessions:.1%} / {cell.before_five / cell.sessions:.1%}")
        rows.append((f"{ratio:g}", *shown))
    headers = ("true p99 ÷ limit", *(f"{n} requests" for n in SIZES))
    out(tabulate(rows, headers=headers, disable_numparse=True))
    out(f"\n({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
