"""The GPU power limit as a swept axis, as a user sees it on the fake device: each point runs
with its limit set on its GPUs, records the limit the GPUs reported, and puts it back
however it ends; a refused limit skips its points with what to do."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from fake_engine import sweep_knobs

from pytest_greenllm.cli import main
from pytest_greenllm.devices.fake_nvml import GPU_NAME, POWER_LIMIT_RANGE_MW

DEFAULT_LIMIT_MW = POWER_LIMIT_RANGE_MW[1]
# Two workloads at two clocks: the power limits multiply these four points.
KNOBS = (*sweep_knobs(0.1, 2, "8:4,16:4"), "--greenllm-freqs=1410,1980")

LIMITED_TEST = """
import json, os
from pathlib import Path

def fake_limits_mw():
    state = json.loads(Path(os.environ["GREENLLM_FAKE_STATE"]).read_text())
    return [gpu["power_limit_mw"] for gpu in state.values()]

def test_point(greenllm_point, greenllm_result):
    # Held on the point's tp GPU while it is measured; the other keeps its own.
    assert fake_limits_mw() == [greenllm_point.power_limit_w * 1000, 700_000]
    assert greenllm_result.power_limit_w == greenllm_point.power_limit_w
"""


class Driver:
    """The fake GPUs' state file and the guard's, as seen from outside the run."""

    def __init__(self, tmp_path: Path) -> None:
        self.fake_state = tmp_path / "driver.json"
        self.guard_state = tmp_path / "guard.json"

    def limits_mw(self) -> list[int]:
        if not self.fake_state.exists():
            return []
        state: dict[str, Any] = json.loads(self.fake_state.read_text())
        return [gpu["power_limit_mw"] for gpu in state.values()]

    def assert_all_put_back(self) -> None:
        assert self.limits_mw() in ([], [DEFAULT_LIMIT_MW] * 2)
        assert not self.guard_state.exists()


@pytest.fixture
def driver(sweep: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Driver:
    """Two fake GPUs (the conftest's ``sweep`` keeps their state in ``tmp_path``)."""
    monkeypatch.setenv("GREENLLM_FAKE_GPUS", "2")
    return Driver(tmp_path)


def report_points(sweep: pytest.Pytester, name: str) -> list[dict[str, Any]]:
    points: list[dict[str, Any]] = json.loads((sweep.path / name).read_text())["points"]
    return points


def test_each_point_runs_at_its_limit_and_the_report_keeps_it(
    sweep: pytest.Pytester, driver: Driver, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep.makepyfile(test_sweep=LIMITED_TEST)
    result = sweep.runpytest(*KNOBS, "--greenllm-power-limits=300,500", "--greenllm-json=r.json")
    result.assert_outcomes(passed=8)
    result.stdout.fnmatch_lines(["greenllm: 8 points, 1 engine build, device=fake (*)"])
    points = report_points(sweep, "r.json")
    assert sorted(p["id"] for p in points) == sorted(
        f"{workload}-tp1-b2-{mhz}MHz-pl{watts}W"
        for workload in ("8x4", "16x4")
        for mhz in (1410, 1980)
        for watts in (300, 500)
    )
    for point in points:
        watts = point["config"]["power_limit_w"]
        assert point["id"].endswith(f"-pl{watts}W")
        # The limit the GPU reported once set; the fake applies it exactly.
        assert point["power_limit_w"] == float(watts)
    driver.assert_all_put_back()
    capsys.readouterr()
    # The export keeps the limit asked for and the one the GPUs reported.
    assert main(["export", str(sweep.path / "r.json"), "--format", "csv"]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    limits = {(r["point"].rsplit("-", 1)[1], r["power_limit_w"], r["effective_power_limit_w"]) for r in rows}
    assert limits == {("pl300W", "300", "300.0"), ("pl500W", "500", "500.0")}


@pytest.mark.parametrize(
    ("ending", "how_it_ended", "status"),
    [
        ("raise AssertionError('fails on purpose')", "E * AssertionError: fails on purpose", 1),
        ("raise KeyboardInterrupt", "*!!! KeyboardInterrupt !!!*", 2),
    ],
    ids=["failing", "interrupted"],
)
def test_the_limit_is_put_back_however_the_point_ends(
    sweep: pytest.Pytester, driver: Driver, ending: str, how_it_ended: str, status: int
) -> None:
    sweep.makepyfile(test_sweep=LIMITED_TEST + f"    {ending}\n")
    # no_reraise_ctrlc: the inner run's KeyboardInterrupt must not end this outer run.
    result = sweep.runpytest(*KNOBS, "--greenllm-power-limits=300,500", no_reraise_ctrlc=True)
    assert result.ret == status, result.stdout.str()
    # Ending as intended shows that the limit was held inside the test.
    result.stdout.fnmatch_lines([how_it_ended])
    driver.assert_all_put_back()


def test_a_refused_limit_skips_its_points_with_what_to_do(
    sweep: pytest.Pytester, driver: Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GREENLLM_FAKE_FAIL", "nvmlDeviceSetPowerManagementLimit=4")
    result = sweep.runpytest(*KNOBS, "--greenllm-power-limits=300,default", "--greenllm-json=r.json", "-rs")
    # The points that leave the limit alone still run.
    result.assert_outcomes(passed=4, skipped=4)
    [skip] = [line for line in result.outlines if line.startswith("SKIPPED")]
    assert skip.startswith(
        "SKIPPED [4] test_sweep.py:1: power limit not set: GPU 0: set power limit 300000 mW: "
    )
    assert "run as root" in skip
    assert skip.endswith("; pass --greenllm-power-limits=default to leave the power limit alone")
    points = report_points(sweep, "r.json")
    assert [p["power_limit_w"] for p in points] == [None] * 4
    assert all(p["config"]["power_limit_w"] is None and "pl" not in p["id"] for p in points)
    driver.assert_all_put_back()


def collected(result: pytest.RunResult) -> list[str]:
    """The point ids a ``--collect-only`` run lists, with or without ``-q``."""
    return [line.split("[")[1].split("]")[0] for line in result.outlines if "test_point[" in line]


def test_power_limit_is_power_limits_with_one_value(sweep: pytest.Pytester, driver: Driver) -> None:
    single = sweep.runpytest(*KNOBS, "--greenllm-power-limit=300", "--collect-only", "-q")
    axis = sweep.runpytest(*KNOBS, "--greenllm-power-limits=300", "--collect-only", "-q")
    assert collected(single) == collected(axis)
    assert len(collected(single)) == 4
    assert all(point.endswith("-pl300W") for point in collected(single))


def test_limits_outside_the_gpus_range_are_removed_and_said(sweep: pytest.Pytester, driver: Driver) -> None:
    result = sweep.runpytest(*KNOBS, "--greenllm-power-limits=150,300,900", "--collect-only")
    assert all(point.endswith("-pl300W") for point in collected(result))
    assert len(collected(result)) == 4
    result.stdout.fnmatch_lines(
        [
            f"greenllm: removed 4 points: 150 W is outside the 200-700 W power limits the {GPU_NAME} accepts",
            f"greenllm: removed 4 points: 900 W is outside the 200-700 W power limits the {GPU_NAME} accepts",
        ]
    )


def test_a_device_without_power_limits_collapses_the_axis(sweep: pytest.Pytester) -> None:
    result = sweep.runpytest(
        *KNOBS, "--greenllm-device=none", "--greenllm-power-limits=300,500", "--collect-only"
    )
    result.stdout.fnmatch_lines(
        [
            "greenllm: device=none cannot set power limits: the power-limit axis is 'default' "
            "(use an NVML device to sweep power limits)"
        ]
    )
    assert collected(result) == ["8x4-tp1-b2-default", "16x4-tp1-b2-default"]


def test_the_fixture_takes_an_indirect_limit_on_every_gpu(sweep: pytest.Pytester, driver: Driver) -> None:
    sweep.makepyfile(
        test_sweep="""
        import json, os, pytest
        from pathlib import Path

        def fake_limits_mw():
            state = json.loads(Path(os.environ["GREENLLM_FAKE_STATE"]).read_text())
            return [gpu["power_limit_mw"] for gpu in state.values()]

        @pytest.mark.parametrize("power_limit", [250, 900], indirect=True)
        def test_limited(power_limit):
            assert power_limit == 250.0
            assert fake_limits_mw() == [250_000, 250_000]
        """
    )
    result = sweep.runpytest(*KNOBS, "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "SKIPPED [[]1[]] *: power limit not set: GPU 0: a power limit of 900 W is outside its "
            "200-700 W range; pass --greenllm-power-limits=default to leave the power limit alone"
        ]
    )
    driver.assert_all_put_back()


def test_the_fingerprint_keeps_the_gpus_own_limit_and_capped_points_are_others(
    sweep: pytest.Pytester, driver: Driver
) -> None:
    knobs = sweep_knobs(0.1, 2, "8:4")
    sweep.runpytest(*knobs, "--greenllm-power-limit=300", "--greenllm-json=capped.json").assert_outcomes(
        passed=1
    )
    report = json.loads((sweep.path / "capped.json").read_text())
    # Read before any point set its own: the limit the GPUs hold outside the sweep.
    assert report["fingerprint"]["power_limit_w"] == DEFAULT_LIMIT_MW / 1000
    assert [(p["id"], p["power_limit_w"]) for p in report["points"]] == [("8x4-tp1-b2-1410MHz-pl300W", 300.0)]
    # The same setup, so the baseline is taken; the uncapped point is another point.
    result = sweep.runpytest(*knobs, "--greenllm-baseline=capped.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "greenllm: not in the baseline, not compared: 8x4-tp1-b2-1410MHz",
            "greenllm: in the baseline, not measured now: 8x4-tp1-b2-1410MHz-pl300W",
        ]
    )
