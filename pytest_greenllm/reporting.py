"""Set up a session's reports: machine, git, fingerprint, baseline, journal and resume."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from pytest_greenllm.config import Settings
from pytest_greenllm.devices.backend import Backend
from pytest_greenllm.report import (
    Journal,
    ReportError,
    fingerprint,
    git_info,
    machine_info,
    new_report,
)
from pytest_greenllm.results import AUTOSAVE_DIR, Results, load_baseline, write_reports


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

    def write(self, points: list[dict[str, Any]], meter_method: str | None) -> list[Path]:
        fingerprint = {**self.fingerprint, "meter_method": meter_method}
        report = new_report(self.device, self.machine, self.git, fingerprint, self.settings, points)
        return write_reports(report, self.json_path, self.root, self.git)


def settings_record(settings: Settings) -> dict[str, Any]:
    """The settings a report keeps, for reading it later."""
    return {
        "seed": settings.seed,
        "repeats": settings.repeats,
        "requests": settings.requests,
        "rate": settings.rate,
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


def prepare_reports(
    config: pytest.Config, settings: Settings, backend: Backend, allow_mismatch: bool
) -> tuple[Results, ReportContext, list[str]]:
    """The session's Results and ReportContext; bad baselines and journals are usage errors."""
    root = config.rootpath
    machine = machine_info(backend)
    git = git_info(root)
    print_ = fingerprint(backend, machine, settings.model.name, None)
    journal = Journal(journal_path(settings, root), print_)
    notes: list[str] = []
    results = Results(settings, journal, default_slos_apply=bool(backend.gpus))
    if not backend.gpus and not settings.slos_given:
        notes.append(
            "the default SLOs describe GPU serving and are not checked on the CPU; set "
            "--greenllm-slo to check yours"
        )
    try:
        if settings.resume_path is not None:
            results.resumed = journal.read()
            notes.append(
                f"resuming {settings.resume_path}: {len(results.resumed)} points kept from before"
            )
        elif journal.path.exists():
            # A journal of an earlier run at the same place: start it afresh.
            journal.path.unlink()
        if settings.baseline_path is not None:
            results.baseline, baseline_notes = load_baseline(
                settings.baseline_path, print_, allow_mismatch
            )
            notes.extend(baseline_notes)
    except (ReportError, ValueError) as e:
        raise pytest.UsageError(str(e)) from None
    context = ReportContext(
        backend.kind, machine, git, print_, settings_record(settings), settings.json_path, root
    )
    return results, context, notes
