"""Noise profiles: how much a box's energy figures vary within a run and between runs, measured
by A/A runs (the same points, K separate runs), for the energy gate to judge with.

The model is one-way random effects on log values: a repeat of point p in run r is
μ_p + o_r + e, with o_r ~ N(0, σ_b²) the run's offset (another boot, another GPU temperature,
another neighbour) and e ~ N(0, σ_w²) the repeat's own noise. From K runs of every point:

- σ_w² is the pooled within-run variance (df = Σ (n − 1));
- σ_b² is the variance of each point's run means less their within part, pooled over points,
  never below 0. Its df are not Σ (K − 1): where the runs' offsets are shared by their points
  (the usual case, below), every point shows the same K offsets, and 20 points of 5 runs know
  them no better than one point does (df 4, not 80). The run means split into the runs'
  common offsets (df K − 1) and each point's own (df (K − 1)(P − 1)), and Satterthwaite's
  df of their sum is what the profile states.

Only points measured in every run (a value > 0 in each) count.

Both are relative (log) figures, pooled over points: a box's run-to-run drift is mostly the
same share of every point's energy. ``greenllm calibrate`` writes a profile; the gate reads it
(``--greenllm-noise``, ``greenllm compare --noise``) as the floor of the between-run
variance, which one baseline report cannot show.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pytest_greenllm.gate import FALSE_ALARM, MISS, Noise, Term, satterthwaite, t_quantile
from pytest_greenllm.record import GATED_METRICS, Report
from pytest_greenllm.report import ReportError, check_setup

SCHEMA = "pytest-greenllm noise profile"
SCHEMA_VERSION = 1


class NoiseError(ReportError):
    """A profile that cannot be made or read; the message says why."""


@dataclass(frozen=True)
class NoiseProfile:
    """The noise of each gated metric on one setup (its fingerprint)."""

    fingerprint: dict[str, Any]
    metrics: dict[str, Noise]  # by summary key (j_per_output_token, avg_power_w)
    runs: int  # the A/A runs it was estimated from
    points: int
    created: str = ""

    def to_json(self) -> dict[str, Any]:
        """The profile as its file stores it."""
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "created": self.created,
            "fingerprint": self.fingerprint,
            "runs": self.runs,
            "points": self.points,
            "metrics": {
                key: {
                    "within_sd": math.sqrt(n.within_var),
                    "within_df": n.within_df,
                    "between_sd": math.sqrt(n.between_var),
                    "between_df": n.between_df,
                }
                for key, n in self.metrics.items()
            },
        }

    @classmethod
    def from_json(cls, data: Any, name: str) -> NoiseProfile:
        """A stored profile; NoiseError says what does not fit."""
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise NoiseError(f"{name}: not a pytest-greenllm noise profile")
        if data.get("schema_version") != SCHEMA_VERSION:
            version = data.get("schema_version")
            raise NoiseError(f"{name}: schema_version {version!r}; this tool reads {SCHEMA_VERSION}")
        metrics: dict[str, Noise] = {}
        try:
            for key, m in data["metrics"].items():
                within_sd, between_sd = float(m["within_sd"]), float(m["between_sd"])
                within_df, between_df = int(m["within_df"]), int(m["between_df"])
                if not (within_sd >= 0 and between_sd >= 0 and within_df >= 1 and between_df >= 1):
                    raise ValueError(f"{key}: spreads must be >= 0 and degrees of freedom >= 1")
                metrics[key] = Noise(within_sd**2, within_df, between_sd**2, between_df)
            return cls(
                dict(data["fingerprint"]),
                metrics,
                int(data["runs"]),
                int(data["points"]),
                str(data.get("created", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise NoiseError(f"{name}: malformed profile ({e})") from None


def read_profile(
    path: Path, fingerprint: dict[str, Any] | None = None, allow_mismatch: bool = False
) -> NoiseProfile:
    """The profile at ``path``, refused (SetupMismatch) where it was measured on another setup
    than ``fingerprint``."""
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise NoiseError(f"{path}: cannot read it ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        raise NoiseError(f"{path}: not JSON ({e})") from None
    profile = NoiseProfile.from_json(data, str(path))
    if fingerprint is not None:
        known = {k: v for k, v in fingerprint.items() if v is not None}
        check_setup(profile.fingerprint, known, str(path), allow=allow_mismatch)
    return profile


def write_profile(path: Path, profile: NoiseProfile) -> None:
    """Write ``profile`` to ``path`` (its folder made if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(profile.to_json(), indent=2) + "\n")


def _logs(values: Sequence[float | None]) -> list[float]:
    return [math.log(v) for v in values if v is not None and math.isfinite(v) and v > 0]


