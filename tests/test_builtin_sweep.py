"""The built-in sweep ships in the package: with --greenllm it runs in any folder, beside a
project's own greenllm tests, and an option or ini key leaves it out."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from fake_engine import sweep_knobs

from pytest_greenllm.cli import main

POINTS = ("8x4-tp1-b2-1410MHz", "16x4-tp1-b2-1410MHz")
BUILTIN = [f"greenllm::test_energy_knob_point[{p}]" for p in POINTS]
OWN = [f"test_sweep.py::test_point[{p}]" for p in POINTS]
# The fake sweep's options with the built-in sweep left as it defaults: on.
KNOBS = tuple(a for a in sweep_knobs(0.1, 2, "8:4,16:4") if a != "--greenllm-builtin-sweep=off")


def collected(result: pytest.RunResult) -> list[str]:
    return [line for line in result.outlines if "::" in line and not line.startswith(" ")]


def test_a_folder_without_tests_runs_the_builtin_sweep(sweep: pytest.Pytester) -> None:
    (sweep.path / "test_sweep.py").unlink()
    result = sweep.runpytest(*KNOBS, "--greenllm-json=report.json", "-v")
    result.assert_outcomes(passed=2)
    result.stdout.re_match_lines([rf"{re.escape(node)} PASSED" for node in BUILTIN])
    report = json.loads((sweep.path / "report.json").read_text())
    assert [p["id"] for p in report["points"]] == list(POINTS)


def test_the_projects_own_tests_run_beside_it(sweep: pytest.Pytester) -> None:
    result = sweep.runpytest(*KNOBS, "--collect-only", "-q")
    # Grouped by engine: the one engine configuration runs all four items together.
    assert sorted(collected(result)) == sorted(OWN + BUILTIN)


@pytest.mark.parametrize(
    "switch",
    [("--greenllm-builtin-sweep=off",), ("-o", "greenllm_builtin_sweep=off")],
    ids=["option", "ini"],
)
def test_the_builtin_sweep_can_be_left_out(sweep: pytest.Pytester, switch: tuple[str, ...]) -> None:
    result = sweep.runpytest(*KNOBS, *switch, "--collect-only", "-q")
    assert collected(result) == OWN


def test_the_command_line_wins_over_the_ini(sweep: pytest.Pytester) -> None:
    sweep.makeini("[pytest]\ngreenllm_builtin_sweep = off\n")
    result = sweep.runpytest(*KNOBS, "--greenllm-builtin-sweep=on", "--collect-only", "-q")
    assert sorted(collected(result)) == sorted(OWN + BUILTIN)


def test_a_bad_ini_value_is_one_usage_error(sweep: pytest.Pytester) -> None:
    result = sweep.runpytest(*KNOBS, "-o", "greenllm_builtin_sweep=maybe")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: ini greenllm_builtin_sweep = maybe: use on or off"])


def test_dash_m_greenllm_runs_the_sweeps_and_nothing_else(sweep: pytest.Pytester) -> None:
    sweep.makepyfile(test_plain="def test_plain():\n    pass\n")
    result = sweep.runpytest(*KNOBS, "-m", "greenllm", "--collect-only", "-q")
    assert sorted(collected(result)) == sorted(OWN + BUILTIN)


def test_without_the_flag_nothing_is_added(sweep: pytest.Pytester) -> None:
    (sweep.path / "test_sweep.py").unlink()
    assert sweep.runpytest("--collect-only", "-q").ret == pytest.ExitCode.NO_TESTS_COLLECTED


def test_reset_clocks_with_nothing_recorded_needs_no_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A CI step runs it on every job; on a box where NVML is missing it must still pass.
    monkeypatch.setenv("GREENLLM_STATE_FILE", str(tmp_path / "none.json"))
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert main(["reset-clocks"]) == 0
    assert "nothing to reset" in capsys.readouterr().out


def test_naming_tests_runs_those_only(sweep: pytest.Pytester) -> None:
    # The user asked for one file (or node id): hours of built-in sweep beside it would surprise.
    result = sweep.runpytest(*KNOBS, "test_sweep.py", "--collect-only", "-q")
    assert collected(result) == OWN
