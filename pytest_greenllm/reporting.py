"""What every report of a session shares, and where its journal goes."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pytest_greenllm.config import Settings
from pytest_greenllm.record import PointRecord, Report
from pytest_greenllm.results import AUTOSAVE_DIR, write_reports


@dataclass
class ReportContext:
    """What every report of this session shares: machine, git, fingerprint, settings."""

    device: str
    machine: dict[str, Any]
    git: dict[str, Any] | None
    fingerprint: dict[str, Any]
    settings: dict[str, Any]
    json_path: Path | None
    root: Path

    def write(
        self, points: list[PointRecord], meter_method: str | None
    ) -> tuple[list[Path], list[tuple[Path, str]]]:
        """The report of ``points``, where asked and autosaved; returns the paths written and
        those that could not be, with why."""
        fingerprint = {**self.fingerprint, "meter_method": meter_method}
        report = Report.new(self.device, self.machine, self.git, fingerprint, self.settings, points)
        return write_reports(report, self.json_path, self.root, self.git)


def settings_record(settings: Settings, planned: Sequence[str] = ()) -> dict[str, Any]:
    """The settings a report keeps, for reading it later; ``planned``: the ids of the whole
    sweep (a shard's report holds part of it)."""
    shard = settings.shard
    return {
        "shard": None if shard is None else {"index": shard.index, "total": shard.total},
        "planned": list(planned),
        "mode": settings.mode,
        "endpoint": settings.endpoint,
        "seed": settings.seed,
        "repeats": "auto" if settings.auto_repeats else settings.repeats,
        "max_repeats": settings.max_repeats if settings.auto_repeats else None,
        # The repeat counts the gate judged at, so that `greenllm compare` judges the same way.
        "looks": list(settings.looks),
        "noise": None if settings.noise_path is None else str(settings.noise_path),
        "slo_confidence": settings.slo_confidence,
        "inconclusive": settings.inconclusive,
        "requests": settings.requests,
        "trace_time_scale": settings.trace_time_scale,
        "model": settings.model.name,
        "slos": {name: dataclasses.asdict(slo) for name, slo in settings.slos},
        "energy_tolerance": settings.energy_tolerance,
        "min_window_s": settings.min_window_s,
        "sample_hz": settings.sample_hz,
        "engine_args": dict(settings.engine_args),
    }


def journal_path(settings: Settings, root: Path) -> Path:
    """Where finished points go as they finish: the resumed journal, beside the JSON report,
    or under ``.greenllm/``."""
    if settings.resume_path is not None:
        return settings.resume_path
    if settings.json_path is not None:
        return settings.json_path.with_name(settings.json_path.name + ".journal.jsonl")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return root / AUTOSAVE_DIR / f"journal-{stamp}.jsonl"
