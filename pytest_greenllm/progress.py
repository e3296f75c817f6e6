"""Progress of a long sweep: points done and left, and the time the rest will take.

A sweep on a GPU box runs for hours, so once the first engine has been built and one point
has run, the remaining time is estimated from what was measured: each remaining point
costs the mean point time, and each engine configuration not built yet the mean build time.
"""

from __future__ import annotations

import statistics
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from pytest_greenllm.gate import INCONCLUSIVE
from pytest_greenllm.knobs import count_of
from pytest_greenllm.record import AVG_POWER, J_PER_TOKEN, OUTPUT_THROUGHPUT, TBT_P99, TTFT_P99, PointRecord


def duration_text(seconds: float) -> str:
    """'45 s', '12m05s', '2h03m'."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def number(value: float) -> str:
    """Four significant digits, never in exponent form: '16960', '7.572', '0.0123'."""
    if abs(value) >= 1000:
        return f"{value:.0f}"
    if 0 < abs(value) < 0.001:
        return f"{value:.6f}".rstrip("0")
    return f"{value:.4g}"


@dataclass
class Progress:
    """What has run so far, against the plan: the engine of every planned point, in order."""

    planned: Sequence[Hashable]  # each planned point's engine configuration, in run order
    point_s: list[float] = field(default_factory=list)  # per finished point, build excluded
    build_s: list[float] = field(default_factory=list)  # per engine build
    built: set[Hashable] = field(default_factory=set)

    @property
    def done(self) -> int:
        return len(self.point_s)

    @property
    def left(self) -> int:
        return max(0, len(self.planned) - self.done)

    def finished(self, engine: Hashable, duration_s: float, build_s: float | None) -> None:
        """One point ended after ``duration_s``, of which ``build_s`` built its engine (None:
        the engine was reused)."""
        if build_s is not None:
            self.build_s.append(build_s)
            self.built.add(engine)
        self.point_s.append(max(0.0, duration_s - (build_s or 0.0)))

    def remaining_s(self) -> float | None:
        """Seconds the points left will take; None until a point and a build were timed."""
        if not self.point_s or not self.build_s:
            return None
        to_build = {e for e in self.planned[self.done :] if e not in self.built}
        return self.left * statistics.fmean(self.point_s) + len(to_build) * statistics.fmean(self.build_s)

    def estimate_line(self) -> str | None:
        """The whole sweep's estimated duration, once it can be estimated."""
        remaining = self.remaining_s()
        if remaining is None:
            return None
        spent = sum(self.point_s) + sum(self.build_s)
        builds = len({*self.planned})
        return (
            f"estimated sweep time: {duration_text(spent + remaining)} "
            f"({builds} engine build(s) of ~{duration_text(statistics.fmean(self.build_s))}, "
            f"{len(self.planned)} point(s) of ~{duration_text(statistics.fmean(self.point_s))})"
        )

    def _left(self) -> str:
        remaining = self.remaining_s()
        return f"{self.left} left" + ("" if remaining is None else f", ~{duration_text(remaining)} to go")

    def failed_line(self, point_id: str) -> str:
        """A point that ended without figures (its engine failed, or it was skipped)."""
        return f"[{self.done}/{len(self.planned)}] {point_id}: no figures; {self._left()}"

    def point_line(self, record: PointRecord) -> str:
        """One finished point: its key figures, the count done and left, the time remaining."""
        s = record.summary
        figures = [
            f"{number(value)} {metric.unit}" if metric.unit != "ms" else f"{metric.label} {number(value)} ms"
            for metric in (OUTPUT_THROUGHPUT, TTFT_P99, TBT_P99, J_PER_TOKEN, AVG_POWER)
            if (value := metric.of(s)) is not None
        ]
        verdict = "" if record.slo_met and not record.regressed else " (verdict: failed)"
        if record.verdicts is not None and record.verdicts.energy == INCONCLUSIVE:
            verdict += f" (energy inconclusive after {count_of(len(record.repeats), 'repeat')})"
        if record.slo == INCONCLUSIVE:
            verdict += " (SLO inconclusive)"
        if record.unforced:
            verdict += f" ({count_of(record.unforced, 'output')} not of the forced length)"
        return f"[{self.done}/{len(self.planned)}] {record.id}: {', '.join(figures)}{verdict}; {self._left()}"
