"""Shards: --greenllm-shard=K/N|auto splits the sweep by whole engine configurations, the
same way on every node, and each shard's report says which part of which sweep it holds."""

from __future__ import annotations

import json

import pytest
from fake_engine import sweep_knobs
from hypothesis import given
from hypothesis import strategies as st

from pytest_greenllm.cli import main
from pytest_greenllm.knobs import EngineConfig, KnobPoint
from pytest_greenllm.shards import ENGINE_BUILD_S, Shard, ShardError, parse_shard, split
from pytest_greenllm.workloads import custom_workload


@pytest.mark.parametrize(
    ("text", "env", "shard"),
    [
        ("", {}, None),
        ("2/4", {}, Shard(2, 4)),
        (" 1/1 ", {}, Shard(1, 1)),
        (
            "auto",
            {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1"},
            Shard(3, 4),
        ),
        # An array numbered from 0 (--array=0-3), and one from 5.
        (
            "auto",
            {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "0"},
            Shard(1, 4),
        ),
        (
            "AUTO",
            {"SLURM_ARRAY_TASK_ID": "8", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "5"},
            Shard(4, 4),
        ),
        ("auto", {"JOB_COMPLETION_INDEX": "0", "GREENLLM_SHARD_TOTAL": "3"}, Shard(1, 3)),
        ("auto", {"GREENLLM_SHARD_INDEX": "2", "GREENLLM_SHARD_TOTAL": "2"}, Shard(2, 2)),
    ],
)
def test_shards_parse(text: str, env: dict[str, str], shard: Shard | None) -> None:
    assert parse_shard(text, env) == shard


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("2", {}, "give the shard as K/N"),
        ("a/b", {}, "give the shard as K/N"),
        ("0/2", {}, "shard 0 of 2 does not exist; shards count from 1 to 2"),
        ("3/2", {}, "shard 3 of 2 does not exist"),
        ("auto", {}, "'auto' found no scheduler's variables"),
        ("auto", {"JOB_COMPLETION_INDEX": "1"}, "set it to the Job's completions"),
        (
            "auto",
            {"JOB_COMPLETION_INDEX": "3", "GREENLLM_SHARD_TOTAL": "3"},
            "completion index: shard 4 of 3",
        ),
        (
            "auto",
            {"GREENLLM_SHARD_INDEX": "x", "GREENLLM_SHARD_TOTAL": "2"},
            "$GREENLLM_SHARD_INDEX='x' is not a whole",
        ),
        (
            "auto",
            {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_STEP": "2"},
            "a step other than 1",
        ),
    ],
)
def test_bad_shards_say_what_is_accepted(text: str, env: dict[str, str], message: str) -> None:
    with pytest.raises(ShardError, match=message.replace("$", r"\$").replace("(", r"\(")):
        parse_shard(text, env)


def configs_and_points(points_per_config: list[int]) -> tuple[list[EngineConfig], list[KnobPoint]]:
    configs = [EngineConfig("m", 1, batch) for batch in range(1, len(points_per_config) + 1)]
    points = [
        KnobPoint("m", 1, config.max_num_seqs, custom_workload(8, n + 1), None)
        for config, count in zip(configs, points_per_config)
        for n in range(count)
    ]
    return configs, points


@given(st.lists(st.integers(0, 40), min_size=1, max_size=30), st.integers(1, 12), st.floats(0.1, 600))
def test_a_split_covers_every_configuration_once_and_is_balanced(
    counts: list[int], total: int, point_s: float
) -> None:
    configs, points = configs_and_points(counts)
    owner = split(configs, points, point_s, total)
    assert owner == split(configs, points, point_s, total)  # the same on every node
    assert len(owner) == len(configs) and all(1 <= shard <= total for shard in owner)
    costs = [ENGINE_BUILD_S + count * point_s for count in counts]
    loads = [sum(c for c, o in zip(costs, owner) if o == shard) for shard in range(1, total + 1)]
    # Greedy list scheduling: no shard exceeds the mean by more than one configuration.
    assert max(loads) <= sum(costs) / total + max(costs) + 1e-6
    if len(configs) >= total:
        assert all(load > 0 for load in loads)  # no node idles while another has two


def test_the_costliest_configurations_are_spread_first() -> None:
    configs, points = configs_and_points([1, 10, 10, 1])
    assert split(configs, points, 60.0, 2) == [1, 1, 2, 2]


def test_shards_of_a_sweep_are_disjoint_whole_configurations_and_cover_it(sweep: pytest.Pytester) -> None:
    knobs = (*sweep_knobs(0, 2, "8:2"), "--greenllm-batch=1,2,3", "--greenllm-workloads=8:2,16:2")
    whole = [f"{w}-tp1-b{b}-1410MHz" for b in (1, 2, 3) for w in ("8x2", "16x2")]
    seen: list[str] = []
    for index in (1, 2, 3):
        result = sweep.runpytest(*knobs, f"--greenllm-shard={index}/3", f"--greenllm-json=shard{index}.json")
        result.assert_outcomes(passed=2)
        result.stdout.fnmatch_lines(
            [f"greenllm: shard {index}/3: 2 points of 6, 1 engine configuration of 3"]
        )
        report = json.loads((sweep.path / f"shard{index}.json").read_text())
        assert report["settings"]["shard"] == {"index": index, "total": 3}
        assert report["settings"]["planned"] == whole
        ids = [p["id"] for p in report["points"]]
        assert len({p["config"]["batch"] for p in report["points"]}) == 1  # one whole configuration
        seen += ids
    assert sorted(seen) == sorted(whole)
    # Merged, the shards are the unsharded sweep, point for point.
    sweep.runpytest(*knobs, "--greenllm-json=whole.json").assert_outcomes(passed=6)
    shards = [str(sweep.path / f"shard{index}.json") for index in (1, 2, 3)]
    assert main(["merge", *shards, "--output", str(sweep.path / "merged.json")]) == 0
    merged = json.loads((sweep.path / "merged.json").read_text())
    unsharded = json.loads((sweep.path / "whole.json").read_text())
    assert [p["id"] for p in merged["points"]] == [p["id"] for p in unsharded["points"]] == whole


def test_a_shard_without_points_still_reports(sweep: pytest.Pytester) -> None:
    result = sweep.runpytest(*sweep_knobs(0, 2, "8:2"), "--greenllm-shard=2/2", "--greenllm-json=empty.json")
    result.stdout.fnmatch_lines(["greenllm: shard 2/2: 0 points of 1, 0 engine configurations of 1"])
    report = json.loads((sweep.path / "empty.json").read_text())
    assert report["points"] == [] and report["settings"]["shard"] == {"index": 2, "total": 2}
    assert report["settings"]["planned"] == ["8x2-tp1-b2-1410MHz"]


def test_a_bad_shard_is_a_usage_error(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX", "GREENLLM_SHARD_INDEX"):
        monkeypatch.delenv(name, raising=False)
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest("--greenllm", "--greenllm-device=fake", "--greenllm-shard=auto")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "ERROR: --greenllm-shard=auto: 'auto' found no scheduler's variables" in result.stderr.str()
