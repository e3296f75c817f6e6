"""``greenllm merge``: the reports of a sharded sweep made one report.

A sweep split into shards (``--greenllm-shard=K/N``, one per node of a Slurm array, a CI
matrix or a Kubernetes indexed Job) writes one report per shard. Each records, in its
settings, which shard it is (``"shard": {"index": K, "total": N}``) and every point of the
whole matrix (``"planned"``). Merging refuses what would mix incomparable energy (another
setup, by ``report.check_setup``), a point measured twice, and shards of different splits;
it names the shards and planned points that no report holds, and still writes what was
measured.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_greenllm.hints import Hint
from pytest_greenllm.record import JsonObject, PointRecord, Report
from pytest_greenllm.report import ReportError, SetupMismatch, check_setup, load_report, write_report
from pytest_greenllm.shards import Shard

# A shard's place in the split, in a report's settings; null or absent: an unsharded run.
SHARD_KEY = "shard"
# Every point id of the whole unsharded matrix, in matrix order; absent in older reports.
PLANNED_KEY = "planned"
MERGE_ANYWAY = Hint("allow-mismatch", template=" ({flag} to merge anyway)")


class MergeError(ReportError):
    """Reports that cannot be merged; the message says which and why (exit status 2)."""


@dataclass
class Merged:
    """The merged report, what to say about it, and what it lacks."""

    report: Report
    notes: list[str] = field(default_factory=list)  # to print, in order
    missing_shards: list[int] = field(default_factory=list)
    missing_points: list[str] = field(default_factory=list)  # planned, in no report

    @property
    def complete(self) -> bool:
        return not self.missing_shards and not self.missing_points


def _names(paths: Sequence[Path]) -> str:
    return ", ".join(str(p) for p in paths)


def _shard(path: Path, settings: Mapping[str, Any]) -> Shard | None:
    value = settings.get(SHARD_KEY)
    if value is None:
        return None
    index = value.get("index") if isinstance(value, dict) else None
    total = value.get("total") if isinstance(value, dict) else None
    if (
        not isinstance(index, int)
        or not isinstance(total, int)
        or isinstance(index, bool)
        or isinstance(total, bool)
        or not 1 <= index <= total
    ):
        raise MergeError(
            f"{path}: settings.{SHARD_KEY} is {value!r}, not {{'index': K, 'total': N}} with 1 <= K <= N"
        )
    return Shard(index, total)


def _planned(path: Path, settings: Mapping[str, Any]) -> list[str] | None:
    value = settings.get(PLANNED_KEY)
    if value is None or value == []:
        # An empty plan is no plan: a sweep of no point writes no report.
        return None
    if not isinstance(value, list) or not all(isinstance(i, str) for i in value):
        raise MergeError(f"{path}: settings.{PLANNED_KEY} is not a list of point ids")
    return value


def _check_shards(shards: Sequence[tuple[Path, Shard]]) -> tuple[list[str], list[int]]:
    """Lines saying which shards came and which did not, and the missing indexes; shards of
    different splits, or one shard twice, are refused."""
    if not shards:
        return ["no report is a shard (none has settings.shard): no shard to check"], []
    totals: dict[int, list[Path]] = {}
    for path, shard in shards:
        totals.setdefault(shard.total, []).append(path)
    if len(totals) > 1:
        splits = "; ".join(f"of {total}: {_names(paths)}" for total, paths in sorted(totals.items()))
        raise MergeError(f"the shards come from different splits ({splits})")
    (total,) = totals
    by_index: dict[int, list[Path]] = {}
    for path, shard in shards:
        by_index.setdefault(shard.index, []).append(path)
    twice = {index: paths for index, paths in sorted(by_index.items()) if len(paths) > 1}
    if twice:
        which = "; ".join(f"shard {index}/{total}: {_names(paths)}" for index, paths in twice.items())
        raise MergeError(f"the same shard in two reports ({which})")
    got = sorted(by_index)
    missing = [i for i in range(1, total + 1) if i not in by_index]
    lines = [f"shards of {total}: got {', '.join(map(str, got))}"]
    lines.append(
        f"missing shards of {total}: {', '.join(map(str, missing))}" if missing else "no shard missing"
    )
    return lines, missing


def _check_setups(reports: Sequence[tuple[Path, Report]], allow_mismatch: bool) -> list[str]:
    """Every report against the first, by the one setup rule; the differences, to print."""
    first_path, first = reports[0]
    notes = []
    for path, report in reports[1:]:
        try:
            differences = check_setup(first.fingerprint, report.fingerprint, str(path), allow=allow_mismatch)
        except SetupMismatch as e:
            raise MergeError(
                f"{path} was measured on another setup than {first_path} ({'; '.join(e.differences)}); "
                "one report of both would mix incomparable energy",
                MERGE_ANYWAY,
            ) from None
        notes += [f"setups differ: {path}: {line}" for line in differences]
    if notes:
        notes.append(f"the merged report keeps the fingerprint and machine of {first_path}")
    return notes


def _check_duplicates(reports: Sequence[tuple[Path, Report]]) -> None:
    files: dict[str, list[Path]] = {}
    for path, report in reports:
        for point in report.points:
            files.setdefault(point.id, []).append(path)
    duplicates = [f"{point_id} ({_names(paths)})" for point_id, paths in files.items() if len(paths) > 1]
    if duplicates:
        raise MergeError(f"{len(duplicates)} point(s) in more than one report: {'; '.join(duplicates)}")


def _git(reports: Sequence[tuple[Path, Report]]) -> tuple[JsonObject | None, list[str]]:
    """The first report's git, if every report was measured at its commit (dirty if any
    tree was); else None, and a line saying why."""
    commits = [None if r.git is None else r.git.get("commit") for _, r in reports]
    first = reports[0][1].git
    if len(set(commits)) > 1:
        seen = ", ".join(dict.fromkeys("none" if c is None else str(c)[:12] for c in commits))
        return None, [
            f"the reports were measured at different commits ({seen}): the merged report has no git"
        ]
    if first is None:
        return None, []
    return {**first, "dirty": any(bool(r.git and r.git.get("dirty")) for _, r in reports)}, []


def merge_reports(reports: Sequence[tuple[Path, Report]], allow_mismatch: bool = False) -> Merged:
    """One report of ``reports`` (path, report), points in planned order; MergeError (or
    another ReportError) where they cannot be merged."""
    if not reports:
        raise MergeError("no report to merge")
    first_path, first = reports[0]
    notes = _check_setups(reports, allow_mismatch)
    shards = [(path, s) for path, r in reports if (s := _shard(path, r.settings)) is not None]
    shard_lines, missing_shards = _check_shards(shards)
    plans = [(path, p) for path, r in reports if (p := _planned(path, r.settings)) is not None]
    plan = plans[0][1] if plans else None
    differing = [path for path, p in plans if p != plan]
    if differing:
        raise MergeError(
            f"the reports planned different matrices: settings.{PLANNED_KEY} of {_names(differing)} "
            f"differs from that of {plans[0][0]}"
        )
    _check_duplicates(reports)
    for path, report in reports[1:]:
        keys = sorted(
            k
            for k in set(first.settings) | set(report.settings)
            if k not in (SHARD_KEY, PLANNED_KEY) and first.settings.get(k) != report.settings.get(k)
        )
        if keys:
            notes.append(
                f"settings differ: {path}: {', '.join(keys)} (the merged report keeps {first_path}'s)"
            )
    notes += shard_lines

    by_id: dict[str, PointRecord] = {p.id: p for _, r in reports for p in r.points}
    ordered = [by_id[i] for i in plan or () if i in by_id]
    planned = set(plan or ())
    unplanned = [p for p in by_id.values() if p.id not in planned]
    missing_points: list[str] = []
    if plan is None:
        notes.append(
            f"no report lists its planned points (settings.{PLANNED_KEY}): completeness cannot be checked"
        )
    else:
        missing_points = [i for i in plan if i not in by_id]
        if missing_points:
            notes.append(
                f"missing {len(missing_points)} of {len(plan)} planned point(s): {', '.join(missing_points)}"
            )
        else:
            notes.append(f"all {len(plan)} planned points present")
        if unplanned:
            ids = ", ".join(p.id for p in unplanned)
            notes.append(f"{len(unplanned)} point(s) not in the plan, kept after it: {ids}")

    git, git_notes = _git(reports)
    notes += git_notes
    settings: JsonObject = {**first.settings, SHARD_KEY: None}
    if plan is not None:
        settings[PLANNED_KEY] = plan
    merged = Report.new(first.device, first.machine, git, first.fingerprint, settings, [*ordered, *unplanned])
    return Merged(merged, notes, missing_shards, missing_points)


def merge_files(paths: Sequence[Path], output: Path, allow_mismatch: bool = False) -> Merged:
    """Read ``paths``, merge them and write the merged report to ``output`` atomically;
    ReportError names what cannot be read, merged or written."""
    if output.is_dir():
        raise MergeError(f"--output {output}: is a folder; name the report file to write")
    if not output.parent.is_dir():
        raise MergeError(f"--output {output}: the folder {output.parent} does not exist")
    merged = merge_reports([(path, load_report(path)) for path in paths], allow_mismatch)
    try:
        write_report(output, merged.report)
    except OSError as e:
        raise MergeError(f"--output {output}: cannot write ({e.strerror or e})") from None
    return merged
