"""The plugin as a user sees it: flag off and on, ids, order, header, usage errors."""

from __future__ import annotations

import pytest
from fake_engine import OWN_TESTS

from pytest_greenllm.config import settings_key

POINT_TEST = """
def test_point(greenllm_point):
    assert greenllm_point.tp >= 1

def test_plain():
    pass
"""

FAKE_KNOBS = (
    "--greenllm-device=fake",
    "--greenllm-tp=1,2",
    "--greenllm-batch=16",
    "--greenllm-workloads=S,L",
    "--greenllm-freqs=1410",
)


def test_without_flag_benchmarks_are_skipped_with_the_flag_named(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(POINT_TEST)
    result = pytester.runpytest("-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "greenllm: off (pass --greenllm to run the knob sweep)",
            "SKIPPED [[]1[]] *: greenllm benchmark: pass --greenllm to run the knob sweep",
        ]
    )


def test_explicit_marker_is_skipped_too(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.greenllm
        def test_marked():
            pass
        """
    )
    pytester.runpytest("--strict-markers").assert_outcomes(skipped=1)
    pytester.runpytest("--strict-markers", *OWN_TESTS, "--greenllm-device=fake").assert_outcomes(passed=1)


def test_flag_on_gives_one_item_per_point(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(POINT_TEST)
    result = pytester.runpytest(*OWN_TESTS, *FAKE_KNOBS, "--collect-only", "-q")
    result.stdout.fnmatch_lines(
        [
            "test_flag_on_gives_one_item_per_point.py::test_point[[]S-tp1-b16-1410MHz[]]",
            "test_flag_on_gives_one_item_per_point.py::test_point[[]L-tp1-b16-1410MHz[]]",
            "test_flag_on_gives_one_item_per_point.py::test_point[[]S-tp2-b16-1410MHz[]]",
            "test_flag_on_gives_one_item_per_point.py::test_point[[]L-tp2-b16-1410MHz[]]",
            "test_flag_on_gives_one_item_per_point.py::test_plain",
            "5 tests collected*",
        ]
    )
    result = pytester.runpytest(*OWN_TESTS, *FAKE_KNOBS)
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(["greenllm: 4 points, 2 engine builds, device=fake (*)"])


def test_items_sharing_an_engine_run_together(pytester: pytest.Pytester) -> None:
    # Two benchmark functions: without reordering, pytest would run all of the first one's
    # points before the second's, building every engine twice.
    pytester.makepyfile(
        """
        def test_a(greenllm_point):
            pass

        def test_plain():
            pass

        def test_b(greenllm_point):
            pass
        """
    )
    result = pytester.runpytest(*OWN_TESTS, *FAKE_KNOBS, "--collect-only", "-q")
    result.stdout.fnmatch_lines(
        [
            "*::test_a[[]S-tp1-b16-1410MHz[]]",
            "*::test_a[[]L-tp1-b16-1410MHz[]]",
            "*::test_b[[]S-tp1-b16-1410MHz[]]",
            "*::test_b[[]L-tp1-b16-1410MHz[]]",
            "*::test_a[[]S-tp2-b16-1410MHz[]]",
            "*::test_a[[]L-tp2-b16-1410MHz[]]",
            "*::test_b[[]S-tp2-b16-1410MHz[]]",
            "*::test_b[[]L-tp2-b16-1410MHz[]]",
            "*::test_plain",
        ]
    )


def test_header_reports_removed_points_and_snapping(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(POINT_TEST)
    result = pytester.runpytest(
        *OWN_TESTS,
        "--greenllm-device=fake",
        "--greenllm-tp=1,16",
        "--greenllm-batch=1",
        "--greenllm-workloads=S",
        "--greenllm-freqs=1400,100",
        "--collect-only",
    )
    result.stdout.fnmatch_lines(
        [
            "greenllm: 1 point, 1 engine build, device=fake (*)",
            "greenllm: 1400 MHz snapped to 1395 MHz, the nearest supported clock",
            "greenllm: removed 1 point: 100 MHz is outside the 210-1980 MHz *",
            # On vLLM's CPU build the engine's cores bound TP too: "16 CPU cores (...), 2".
            "greenllm: removed 1 point: tp16 needs 16 * visible; tp16 does not divide "
            "the model's 8 attention heads",
            "greenllm: removed 1 point: tp16 needs 16 * visible; tp16 does not divide "
            "the model's 8 attention heads; 100 MHz is outside *",
        ],
        consecutive=False,
    )


def test_visible_devices_limit_tensor_parallelism(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    pytester.makepyfile(POINT_TEST)
    result = pytester.runpytest(*OWN_TESTS, *FAKE_KNOBS, "--greenllm-tp=2,4")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["greenllm: removed 2 points: tp4 needs 4 GPUs, 2 visible"])


def test_conftest_hook_removes_points(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        def pytest_greenllm_point_problems(config, point):
            if point.workload.name == "L" and point.tp == 1:
                return "L does not fit one of our GPUs"
            return None
        """
    )
    pytester.makepyfile(POINT_TEST)
    result = pytester.runpytest(*OWN_TESTS, *FAKE_KNOBS)
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["greenllm: removed 1 point: L does not fit one of our GPUs"])


