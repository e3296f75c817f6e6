"""``greenllm merge`` through ``main(argv)``, in-process: the reports of a sharded sweep made
one, and every refusal (another setup, a point twice, shards of different splits, bad
files) on small reports built with test_report's helpers."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from test_report import FINGERPRINT, point_named, report

from pytest_greenllm.cli import main
from pytest_greenllm.record import PointRecord, Report
from pytest_greenllm.report import load_report, write_report

Capsys = pytest.CaptureFixture[str]
# The unsharded matrix, in matrix order; each point's figures differ.
IDS = [f"p{i}" for i in range(7)]
GIT = {"commit": "0123456789abcdef0123456789abcdef01234567", "dirty": False}


def points() -> list[PointRecord]:
    return [point_named(point_id, itl_p99=10.0 + i, watts=100.0 + 10 * i) for i, point_id in enumerate(IDS)]


def shard_of(
    records: list[PointRecord],
    index: int | None,
    total: int | None,
    *,
    planned: list[str] | None = IDS,
    git: dict[str, Any] | None = GIT,
    fingerprint: dict[str, Any] | None = None,
) -> Report:
    """A report of ``records`` as shard ``index`` of ``total`` (None: unsharded) writes it."""
    base = report(records)
    settings: dict[str, Any] = {
        **base.settings,
        "shard": None if index is None else {"index": index, "total": total},
    }
    if planned is not None:
        settings["planned"] = list(planned)
    return dataclasses.replace(
        base, settings=settings, git=git, fingerprint=fingerprint or dict(base.fingerprint)
    )


def save(path: Path, data: Report) -> str:
    write_report(path, data)
    return str(path)


def split(total: int, **options: Any) -> list[Report]:
    """The whole matrix as ``total`` shards, point i in shard i % total + 1 (not contiguous,
    so that merging must restore the planned order)."""
    records = points()
    return [
        shard_of([p for i, p in enumerate(records) if i % total == k], k + 1, total, **options)
        for k in range(total)
    ]


def save_all(tmp_path: Path, reports: list[Report]) -> list[str]:
    return [save(tmp_path / f"shard-{k + 1}.json", r) for k, r in enumerate(reports)]


def merge(tmp_path: Path, files: list[str], *options: str) -> int:
    return main(["merge", *files, "--output", str(tmp_path / "merged.json"), *options])


def lines(out: str) -> list[str]:
    assert out, "nothing printed"
    assert all(line.startswith("greenllm: ") for line in out.splitlines()), out
    return [line.removeprefix("greenllm: ") for line in out.splitlines()]


def one_error(capsys: Capsys) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("greenllm: error: ") and captured.err.count("\n") == 1, captured.err
    return captured.err


def test_three_shards_merge_into_the_unsharded_report(tmp_path: Path, capsys: Capsys) -> None:
    files = save_all(tmp_path, split(3))
    assert merge(tmp_path, files) == 0
    out = lines(capsys.readouterr().out)
    assert "shards of 3: got 1, 2, 3" in out and "no shard missing" in out
    assert "all 7 planned points present" in out
    assert out[-1] == f"merged 3 report(s), 7 point(s): {tmp_path / 'merged.json'}"
    merged = load_report(tmp_path / "merged.json")
    unsharded = shard_of(points(), None, None)
    # Ids, order and every figure (compared as stored: a record holds NaN, and NaN != NaN).
    assert [p.to_json() for p in merged.points] == [p.to_json() for p in unsharded.points]
    assert [p.id for p in merged.points] == IDS
    assert merged.settings == unsharded.settings
    assert merged.settings["shard"] is None and merged.settings["planned"] == IDS
    assert merged.fingerprint == FINGERPRINT and merged.device == "fake"
    assert merged.git == GIT and merged.created
    # Written atomically: no temporary file is left beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["merged.json", "shard-1.json", "shard-2.json", "shard-3.json"]
    )


def test_order_of_the_files_does_not_change_the_merged_points(tmp_path: Path, capsys: Capsys) -> None:
    files = save_all(tmp_path, split(3))
    assert merge(tmp_path, files[::-1]) == 0
    assert [p.id for p in load_report(tmp_path / "merged.json").points] == IDS


def test_a_point_in_two_reports_is_refused_naming_the_files(tmp_path: Path, capsys: Capsys) -> None:
    shards = split(2)
    extra = shards[0].points[0]  # p0, in shard 1
    shards[1] = dataclasses.replace(shards[1], points=(*shards[1].points, extra))
    files = save_all(tmp_path, shards)
    assert merge(tmp_path, files) == 2
    err = one_error(capsys)
    assert f"1 point(s) in more than one report: p0 ({files[0]}, {files[1]})" in err
    assert not (tmp_path / "merged.json").exists()


def test_a_missing_shard_exits_1_and_still_writes_the_report(tmp_path: Path, capsys: Capsys) -> None:
    shards = split(3)
    files = save_all(tmp_path, [shards[0], shards[2]])
    assert merge(tmp_path, files) == 1
    out = lines(capsys.readouterr().out)
    assert "shards of 3: got 1, 3" in out
    assert "missing shards of 3: 2" in out
    assert "missing 2 of 7 planned point(s): p1, p4" in out
    merged = load_report(tmp_path / "merged.json")
    assert [p.id for p in merged.points] == ["p0", "p2", "p3", "p5", "p6"]
    assert merged.settings["planned"] == IDS


def test_a_shard_that_ran_no_point_still_counts(tmp_path: Path, capsys: Capsys) -> None:
    # Four shards of three points: shard 4 ran nothing and wrote a report to say so.
    records = points()[:3]
    shards = [shard_of([records[k]] if k < 3 else [], k + 1, 4, planned=IDS[:3]) for k in range(4)]
    assert merge(tmp_path, save_all(tmp_path, shards)) == 0
    out = lines(capsys.readouterr().out)
    assert "shards of 4: got 1, 2, 3, 4" in out and "all 3 planned points present" in out


def test_another_gpu_model_is_refused(tmp_path: Path, capsys: Capsys) -> None:
    shards = split(2)
    other = {**FINGERPRINT, "gpu_model": "NVIDIA A100-SXM4-40GB"}
    shards[1] = dataclasses.replace(shards[1], fingerprint=other)
    files = save_all(tmp_path, shards)
    assert merge(tmp_path, files) == 2
    err = one_error(capsys)
    assert f"{files[1]} was measured on another setup than {files[0]}" in err
    assert "gpu_model: 'NVIDIA H100 80GB HBM3' -> 'NVIDIA A100-SXM4-40GB'" in err
    assert "(--allow-mismatch to merge anyway)" in err
    assert not (tmp_path / "merged.json").exists()


def test_allow_mismatch_merges_and_prints_the_difference(tmp_path: Path, capsys: Capsys) -> None:
    shards = split(2)
    other = {**FINGERPRINT, "gpu_model": "NVIDIA A100-SXM4-40GB", "driver": "999"}
    shards[1] = dataclasses.replace(shards[1], fingerprint=other)
    files = save_all(tmp_path, shards)
    assert merge(tmp_path, files, "--allow-mismatch") == 0
    out = lines(capsys.readouterr().out)
    assert f"setups differ: {files[1]}: gpu_model: 'NVIDIA H100 80GB HBM3' -> 'NVIDIA A100-SXM4-40GB'" in out
    # Differences that do not change energy are listed too.
    assert f"setups differ: {files[1]}: driver: '580.95.05' -> '999'" in out
    assert f"the merged report keeps the fingerprint and machine of {files[0]}" in out
    merged = load_report(tmp_path / "merged.json")
    assert merged.fingerprint == FINGERPRINT and [p.id for p in merged.points] == IDS


def test_a_difference_that_does_not_change_energy_is_printed_not_refused(
    tmp_path: Path, capsys: Capsys
) -> None:
    # Each node of a Slurm array has its own GPUs.
    shards = split(2)
    shards[1] = dataclasses.replace(shards[1], fingerprint={**FINGERPRINT, "gpu_uuids": ["GPU-1"]})
    files = save_all(tmp_path, shards)
    assert merge(tmp_path, files) == 0
    assert f"setups differ: {files[1]}: gpu_uuids: ['GPU-0'] -> ['GPU-1']" in lines(capsys.readouterr().out)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read (No such file or directory)"),
        ('{"schema": ', "not JSON"),
        ({"schema": "something else", "schema_version": 1}, "not a pytest-greenllm report"),
    ],
    ids=["missing", "not-json", "other-schema"],
)
def test_a_bad_file_exits_2_with_one_line(tmp_path: Path, capsys: Capsys, content: Any, message: str) -> None:
    files = save_all(tmp_path, split(2))
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content if isinstance(content, str) else json.dumps(content))
    assert merge(tmp_path, [*files, str(bad)]) == 2
    err = one_error(capsys)
    assert f"{bad}: " in err and message in err
    assert not (tmp_path / "merged.json").exists()


@pytest.mark.parametrize(
    ("shard", "message"), [({"index": 3, "total": 2}, "1 <= K <= N"), ("2/2", "not {'index': K, 'total': N}")]
)
def test_a_malformed_shard_exits_2(tmp_path: Path, capsys: Capsys, shard: Any, message: str) -> None:
    shards = split(2)
    shards[1] = dataclasses.replace(shards[1], settings={**shards[1].settings, "shard": shard})
    files = save_all(tmp_path, shards)
    assert merge(tmp_path, files) == 2
    err = one_error(capsys)
    assert f"{files[1]}: settings.shard is " in err and message in err


def test_shards_of_different_totals_are_refused(tmp_path: Path, capsys: Capsys) -> None:
    files = save_all(tmp_path, [*split(2)[:1], split(3)[1]])
    assert merge(tmp_path, files) == 2
    err = one_error(capsys)
    assert f"the shards come from different splits (of 2: {files[0]}; of 3: {files[1]})" in err


def test_the_same_shard_twice_is_refused(tmp_path: Path, capsys: Capsys) -> None:
    one, two = split(2)
    again = dataclasses.replace(two, settings={**two.settings, "shard": {"index": 1, "total": 2}})
    files = save_all(tmp_path, [one, again])
    assert merge(tmp_path, files) == 2
    assert f"the same shard in two reports (shard 1/2: {files[0]}, {files[1]})" in one_error(capsys)


def test_shards_of_different_plans_are_refused(tmp_path: Path, capsys: Capsys) -> None:
    one, two = split(2)
    files = save_all(tmp_path, [one, dataclasses.replace(two, settings={**two.settings, "planned": IDS[:5]})])
    assert merge(tmp_path, files) == 2
    assert f"settings.planned of {files[1]} differs from that of {files[0]}" in one_error(capsys)


def test_older_reports_without_a_plan_merge_unchecked(tmp_path: Path, capsys: Capsys) -> None:
    records = points()
    older = [shard_of(records[:4], None, None, planned=None), shard_of(records[4:], None, None, planned=None)]
    # Keys a report written before shards did not have at all.
    for k, data in enumerate(older):
        older[k] = dataclasses.replace(data, settings={"seed": 0, "repeats": 2})
    files = save_all(tmp_path, older)
    assert merge(tmp_path, files[::-1]) == 0
    out = lines(capsys.readouterr().out)
    assert "no report is a shard (none has settings.shard): no shard to check" in out
    assert "no report lists its planned points (settings.planned): completeness cannot be checked" in out
    merged = load_report(tmp_path / "merged.json")
    # Without a plan, the points keep the order of the files given.
    assert [p.id for p in merged.points] == IDS[4:] + IDS[:4]
    assert merged.settings == {"seed": 0, "repeats": 2, "shard": None}


def test_points_outside_the_plan_follow_it_in_file_order(tmp_path: Path, capsys: Capsys) -> None:
    one, two = split(2)
    two = dataclasses.replace(two, points=(point_named("zz"), *two.points, point_named("aa")))
    assert merge(tmp_path, save_all(tmp_path, [one, two])) == 0
    assert "2 point(s) not in the plan, kept after it: zz, aa" in lines(capsys.readouterr().out)
    assert [p.id for p in load_report(tmp_path / "merged.json").points] == [*IDS, "zz", "aa"]


def test_different_commits_leave_the_merged_report_without_git(tmp_path: Path, capsys: Capsys) -> None:
    one, two = split(2)
    two = dataclasses.replace(two, git={"commit": "fedcba9876543210", "dirty": True})
    assert merge(tmp_path, save_all(tmp_path, [one, two])) == 0
    out = lines(capsys.readouterr().out)
    assert (
        "the reports were measured at different commits (0123456789ab, fedcba987654): "
        "the merged report has no git"
    ) in out
    assert load_report(tmp_path / "merged.json").git is None


def test_one_dirty_tree_makes_the_merged_git_dirty(tmp_path: Path, capsys: Capsys) -> None:
    one, two = split(2)
    two = dataclasses.replace(two, git={**GIT, "dirty": True})
    assert merge(tmp_path, save_all(tmp_path, [one, two])) == 0
    assert load_report(tmp_path / "merged.json").git == {**GIT, "dirty": True}


def test_other_settings_that_differ_are_named(tmp_path: Path, capsys: Capsys) -> None:
    one, two = split(2)
    files = save_all(tmp_path, [one, dataclasses.replace(two, settings={**two.settings, "repeats": 3})])
    assert merge(tmp_path, files) == 0
    out = lines(capsys.readouterr().out)
    assert f"settings differ: {files[1]}: repeats (the merged report keeps {files[0]}'s)" in out


def test_output_folder_must_exist(tmp_path: Path, capsys: Capsys) -> None:
    files = save_all(tmp_path, split(2))
    output = tmp_path / "nowhere" / "merged.json"
    assert main(["merge", *files, "--output", str(output)]) == 2
    assert f"--output {output}: the folder {output.parent} does not exist" in one_error(capsys)
    assert not output.parent.exists()


def test_output_must_not_be_a_folder(tmp_path: Path, capsys: Capsys) -> None:
    files = save_all(tmp_path, split(2))
    assert main(["merge", *files, "--output", str(tmp_path)]) == 2
    assert "is a folder" in one_error(capsys)


def test_output_is_required(tmp_path: Path, capsys: Capsys) -> None:
    files = save_all(tmp_path, split(2))
    with pytest.raises(SystemExit) as info:
        main(["merge", *files])
    assert info.value.code == 2
    assert "--output" in capsys.readouterr().err
