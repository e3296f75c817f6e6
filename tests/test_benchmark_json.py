"""pytest-benchmark as its users meet it on a sweep: each repeat one round of
``benchmark.pedantic``, one benchmark per point with the point's figures in ``extra_info``,
files that ``pytest-benchmark compare`` reads; and its switches never drop the energy
measurement (bench.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fake_engine import sweep_knobs

KNOBS = sweep_knobs(0.1, 2, "8:4,16:4")
POINTS = ("8x4-tp1-b2-1410MHz", "16x4-tp1-b2-1410MHz")


def load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def by_point(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["id"]: p for p in report["points"]}


def test_benchmark_json_holds_one_benchmark_per_point_and_its_figures(sweep: pytest.Pytester) -> None:
    result = sweep.runpytest(
        *KNOBS, "--greenllm-repeats=3", "--greenllm-json=report.json", "--benchmark-json=bench.json"
    )
    result.assert_outcomes(passed=2)
    report = by_point(load(sweep.path / "report.json"))
    benchmarks = load(sweep.path / "bench.json")["benchmarks"]
    assert sorted(b["param"] for b in benchmarks) == sorted(POINTS)
    for bench in benchmarks:
        point = report[bench["param"]]
        # One round per repeat, each the repeat's makespan: never shorter than its requests.
        assert bench["stats"]["rounds"] == len(point["repeats"]) == 3
        durations = [r["metrics"]["duration_s"] for r in point["repeats"]]
        assert bench["stats"]["min"] >= min(durations)
        info = bench["extra_info"]
        assert info["greenllm_point"] == bench["param"]
        assert info["greenllm_j_per_output_token"] == pytest.approx(
            point["summary"]["j_per_output_token"], abs=1e-6
        )
        assert info["greenllm_avg_power_w"] > 0 and info["greenllm_slo_met"] is True
    # pytest-benchmark's own command reads the file.
    command = shutil.which("pytest-benchmark")
    assert command is not None
    compared = subprocess.run(
        [command, "compare", str(sweep.path / "bench.json")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "300"},
    )
    assert compared.returncode == 0, compared.stderr
    for point_id in POINTS:
        assert point_id in compared.stdout


def test_autosave_then_compare_against_the_last_run(sweep: pytest.Pytester) -> None:
    sweep.runpytest(*KNOBS, "--greenllm-repeats=2", "--benchmark-autosave").assert_outcomes(passed=2)
    result = sweep.runpytest(*KNOBS, "--greenllm-repeats=2", "--benchmark-compare")
    result.assert_outcomes(passed=2)
    # The saved run's rows beside this one's.
    rows = [line for line in result.stdout.lines if line.startswith("test_point[")]
    for point_id in POINTS:
        assert any(f"[{point_id}] (0001_" in row for row in rows), rows
        assert any(f"[{point_id}] (NOW)" in row for row in rows), rows
    saved = sorted((sweep.path / ".benchmarks").rglob("*.json"))
    assert len(saved) == 1
    assert len(load(saved[0])["benchmarks"]) == len(POINTS)


def test_benchmark_skip_still_measures_every_point(sweep: pytest.Pytester) -> None:
    result = sweep.runpytest(
        *KNOBS, "--greenllm-repeats=2", "--greenllm-json=report.json", "--benchmark-skip"
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["greenllm: --benchmark-skip: every point still runs and measures energy*"])
    for point in load(sweep.path / "report.json")["points"]:
        assert len(point["repeats"]) == 2
        assert all(r["energy"]["energy_j"] > 0 for r in point["repeats"])


def test_benchmark_disable_runs_every_repeat(sweep: pytest.Pytester) -> None:
    # A disabled pedantic would run its target once: greenllm times the repeats itself.
    result = sweep.runpytest(
        *KNOBS,
        "--greenllm-repeats=3",
        "--greenllm-json=report.json",
        "--benchmark-disable",
        "--benchmark-json=bench.json",
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["greenllm: pytest-benchmark is disabled*every point still runs*"])
    assert all(len(p["repeats"]) == 3 for p in load(sweep.path / "report.json")["points"])
    # Disabled, pytest-benchmark writes no file at all.
    assert not (sweep.path / "bench.json").exists()


def test_sequential_repeats_are_rounds_too(sweep: pytest.Pytester) -> None:
    sweep.runpytest(*KNOBS, "--greenllm-repeats=3", "--greenllm-json=base.json").assert_outcomes(passed=2)
    result = sweep.runpytest(
        *KNOBS,
        "--greenllm-repeats=auto",
        "--greenllm-max-repeats=4",
        "--greenllm-baseline=base.json",
        "--greenllm-json=head.json",
        "--benchmark-json=bench.json",
    )
    result.stdout.fnmatch_lines(["greenllm: model=*, repeats=auto (2 to 4), *"])
    report = by_point(load(sweep.path / "head.json"))
    for bench in load(sweep.path / "bench.json")["benchmarks"]:
        point = report[bench["param"]]
        assert 2 <= len(point["repeats"]) <= 4
        assert bench["stats"]["rounds"] == len(point["repeats"])
        assert point["verdicts"]["energy"] in ("ok", "regressed", "inconclusive")


def test_a_test_that_names_benchmark_keeps_it(sweep: pytest.Pytester) -> None:
    sweep.makepyfile(test_sweep="def test_point(greenllm_result, benchmark):\n    benchmark(lambda: None)\n")
    sweep.runpytest(*KNOBS, "--benchmark-json=bench.json").assert_outcomes(passed=2)
    for bench in load(sweep.path / "bench.json")["benchmarks"]:
        # The test's own use of the fixture, with the point's figures beside it.
        assert bench["stats"]["rounds"] > 1
        assert bench["extra_info"]["greenllm_j_per_output_token"] > 0
