"""What is checked before the first point, so that hours of measurement never end in a stack
trace: outputs that cannot be written, a model directory without weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fake_engine import sweep_knobs

from pytest_greenllm import results
from pytest_greenllm.model_info import embedded_model_dir
from pytest_greenllm.record import Report
from pytest_greenllm.report import write_report

KNOBS = sweep_knobs(0.1, 2, "8:4")
USAGE_ERROR = pytest.ExitCode.USAGE_ERROR


def error_lines(result: pytest.RunResult) -> list[str]:
    return [line for line in result.errlines if line.startswith("ERROR:")]


def test_an_unwritable_report_path_stops_before_the_first_point(sweep: pytest.Pytester) -> None:
    result = sweep.runpytest(*KNOBS, "--greenllm-json=/proc/x/r.json")
    assert result.ret == USAGE_ERROR
    assert error_lines(result) == [
        "ERROR: cannot write in /proc/x (No such file or directory); give another path with "
        "--greenllm-json=PATH"
    ]
    assert not list(sweep.path.rglob("*.jsonl"))  # nothing was measured


def test_a_report_that_fails_at_the_end_says_where_the_results_are(
    sweep: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full_for_the_named_report(path: Path, report: Report) -> None:
        if path.name == "r.json":
            raise OSError(28, "No space left on device")
        write_report(path, report)

    monkeypatch.setattr(results, "write_report", disk_full_for_the_named_report)
    result = sweep.runpytest(*KNOBS, "--greenllm-json=out/r.json")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1)
    [line] = [line for line in result.outlines if line.startswith("greenllm: could not write")]
    assert "out/r.json (No space left on device); every point is kept in out/r.json.journal.jsonl, " in line
    autosaved = line.rsplit(", ", 1)[1]
    assert json.loads(Path(autosaved).read_text())["points"][0]["id"] == "8x4-tp1-b2-1410MHz"


def test_a_model_directory_without_weights_is_refused_with_the_way_out(
    sweep: pytest.Pytester,
) -> None:
    model = sweep.path / "my-model"
    model.mkdir()
    shutil.copy(embedded_model_dir() / "config.json", model / "config.json")
    result = sweep.runpytest(*KNOBS, f"--greenllm-model={model}")
    assert result.ret == USAGE_ERROR
    [line] = error_lines(result)
    assert line.startswith(f"ERROR: --greenllm-model={model}: {model} has a config.json but no model weights")
    assert line.endswith("pass --greenllm-engine-arg=load_format=dummy to run it with random weights")
    dummy = sweep.runpytest(
        *KNOBS, f"--greenllm-model={model}", "--greenllm-engine-arg=load_format=dummy", "--collect-only"
    )
    assert dummy.ret == pytest.ExitCode.OK
