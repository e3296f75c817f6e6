"""The energy gate's power curve: how often it fires, and how many repeats it spends, by
true change, noise and method.

Each trial is one knob point judged against a baseline of 5 repeats. A repeat's J/output
token and average power are each one reading of the fake device's noisy power sensor (the
``FakeNvml`` the tests use, ``noise`` its relative standard deviation); the head's device
draws ``power_scale = 1 + change``, so both gated metrics change together, as they do when
the GPU draws more for the same work. The methods:

- ``before``: the rule before the sequential gate (issue 15): the mean above the tolerance
  and a 95% percentile-bootstrap interval of the increase above zero, either metric;
- ``fixed N``: the gate (``gate.py``) at N head repeats, one look;
- ``auto``: the gate with ``--greenllm-repeats=auto``: 2 repeats, then one more at a time
  until the verdict is settled, at most ``--max``.

"fires" counts regressed verdicts; an inconclusive one is counted apart (what it does is
the user's choice: ``--greenllm-inconclusive``). The last table puts ``auto`` beside the
fewest fixed repeats whose errors are as small: what the sequential gate saves.

    python benchmarks/gate_power.py [--points 1000] [--max 10] [--tolerance 0.05]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fake_readings import gated_repeats, gated_summary

from pytest_greenllm.gate import INCONCLUSIVE, MIN_REPEATS, REGRESSED, point_verdict
from pytest_greenllm.record import Summary, energy_regressions

# True changes, in tolerances: 0, +2.5%, +5%, +7.5% and +10% at the default 5%.
CHANGES = (0.0, 0.5, 1.0, 1.5, 2.0)
NOISES = (0.01, 0.03)
BASE_REPEATS = 5
FIXED = (3, 4, 5, 6, 7, 8)


def _before(base: Sequence[float], head: Sequence[float], tolerance: float, rng: random.Random) -> bool:
    """The rule before issue 15, for reference: mean beyond the tolerance and a 2000-resample
    percentile-bootstrap 95% interval of the increase wholly above zero."""
    if statistics.fmean(head) <= statistics.fmean(base) * (1 + tolerance):
        return False
    ratios = sorted(
        statistics.fmean(rng.choices(head, k=len(head))) / statistics.fmean(rng.choices(base, k=len(base)))
        - 1
        for _ in range(2000)
    )
    return ratios[50] > 0


@dataclasses.dataclass
class Tally:
    fired: int = 0
    inconclusive: int = 0
    repeats: int = 0
    trials: int = 0

    def add(self, verdict: str | None, repeats: int) -> None:
        self.trials += 1
        self.fired += verdict == REGRESSED
        self.inconclusive += verdict == INCONCLUSIVE
        self.repeats += repeats

    @property
    def fire_rate(self) -> float:
        return self.fired / self.trials

    @property
    def mean_repeats(self) -> float:
        return self.repeats / self.trials


def _trial(
    base: Summary,
    head_j: Sequence[float],
    head_w: Sequence[float],
    most: int,
    tolerance: float,
    rng: random.Random,
) -> dict[str, tuple[str | None, int]]:
    """One point judged by every method, the head's repeats ``head_j`` (J/output token) and
    ``head_w`` (W): {method: (verdict, head repeats spent)}."""

    def judged(count: int, looks: tuple[int, ...] = ()) -> str | None:
        summary = gated_summary(list(head_j[:count]), list(head_w[:count]))
        return point_verdict([r.outcome for r in energy_regressions(base, summary, tolerance, looks)])

    sides = ((base.j_per_output_token_repeats, head_j), (base.avg_power_w_repeats, head_w))
    fired = any(_before([v for v in b if v is not None], h[:5], tolerance, rng) for b, h in sides)
    out: dict[str, tuple[str | None, int]] = {"before (5)": (REGRESSED if fired else "ok", 5)}
    for count in FIXED:
        out[f"fixed {count}"] = (judged(count), count)
    # As runner.measure does: judged at every look with the boundary of all of them.
    looks = tuple(range(MIN_REPEATS, most + 1))
    count = MIN_REPEATS
    verdict = judged(count, looks)
    while verdict == INCONCLUSIVE and count < most:
        count += 1
        verdict = judged(count, looks)
    out[f"auto (2..{most})"] = (verdict, count)
    return out


def run(points: int, most: int, tolerance: float) -> dict[tuple[str, float, float], Tally]:
    """Every method at every noise and change (in tolerances): {(method, noise, change): tally}."""
    tallies: dict[tuple[str, float, float], Tally] = {}
    rng = random.Random(0)
    for noise in NOISES:
        for change in CHANGES:
            for trial in range(points):
                seed = 1_000_000 * round(noise * 100) + 10_000 * round(change * 10) + trial
                base = gated_summary(*gated_repeats(BASE_REPEATS, noise, 2 * seed))
                head = gated_repeats(max(most, *FIXED), noise, 2 * seed + 1, 1 + change * tolerance)
                for method, (verdict, spent) in _trial(base, *head, most, tolerance, rng).items():
                    tallies.setdefault((method, noise, change), Tally()).add(verdict, spent)
    return tallies


def _same_power(tallies: dict[tuple[str, float, float], Tally], noise: float, auto: str) -> str | None:
    """The fewest fixed repeats that detect a change of twice the tolerance at least as often
    as ``auto`` does; None: no fixed count tried does."""
    target = tallies[(auto, noise, 2.0)].fire_rate
    for count in FIXED:
        if tallies[(f"fixed {count}", noise, 2.0)].fire_rate >= target:
            return f"fixed {count}"
    return None


def main(argv: Sequence[str] | None = None, out: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1000, help="trials per cell. Default: 1000.")
    parser.add_argument("--max", type=int, default=10, help="auto's most repeats. Default: 10.")
    parser.add_argument("--tolerance", type=float, default=0.05, help="Default: 0.05.")
    args = parser.parse_args(argv)
    if args.points < 1 or args.max < MIN_REPEATS or not 0 < args.tolerance < math.inf:
        parser.error(f"--points >= 1, --max >= {MIN_REPEATS}, --tolerance > 0")
    started = time.monotonic()
    tallies = run(args.points, args.max, args.tolerance)
    methods = list(dict.fromkeys(method for method, _, _ in tallies))
    auto = methods[-1]
    for noise in NOISES:
        rows = []
        for method in methods:
            cells = [tallies[(method, noise, change)] for change in CHANGES]
            rows.append(
                (
                    method,
                    *(
                        f"{c.fire_rate:.1%}"
                        + (f" ({c.inconclusive / c.trials:.0%} inc)" if c.inconclusive else "")
                        for c in cells
                    ),
                    *(f"{c.mean_repeats:.2f}" for c in cells[::2]),
                )
            )
        headers = (
            "method",
            *(f"fires at {change * args.tolerance:+.1%}" for change in CHANGES),
            *(f"repeats at {change * args.tolerance:+.1%}" for change in CHANGES[::2]),
        )
        out(
            f"\nnoise {noise:.0%} a repeat, tolerance {args.tolerance:.0%}, {args.points} points a cell, "
            f"baseline {BASE_REPEATS} repeats"
        )
        out(tabulate(rows, headers=headers, disable_numparse=True))
    out(
        "\nauto beside the fewest fixed repeats of the same power (detection at twice the "
        "tolerance), with the false alarms of each at half of it:"
    )
    rows = []
    for noise in NOISES:
        fixed = _same_power(tallies, noise, auto)
        for shown in (auto, fixed):
            if shown is None:
                rows.append((f"{noise:.0%}", f"none up to fixed {FIXED[-1]}", "", "", ""))
                continue
            cells = [tallies[(shown, noise, change)] for change in CHANGES]
            rows.append(
                (
                    f"{noise:.0%}",
                    shown,
                    f"{cells[-1].fire_rate:.1%}",
                    f"{cells[1].fire_rate:.1%}",
                    f"{statistics.fmean(c.mean_repeats for c in cells):.2f}",
                )
            )
    headers = ("noise", "method", "detects 2τ", "false alarm τ/2", "mean repeats (all changes)")
    out(tabulate(rows, headers=headers, disable_numparse=True))
    out(f"\n({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