def test_every_point_removed_skips_with_a_reason(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(POINT_TEST)
    result = pytester.runpytest(*OWN_TESTS, "--greenllm-device=fake", "--greenllm-tp=16", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*every knob point was removed; the session header says why"])


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("--greenllm-freqs=abc", "ERROR: --greenllm-freqs=abc: 'abc' is not a clock; give MHz*"),
        ("--greenllm-workloads=XL", "ERROR: --greenllm-workloads=XL: unknown workload 'XL'; use S, M, L,*"),
        ("--greenllm-tp=0", "ERROR: --greenllm-tp=0: tensor-parallel sizes must be whole numbers >= 1*"),
        ("--greenllm-device=gpu", "ERROR: --greenllm-device=gpu: unknown device; use one of *"),
        ("--greenllm-model=./missing", "ERROR: --greenllm-model=./missing: ./missing does not exist*"),
        ("--greenllm-workloads=trace", "ERROR: --greenllm-workloads=trace: the trace workload replays*"),
        ("--greenllm-trace=missing.csv", "ERROR: --greenllm-trace=missing.csv: missing.csv: cannot read*"),
    ],
)
def test_bad_values_end_in_one_usage_error_line(pytester: pytest.Pytester, arg: str, message: str) -> None:
    pytester.makepyfile(POINT_TEST)
    result = pytester.runpytest(*OWN_TESTS, arg)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert [line for line in result.stderr.lines if line.strip()] == [result.stderr.lines[0]]
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_bad_ini_value_names_the_ini_key(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ngreenllm_batch = 0\n")
    pytester.makepyfile(POINT_TEST)
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: ini greenllm_batch = 0: batch sizes must be*"])


def test_ini_sets_knobs_and_the_command_line_wins(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml(
        """
        [tool.pytest.ini_options]
        greenllm_tp = "2,4"
        greenllm_workloads = "M"
        greenllm_device = "fake"
        """
    )
    config = pytester.parseconfigure()
    settings = config.stash[settings_key]
    assert (settings.tps, settings.device) == ((2, 4), "fake")
    assert [w.name for w in settings.workloads] == ["M"]
    config = pytester.parseconfigure("--greenllm-tp=8")
    assert config.stash[settings_key].tps == (8,)


def test_marker_is_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.greenllm: a knob-sweep benchmark; runs only with --greenllm*"])


def test_options_show_their_defaults_in_help(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(
        ["*--greenllm-tp=N,...*Tensor-parallel sizes*", "*Default: 1,2,4,8.*"], consecutive=False
    )
