"""A measured sweep on the fake device against the fake's known power: a constant load, so
that every window's true power is the fake model's at the point's clock (and power limit),
and "idle" at a point's state draws that power too. The energy, energy above idle and the
static share are checked against it, and the steady-state and counter-reset warnings are
checked where the fake makes them due."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fake_engine import OWN_TESTS
from test_measurement_validity import LOAD, power_at

from pytest_greenllm.devices.fake_nvml import COUNTER_RESET_ENV
from pytest_greenllm.meter import COUNTER_KIND, IDLE_KIND, SHORT_WINDOW_KIND

# Each edge of a window is read within a few milliseconds of the counter's update (a poll,
# and this machine's scheduling): under 1% of the ~0.6 s a window spans here (0.13% at most
# in quiet runs); 3% leaves room for a busy machine. Reading the counter as of its last
# update, as windows did before, was off by -10% to +18% per repeat here.
TOLERANCE = 0.03


def knobs(*extra: str) -> tuple[str, ...]:
    return (
        *OWN_TESTS,
        "--greenllm-device=fake",
        "--greenllm-cooldown=0",
        "--greenllm-min-window=0.5",
        "--greenllm-tp=1",
        "--greenllm-batch=2",
        "--greenllm-slo=ttft_p99=none,tbt_p99=none",
        "--greenllm-json=report.json",
        *extra,
    )


def run_sweep(sweep: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, *extra: str) -> list[dict[str, Any]]:
    """The report's points of a sweep at a constant fake load."""
    monkeypatch.setenv("GREENLLM_FAKE_LOAD", str(LOAD))
    monkeypatch.setenv("GREENLLM_FAKE_GPUS", "1")
    result = sweep.runpytest(*knobs(*extra))
    points: list[dict[str, Any]] = json.loads((sweep.path / "report.json").read_text())["points"]
    result.assert_outcomes(passed=len(points))
    return points


def energies(points: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(point, repeat energy) of every repeat."""
    return [(point, repeat["energy"]) for point in points for repeat in point["repeats"]]


def test_a_fake_sweeps_energy_is_the_fakes_known_power(
    sweep: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 1410 MHz with the power limit left alone, and at 200 W, which caps the clock to
    1155 MHz (the fake lowers it in 15 MHz steps until the power fits): both states' idle is
    measured in them, so energy above idle is about 0 and the static share about 1 (idle
    as found, boosted to 1980 MHz, draws 448 W: a static share of 1.7 and 2.3)."""
    points = run_sweep(
        sweep,
        monkeypatch,
        "--greenllm-workloads=8:4",
        "--greenllm-freqs=1410",
        "--greenllm-power-limits=default,200",
    )
    assert [p["power_limit_w"] for p in points] == [None, 200]
    for point, energy in energies(points):
        watts = power_at(1410 if point["power_limit_w"] is None else 1155)
        duration_s = energy["edp_js"] / energy["energy_j"]
        assert energy["avg_power_w"] == pytest.approx(watts, rel=TOLERANCE)
        assert energy["energy_j"] == pytest.approx(watts * duration_s, rel=TOLERANCE)
        assert energy["static_share"] == pytest.approx(1.0, abs=TOLERANCE)
        assert abs(energy["energy_above_idle_j"]) <= TOLERANCE * energy["energy_j"]
        assert energy["j_per_output_token"] * point["repeats"][0]["metrics"][
            "output_tokens"
        ] == pytest.approx(energy["energy_j"])
    capped = energies(points)[-1][1]
    assert "clock-strayed" in capped["warning_kinds"]


def test_no_negative_above_idle_energy_goes_unwarned_in_a_fake_sweep_over_two_clocks(
    sweep: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's sweep: idle read once, boosted, gave -457 J above idle and a static share
    of about 2, unwarned. Now each clock's idle is its own: about 0 J either side, and a
    negative one carries its warning."""
    points = run_sweep(
        sweep, monkeypatch, "--greenllm-workloads=8:4", "--greenllm-freqs=1005,1410", "--greenllm-repeats=2"
    )
    assert [p["locked_clock_mhz"] for p in points] == [1005, 1410]
    for _, energy in energies(points):
        assert len(energy["warning_kinds"]) == len(energy["warnings"])
        above_j = energy["energy_above_idle_j"]
        assert above_j >= -TOLERANCE * energy["energy_j"]
        assert energy["static_share"] == pytest.approx(1.0, abs=TOLERANCE)
        if above_j < 0:
            assert IDLE_KIND in energy["warning_kinds"]


def test_a_steady_state_too_short_for_the_counter_is_left_out_and_a_long_one_is_right(
    sweep: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The counter updates every 20 ms and an engine step takes 10 ms: 4-token outputs at
    batch 2 are steady for 3 steps (30 ms, under 10 updates); 48-token ones for 47 (470 ms)."""
    monkeypatch.setenv("GREENLLM_FAKE_COUNTER_PERIOD", "0.02")
    points = run_sweep(sweep, monkeypatch, "--greenllm-workloads=8:4,8:48", "--greenllm-freqs=1410")
    short, long = (energy for _, energy in energies(points))
    assert short["steady_j_per_token"] is None and short["steady_from"] is None
    assert SHORT_WINDOW_KIND in short["warning_kinds"]
    assert any("no steady-state energy per token" in w for w in short["warnings"])
    steady = points[1]["repeats"][0]["metrics"]["steady"]
    lasted_s = steady["end_s"] - steady["start_s"]
    truth = power_at(1410) * lasted_s / steady["output_tokens"]
    assert long["steady_from"] == "counter" and SHORT_WINDOW_KIND not in long["warning_kinds"]
    # Off by at most an update and the gap between reads at each edge, (20 + 10 ms) / 470 ms:
    # twice the gap, for a step that runs late on a busy machine.
    assert long["steady_j_per_token"] == pytest.approx(truth, rel=(0.02 + 2 * 0.01) / lasted_s)


def test_a_counter_reset_in_every_window_leaves_every_repeat_unmeasured_and_says_so(
    sweep: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fake's driver resets its counter every 0.4 s, inside every window of 0.5 s or
    more: no repeat has an energy, none a negative or wrapped one, and the point still runs."""
    monkeypatch.setenv(COUNTER_RESET_ENV, "0.4")
    points = run_sweep(
        sweep, monkeypatch, "--greenllm-workloads=8:4", "--greenllm-freqs=1410", "--greenllm-repeats=2"
    )
    for point, energy in energies(points):
        assert energy["energy_j"] is None and energy["j_per_output_token"] is None
        assert energy["energy_above_idle_j"] is None and energy["static_share"] is None
        assert COUNTER_KIND in energy["warning_kinds"]
        assert any("went backwards" in w for w in energy["warnings"])
        assert point["summary"]["j_per_output_token"] is None
