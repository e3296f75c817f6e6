"""Progress of a long sweep: the estimate once a build and a point were timed, and one line
per finished point, silent under -q."""

from __future__ import annotations

import re

import pytest
from fake_engine import sweep_knobs
from hypothesis import given
from hypothesis import strategies as st

from pytest_greenllm.progress import Progress, duration_text, number

KNOBS = (*sweep_knobs(0.1, 2, "8:4,16:4"), "--greenllm-batch=2,3")


def test_no_estimate_before_a_build_and_a_point_were_timed() -> None:
    progress = Progress(["a", "a", "b"])
    assert progress.remaining_s() is None and progress.estimate_line() is None
    progress.finished("a", 50.0, build_s=40.0)
    assert progress.point_s == [10.0] and progress.build_s == [40.0]
    # Two points left at 10 s, and engine b still to build at 40 s.
    assert progress.remaining_s() == pytest.approx(60.0)
    assert progress.estimate_line() == (
        "estimated sweep time: 1m50s (2 engine build(s) of ~40 s, 3 point(s) of ~10 s)"
    )
    progress.finished("a", 12.0, build_s=None)
    assert progress.remaining_s() == pytest.approx(11.0 + 40.0)
    progress.finished("b", 51.0, build_s=40.0)
    assert progress.remaining_s() == 0.0 and progress.left == 0


@given(
    st.lists(st.sampled_from("abc"), min_size=1, max_size=12),
    st.lists(st.floats(0.1, 1000), min_size=1, max_size=12),
)
def test_the_estimate_is_known_after_the_first_point_and_ends_at_zero(
    engines: list[str], times: list[float]
) -> None:
    progress = Progress(engines)
    for index, engine in enumerate(engines):
        built = engine not in progress.built
        progress.finished(engine, times[index % len(times)] * 2, times[index % len(times)] if built else None)
        remaining = progress.remaining_s()
        assert remaining is not None and remaining >= 0
    assert progress.remaining_s() == 0.0 and progress.done == len(engines)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.4, "0 s"), (45, "45 s"), (725, "12m05s"), (7380, "2h03m"), (-3, "0 s")]
)
def test_duration_text(seconds: float, text: str) -> None:
    assert duration_text(seconds) == text


def test_each_point_prints_one_line_and_the_estimate_once(sweep: pytest.Pytester) -> None:
    result = sweep.runpytest(*KNOBS)
    result.assert_outcomes(passed=4)
    lines = [line for line in result.outlines if line.startswith("greenllm: [")]
    assert [re.match(r"greenllm: \[(\d)/4\] (\S+):", line).groups() for line in lines] == [  # type: ignore[union-attr]
        ("1", "8x4-tp1-b2-1410MHz"),
        ("2", "16x4-tp1-b2-1410MHz"),
        ("3", "8x4-tp1-b3-1410MHz"),
        ("4", "16x4-tp1-b3-1410MHz"),
    ]
    assert "tokens/s" in lines[0] and "J/token" in lines[0] and "3 left, ~" in lines[0]
    assert lines[-1].endswith("0 left, ~0 s to go")
    assert len([line for line in result.outlines if "estimated sweep time:" in line]) == 1


def test_quiet_runs_print_no_progress(sweep: pytest.Pytester) -> None:
    result = sweep.runpytest(*KNOBS, "-q")
    result.assert_outcomes(passed=4)
    assert not [line for line in result.outlines if line.startswith("greenllm: [") or "estimated" in line]


@pytest.mark.parametrize(("value", "text"), [(16960.4, "16960"), (7.5721, "7.572"), (0.012345, "0.01235")])
def test_figures_never_print_in_exponent_form(value: float, text: str) -> None:
    assert number(value) == text
