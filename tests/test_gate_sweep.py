"""The energy gate through measured sweeps on the fake device, against its known truth: the
fake's load held constant (GREENLLM_FAKE_LOAD), so the only change between runs is the one
injected (GREENLLM_FAKE_POWER_SCALE). A +10% power change (the zone's upper edge at the 5%
tolerance) must be called regressed at every point, and an unchanged rerun at none: the gate
promises ok at +10% at most 5% of the time and regressed at +2.5% or less at most 3%
(docs/gate.md; the rates themselves are simulated in tests/test_gate.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fake_engine import STEP_ENV, sweep_knobs

from pytest_greenllm.gate import Noise
from pytest_greenllm.noise import NoiseProfile, write_profile

KNOBS = (*sweep_knobs(0.3, 2, "8:4,16:4,32:4"), "--greenllm-batch=1,2")
POINTS = 6


def verdicts(path: Path) -> list[str | None]:
    report: dict[str, Any] = json.loads(path.read_text())
    assert len(report["points"]) == POINTS
    return [p["verdicts"]["energy"] for p in report["points"]]


@pytest.fixture
def steady(sweep: pytest.Pytester, isolated_device: pytest.MonkeyPatch) -> pytest.Pytester:
    """The fake at a constant load, its counter updated every 5 ms (a 0.3 s window's edges
    would otherwise be a third of it): power follows the injected change alone."""
    isolated_device.setenv("GREENLLM_FAKE_LOAD", "0.6")
    isolated_device.setenv("GREENLLM_FAKE_COUNTER_PERIOD", "0.005")
    isolated_device.setenv(STEP_ENV, "0.01")
    return sweep


def test_ten_percent_more_power_regresses_every_point_and_none_unchanged(
    steady: pytest.Pytester, isolated_device: pytest.MonkeyPatch
) -> None:
    # No baseline: 'auto' runs 5 repeats, enough for this report to be the next baseline.
    base = steady.runpytest(*KNOBS, "--greenllm-repeats=auto", "--greenllm-json=base.json")
    base.assert_outcomes(passed=POINTS)
    report = json.loads((steady.path / "base.json").read_text())
    assert {len(p["repeats"]) for p in report["points"]} == {5}

    # With a baseline, repeats default to 'auto'.
    isolated_device.setenv("GREENLLM_FAKE_POWER_SCALE", "1.10")
    worse = steady.runpytest(*KNOBS, "--greenllm-baseline=base.json", "--greenllm-json=worse.json")
    worse.assert_outcomes(failed=POINTS)
    assert verdicts(steady.path / "worse.json") == ["regressed"] * POINTS
    worse.stdout.fnmatch_lines(["*energy regression at *avg_power_w * (+*%, interval *; tolerance 5%*"])

    # Unchanged, judged with a noise profile of this box (greenllm calibrate's file): its
    # run-to-run spread joins the repeats' own.
    isolated_device.delenv("GREENLLM_FAKE_POWER_SCALE")
    noise = Noise(within_var=0.01**2, within_df=20, between_var=0.01**2, between_df=4)
    profile = NoiseProfile(
        report["fingerprint"], {"j_per_output_token": noise, "avg_power_w": noise}, 5, POINTS
    )
    write_profile(steady.path / "noise.json", profile)
    same = steady.runpytest(
        *KNOBS, "--greenllm-baseline=base.json", "--greenllm-noise=noise.json", "--greenllm-json=same.json"
    )
    same.assert_outcomes(passed=POINTS)
    same.stdout.fnmatch_lines(
        ["greenllm: noise profile noise.json: j_per_output_token within 1.0%, between runs 1.0%*"]
    )
    assert "regressed" not in verdicts(steady.path / "same.json")
    judged = json.loads((steady.path / "same.json").read_text())
    methods = {r["method"] for p in judged["points"] for r in p["verdicts"]["regressions"]}
    assert methods == {"t (repeats and noise profile)"}
