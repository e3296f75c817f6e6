"""Where --junitxml gets each point's figures (junit.py): per test as pytest writes
user_properties, at suite level, or both; the suite-level form keeps to the structure of
pytest's junit-10.xsd, which allows <properties> in <testsuite> and not in <testcase>."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from fake_engine import sweep_knobs

KNOBS = (*sweep_knobs(0.1, 2, "8:4,16:4"), "--junitxml=junit.xml")
POINTS = ("8x4-tp1-b2-1410MHz", "16x4-tp1-b2-1410MHz")
# What junit-10.xsd lets a <testcase> hold: no <properties>, under any junit_family.
TESTCASE_CHILDREN = {
    "skipped",
    "errors",
    "failure",
    "rerunFailure",
    "rerunError",
    "flakyFailure",
    "flakyError",
    "system-out",
    "system-err",
}


def suite_and_cases(sweep: pytest.Pytester) -> tuple[ET.Element, list[ET.Element]]:
    root = ET.parse(sweep.path / "junit.xml").getroot()
    [suite] = root.iter("testsuite")
    return suite, list(suite.iter("testcase"))


def suite_properties(suite: ET.Element) -> dict[str, str]:
    """The testsuite's own properties, not its test cases'."""
    own = suite.find("properties")
    return {} if own is None else {p.attrib["name"]: p.attrib["value"] for p in own}


def test_by_default_the_figures_are_each_tests_properties(sweep: pytest.Pytester) -> None:
    sweep.runpytest(*KNOBS).assert_outcomes(passed=2)
    suite, cases = suite_and_cases(sweep)
    assert all(case.find("properties") is not None for case in cases)
    assert suite.find("properties") is None


def test_suite_level_figures_keep_to_the_schema(sweep: pytest.Pytester) -> None:
    result = sweep.runpytest(*KNOBS, "--greenllm-junit-properties=suite", "-o", "junit_family=xunit2")
    result.assert_outcomes(passed=2)
    suite, cases = suite_and_cases(sweep)
    for case in cases:
        assert {child.tag for child in case} <= TESTCASE_CHILDREN
    properties = suite_properties(suite)
    for point_id in POINTS:
        assert properties[f"greenllm_point[{point_id}]"] == point_id
        assert float(properties[f"greenllm_j_per_output_token[{point_id}]"]) > 0
        assert properties[f"greenllm_slo_met[{point_id}]"] == "True"
    # The <properties> element comes first in its suite, as the schema's choice allows.
    assert suite[0].tag == "properties"


def test_both_places(sweep: pytest.Pytester) -> None:
    sweep.runpytest(*KNOBS, "--greenllm-junit-properties=both").assert_outcomes(passed=2)
    suite, cases = suite_and_cases(sweep)
    assert all(case.find("properties") is not None for case in cases)
    names = {
        p.attrib["name"] for p in suite.iter("property") if p not in {q for c in cases for q in c.iter()}
    }
    assert f"greenllm_avg_power_w[{POINTS[0]}]" in names


def test_parallel_workers_figures_reach_the_suite(sweep: pytest.Pytester) -> None:
    result = sweep.runpytest(*KNOBS, "--greenllm-junit-properties=suite", "-n", "2")
    result.assert_outcomes(passed=2)
    suite, _ = suite_and_cases(sweep)
    assert {f"greenllm_point[{p}]" for p in POINTS} <= set(suite_properties(suite))


def test_a_bad_place_is_a_usage_error(sweep: pytest.Pytester) -> None:
    result = sweep.runpytest(*KNOBS, "--greenllm-junit-properties=everywhere")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--greenllm-junit-properties=everywhere: use one of testcase, suite, both*"]
    )
