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
the user's choice: ``--greenllm-inconclusive``). The next table puts ``auto`` beside the
fewest fixed repeats whose errors are as small: what the sequential gate saves.

Then run-to-run noise, at 3% a repeat: each run of a point (three baseline reports, then the
head) draws e^o times the power, o a run offset of sd 1.5% (``fake_readings.run_scales``):

- ``offsets``: independent runs;
- ``drift``: an AR(1) series, neighbouring runs correlated by 0.5 (the head is the newest);
- ``outlier``: independent runs, and the head's first repeat 20% high.

with the methods:

- ``one report``: the newest baseline report alone, pooled t (what ignores the offsets);
- ``one report + profile``: the same, with a noise profile of the true spreads known as
  well as 5 calibration runs know them (between-run df 4; ``greenllm calibrate``);
- ``history of 3``: the three reports pooled, one-way random effects;
- ``history of 3, auto``: the same with sequential head repeats.

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

from fake_readings import (
    Side,
    gated_repeats,
    gated_summary,
    point_runs,
    pooled_summary,
    run_scales,
    with_outlier,
)

from pytest_greenllm.gate import INCONCLUSIVE, MIN_REPEATS, OK, REGRESSED, Noise, point_verdict
from pytest_greenllm.record import Summary, energy_regressions

# True changes, in tolerances: 0, +2.5%, +5%, +7.5% and +10% at the default 5%.
CHANGES = (0.0, 0.5, 1.0, 1.5, 2.0)
NOISES = (0.01, 0.03)
BASE_REPEATS = 5
FIXED = (3, 4, 5, 6, 7, 8)
# Run-to-run noise: (AR(1) correlation, factor of the head's first repeat) by scenario.
SCENARIOS = {"offsets": (0.0, 1.0), "drift": (0.5, 1.0), "outlier": (0.0, 1.2)}
RUN_NOISE, BETWEEN, HISTORY = 0.03, 0.015, 3
# The profile a 5-run calibration of this box would give, its spreads exact: between-run df
# 4 (noise.py: shared offsets are known only as well as the runs show them).
PROFILE = {key: Noise(RUN_NOISE**2, 400, BETWEEN**2, 4) for key in ("j_per_output_token", "avg_power_w")}


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
    ok: int = 0
    repeats: int = 0
    trials: int = 0

    def add(self, verdict: str | None, repeats: int) -> None:
        self.trials += 1
        self.fired += verdict == REGRESSED
        self.inconclusive += verdict == INCONCLUSIVE
        self.ok += verdict == OK
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
    out[f"auto (2..{most})"] = _sequential(judged, most)
    return out


def _sequential(judged: Callable[[int, tuple[int, ...]], str | None], most: int) -> tuple[str | None, int]:
    """As runner.measure does: judged at every look with the boundary of all of them, one
    more repeat while inconclusive. (verdict, repeats spent)."""
    looks = tuple(range(MIN_REPEATS, most + 1))
    count = MIN_REPEATS
    verdict = judged(count, looks)
    while verdict == INCONCLUSIVE and count < most:
        count += 1
        verdict = judged(count, looks)
    return verdict, count


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


def _run_trial(
    runs: Sequence[Side], head: Side, most: int, tolerance: float
) -> dict[str, tuple[str | None, int]]:
    """One point against three baseline runs by every run-noise method: {method: (verdict,
    head repeats spent)}."""

    def judged(base: Summary, count: int, looks: tuple[int, ...] = (), profile: bool = False) -> str | None:
        summary = gated_summary(head[0][:count], head[1][:count])
        noise = PROFILE if profile else None
        return point_verdict([r.outcome for r in energy_regressions(base, summary, tolerance, looks, noise)])

    newest = gated_summary(*runs[-1])
    history = pooled_summary(runs)
    return {
        "one report": (judged(newest, BASE_REPEATS), BASE_REPEATS),
        "one report + profile": (judged(newest, BASE_REPEATS, profile=True), BASE_REPEATS),
        f"history of {HISTORY}": (judged(history, BASE_REPEATS), BASE_REPEATS),
        f"history of {HISTORY}, auto (2..{most})": _sequential(
            lambda n, looks: judged(history, n, looks), most
        ),
    }


def run_noise(points: int, most: int, tolerance: float) -> dict[tuple[str, str, float], Tally]:
    """Every run-noise method in every scenario and change (in tolerances):
    {(scenario, method, change): tally}."""
    tallies: dict[tuple[str, str, float], Tally] = {}
    for index, (scenario, (rho, outlier)) in enumerate(SCENARIOS.items()):
        for change in CHANGES:
            for trial in range(points):
                seed = 100_000_000 * (index + 1) + 100_000 * round(change * 10) + trial
                scales = run_scales(HISTORY + 1, BETWEEN, rho, seed)
                sides = point_runs(max(most, BASE_REPEATS), RUN_NOISE, seed, scales, change * tolerance)
                runs = [(j[:BASE_REPEATS], w[:BASE_REPEATS]) for j, w in sides[:HISTORY]]
                head = with_outlier(sides[HISTORY], outlier)
                for method, (verdict, spent) in _run_trial(runs, head, most, tolerance).items():
                    tally = tallies.setdefault((scenario, method, change), Tally())
                    tally.add(verdict, spent)
    return tallies


def _run_noise_tables(
    tallies: dict[tuple[str, str, float], Tally], tolerance: float, points: int
) -> list[str]:
    lines = []
    methods = list(dict.fromkeys(method for _, method, _ in tallies))
    for scenario in SCENARIOS:
        rows = []
        for method in methods:
            cells = [tallies[(scenario, method, change)] for change in CHANGES]
            rows.append(
                (
                    method,
                    *(
                        f"{c.fire_rate:.1%}"
                        + (f" ({c.inconclusive / c.trials:.0%} inc)" if c.inconclusive else "")
                        for c in cells
                    ),
                    f"{cells[-1].ok / cells[-1].trials:.1%}",
                    f"{statistics.fmean(c.mean_repeats for c in cells):.2f}",
                )
            )
        headers = (
            "method",
            *(f"fires at {change * tolerance:+.1%}" for change in CHANGES),
            f"ok at {CHANGES[-1] * tolerance:+.1%}",
            "mean head repeats",
        )
        rho, outlier = SCENARIOS[scenario]
        what = f"AR(1) ρ={rho:g}" if rho else "independent runs"
        if outlier != 1:
            what += f", head's first repeat {outlier - 1:+.0%}"
        lines.append(
            f"\n{scenario}: run-to-run sd {BETWEEN:.1%} ({what}), noise {RUN_NOISE:.0%} a repeat, "
            f"{HISTORY} baseline reports of {BASE_REPEATS} repeats, tolerance {tolerance:.0%}, "
            f"{points} points a cell"
        )
        lines.append(tabulate(rows, headers=headers, disable_numparse=True))
    return lines


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
    for line in _run_noise_tables(
        run_noise(args.points, args.max, args.tolerance), args.tolerance, args.points
    ):
        out(line)
    out(f"\n({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