def _between(table: list[list[list[float]]], within: Term) -> tuple[float, int]:
    """(σ_b², df) from ``table[point][run]``, each cell a run's logs of a point (none empty),
    and the pooled within-run mean square.

    σ_b² is the mean over points of the variance of their run means, less its within part.
    That mean splits (two-way, points × runs) into the runs' common offsets, with K − 1 df
    whatever the number of points, and each point's own, with (K − 1)(P − 1): pooling points
    adds information only about the second. The df of the whole, the within part taken off,
    are Satterthwaite's (at least 1)."""
    points, runs = len(table), len(table[0])
    means = [[statistics.fmean(cell) for cell in row] for row in table]
    point_means = [statistics.fmean(row) for row in means]
    run_means = [statistics.fmean(row[r] for row in means) for r in range(runs)]
    grand = statistics.fmean(point_means)
    ms_runs = points * sum((m - grand) ** 2 for m in run_means) / (runs - 1)
    terms = [Term(1 / points, ms_runs, runs - 1)]
    if points > 1:
        interaction = sum(
            (means[p][r] - point_means[p] - run_means[r] + grand) ** 2
            for p in range(points)
            for r in range(runs)
        )
        df = (runs - 1) * (points - 1)
        terms.append(Term((points - 1) / points, interaction / df, df))
    share = statistics.fmean(1 / len(cell) for row in table for cell in row)
    variance, df_b = satterthwaite([*terms, Term(-share, within.mean_square, within.df)])
    return max(0.0, variance), max(1, math.floor(min(df_b, 10**9)))


def estimate(reports: Sequence[Report]) -> NoiseProfile:
    """The profile of K >= 2 A/A reports of one setup (module docstring). NoiseError where
    they are too few, of different setups, or share no point measured in every run with
    two repeats in some."""
    if len(reports) < 2:
        raise NoiseError(f"calibration needs at least 2 runs' reports, got {len(reports)}")
    first = reports[0]
    for report in reports[1:]:
        check_setup(first.fingerprint, report.fingerprint, "a calibration run")
    shared = sorted(set.intersection(*({p.id for p in r.points} for r in reports)))
    if not shared:
        raise NoiseError("the calibration runs' reports share no point: run the same sweep each time")
    metrics: dict[str, Noise] = {}
    for metric in GATED_METRICS:
        table = []  # [point][run]: the logs of the points measured in every run
        for point_id in shared:
            row = []
            for report in reports:
                point = report.point(point_id)
                row.append(_logs(metric.repeats(point.summary)) if point is not None else [])
            if all(row):
                table.append(row)
        within_df = sum(len(cell) - 1 for row in table for cell in row)
        if not table or within_df < 1:
            raise NoiseError(
                f"{metric.label}: no point has a value > 0 in every run and 2 or more repeats in "
                "some; run each calibration run with --greenllm-repeats=2 or more"
            )
        within_ss = sum(
            statistics.variance(cell) * (len(cell) - 1) for row in table for cell in row if len(cell) > 1
        )
        within = Term(1.0, within_ss / within_df, within_df)
        between_var, between_df = _between(table, within)
        metrics[metric.key] = Noise(within.mean_square, within_df, between_var, between_df)
    created = datetime.now(UTC).isoformat(timespec="seconds")
    fingerprint = {k: v for k, v in first.fingerprint.items() if k != "meter_method"}
    return NoiseProfile(fingerprint, metrics, len(reports), len(shared), created)


@dataclass(frozen=True)
class Detectable:
    """What n repeats a side can tell apart, for one metric."""

    repeats: int
    se: float  # standard error of the log change
    smallest_change: float  # relative change called regressed with probability 1 - MISS


def detectable_changes(
    noise: Noise, repeats: Sequence[int], metrics: int = len(GATED_METRICS)
) -> list[Detectable]:
    """For n repeats on each side of a one-report baseline: the standard error of the change,
    and the smallest increase over an unchanged point that the gate calls regressed at least
    1 − MISS of the time while holding false alarms at no change to FALSE_ALARM. Both runs
    carry their own offset: Var = 2σ_b² + σ_w²(2/n)."""
    out = []
    for n in repeats:
        terms = [
            Term(2.0, noise.between_var, noise.between_df),
            Term(2 / n, noise.within_var, noise.within_df),
        ]
        variance, df = satterthwaite(terms)
        se = math.sqrt(variance)
        fire = t_quantile(1 - FALSE_ALARM / metrics, round(df, 1))
        power = t_quantile(1 - MISS, round(df, 1))
        out.append(Detectable(n, se, math.expm1((fire + power) * se)))
    return out


def noise_line(profile: NoiseProfile) -> str:
    """One line: each metric's within- and between-run spread, and what it rests on."""
    parts = [
        f"{key} within {math.sqrt(n.within_var):.1%}, between runs {math.sqrt(n.between_var):.1%}"
        for key, n in profile.metrics.items()
    ]
    return f"{'; '.join(parts)} (from {profile.runs} runs of {profile.points} points)"
