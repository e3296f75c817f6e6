"""``greenllm calibrate``: A/A runs of the same points, the box's noise profile from them, and
what each repeat count can detect on this box.

A team sets ``--greenllm-repeats`` and the tolerance from habit; the gate's error rates then
hold only under its own noise model. Here the noise is measured instead: K separate runs of
the same sweep (each its own pytest process, as CI runs them), within-run and between-run
spread estimated per gated metric (noise.py), and the smallest change each repeat count tells
from none at the gate's stated error rates.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from tabulate import tabulate

from pytest_greenllm.gate import FALSE_ALARM, MISS, ZONE_FACTOR
from pytest_greenllm.noise import NoiseError, NoiseProfile, detectable_changes, estimate, noise_line
from pytest_greenllm.record import GATED_METRICS, Report
from pytest_greenllm.report import load_report

REPEAT_COUNTS = (1, 2, 3, 5, 8, 10)


def run_aa(
    runs: int,
    folder: Path,
    pytest_args: Sequence[str],
    say: Callable[[str], None],
    run: Callable[[list[str]], int] = lambda argv: subprocess.call(argv),
) -> list[Path]:
    """Run the sweep ``runs`` times, each in a fresh pytest process, its report in
    ``folder``; NoiseError where a run fails or writes no report."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(1, runs + 1):
        path = folder / f"aa-{index}.json"
        argv = [sys.executable, "-m", "pytest", "--greenllm", f"--greenllm-json={path}", *pytest_args]
        say(f"greenllm calibrate: run {index} of {runs}: {' '.join(argv[1:])}")
        status = run(argv)
        if status != 0 or not path.exists():
            raise NoiseError(
                f"calibration run {index} of {runs} exited {status}"
                + ("" if path.exists() else " without a report")
                + "; fix that run first (its output is above)"
            )
        paths.append(path)
    return paths


def profile_of(paths: Sequence[Path]) -> NoiseProfile:
    """The noise profile of the reports at ``paths``."""
    reports: list[Report] = [load_report(path) for path in paths]
    return estimate(reports)


def render(profile: NoiseProfile, tolerance: float) -> str:
    """The profile's figures, and the smallest change each repeat count can detect."""
    lines = [f"noise: {noise_line(profile)}", ""]
    rows = []
    for metric in GATED_METRICS:
        noise = profile.metrics.get(metric.key)
        if noise is None:
            continue
        for d in detectable_changes(noise, REPEAT_COUNTS):
            rows.append((metric.label, d.repeats, f"{d.se:.2%}", f"{d.smallest_change:+.1%}"))
    lines.append(
        tabulate(rows, headers=("metric", "repeats a side", "SE of the change", "smallest change detected"))
    )
    low, high = tolerance / ZONE_FACTOR, tolerance * ZONE_FACTOR
    width = (1 + high) / (1 + low) - 1
    lines += [
        "",
        f"'smallest change detected': called regressed at least {1 - MISS:.0%} of the time, with "
        f"false alarms at no change held to {FALSE_ALARM:.0%} per point, one baseline report and "
        f"this profile's run-to-run spread (docs/gate.md). At a {tolerance:.0%} tolerance the "
        f"gate's zone is {low:.1%} to {high:.0%}: a repeat count whose smallest change is at most "
        f"{width:.1%} (the zone's width) settles most points; where none is, the run-to-run "
        "spread dominates, or is known from too few runs (with few, more repeats can even "
        "detect less: the spread's few degrees of freedom weigh more): calibrate with more "
        "runs, widen the tolerance, or pool a history of baseline reports.",
    ]
    return "\n".join(lines)
