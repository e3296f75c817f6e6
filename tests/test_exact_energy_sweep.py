"""A sweep on the fake device reports the figures other tools report, how many passes its
minimum window took, and, at a constant load where tokens truly cost nothing extra, no
prefill/decode split it cannot measure (tests/test_phases.py recovers known ones)."""

from __future__ import annotations

import json

import pytest
from fake_engine import sweep_knobs

KNOBS = tuple(a for a in sweep_knobs(0.5, 2, "8:4,16:4") if a != "--greenllm-builtin-sweep=off")


def test_fake_sweep_report_has_the_phase_split_and_the_new_figures(
    sweep: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    (sweep.path / "test_sweep.py").unlink()
    # A steady load, and a counter that updates often enough to split 0.5 s windows.
    monkeypatch.setenv("GREENLLM_FAKE_LOAD", "0.6")
    monkeypatch.setenv("GREENLLM_FAKE_COUNTER_PERIOD", "0.02")
    result = sweep.runpytest(*KNOBS, "--greenllm-json=report.json")
    result.assert_outcomes(passed=2)
    report = json.loads((sweep.path / "report.json").read_text())
    assert report["schema_version"] == 2
    for point in report["points"]:
        summary = point["summary"]
        assert 0 < summary["j_per_total_token"] < summary["j_per_output_token"]
        assert summary["energy_above_idle_j"] is not None and summary["edp_js"] > 0
        # GREENLLM_FAKE_LOAD holds at rest too, and idle is measured at the point's locked
        # clock: the GPU draws its idle power the whole window.
        assert summary["static_share"] == pytest.approx(1, abs=0.03)
        assert summary["j_per_prefill_token"] is None and summary["prefill_share"] is None
        [repeat] = point["repeats"]
        # 8 requests of 4 tokens at batch 2 take 16 steps of 10 ms: a 0.5 s window needs
        # several passes, each complete.
        assert repeat["passes"] >= 3
        assert repeat["metrics"]["requests"] == 8 * repeat["passes"]
        energy = repeat["energy"]
        assert energy["timeline_power"] == "instant"
        # A 31 ms steady state is under 10 updates of the 20 ms counter: left out, and said.
        assert energy["steady_from"] is None and "short-window" in energy["warning_kinds"]
        phases = energy["phases"]
        assert phases["tokens_from"] == "scheduler" and phases["steps"] > 0
        input_tokens = int(point["id"].split("x")[0])
        assert phases["prefill_tokens"] == 8 * input_tokens * repeat["passes"]
        assert phases["decode_tokens"] == 8 * 3 * repeat["passes"]
        # Tokens cost nothing here: a split is not stated, and why is.
        assert phases["method"] == "unidentified" and phases["reason"]
        assert phases["j_per_prefill_token"] is None
        assert point["verdicts"]["goodput"]["good_requests_per_kj"] is not None
        # The power limit of every point: left alone here (the axis has its own tests).
        assert point["config"]["power_limit_w"] is None and point["power_limit_w"] is None
