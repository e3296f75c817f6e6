"""``pytest --greenllm -n N`` on the fake 8-GPU device with the sleep driver: one report with
every point once, the same points and verdicts as a serial run, no GPU held twice at once,
and a killed controller loses no finished point."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fake_engine import OWN_TESTS
from sleep_driver import BUILD_ENV, STEP_ENV, conftest_source

from pytest_greenllm.devices.leases import LOG_NAME
from pytest_greenllm.parallel import engine_scope

KNOBS = (
    *OWN_TESTS,
    "--greenllm-device=fake",
    "--greenllm-cooldown=0",
    "--greenllm-min-window=0.3",
    "--greenllm-tp=1,2,4",
    "--greenllm-batch=2,4",
    "--greenllm-workloads=8:4,16:4",
    "--greenllm-freqs=1410",
    "-p",
    "no:cacheprovider",
)
POINTS = [f"{w}-tp{tp}-b{b}-1410MHz" for tp in (1, 2, 4) for b in (2, 4) for w in ("8x4", "16x4")]


@pytest.fixture
def parallel(
    pytester: pytest.Pytester, isolated_device: pytest.MonkeyPatch, tmp_path: Path
) -> pytest.Pytester:
    monkeypatch = isolated_device
    monkeypatch.setenv("GREENLLM_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setenv(STEP_ENV, "0.01")
    monkeypatch.setenv(BUILD_ENV, "0.2")
    pytester.makeconftest(conftest_source())
    pytester.makepyfile(test_sweep="def test_point(greenllm_result):\n    pass\n")
    return pytester


def report(pytester: pytest.Pytester, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((pytester.path / name).read_text())
    return data


def leases(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp_path / "locks" / LOG_NAME).read_text().splitlines()]


def assert_no_gpu_held_twice(events: list[dict[str, Any]]) -> set[int]:
    """Replays the lease log; returns the holders seen."""
    holder: dict[int, int] = {}
    pids = set()
    for event in events:
        pids.add(event["pid"])
        for gpu in event["gpus"]:
            if event["event"] == "lease":
                assert gpu not in holder, f"gpu{gpu} leased by {event['pid']} while {holder.get(gpu)} held it"
                holder[gpu] = event["pid"]
            else:
                assert holder.pop(gpu) == event["pid"]
    assert holder == {}, "every lease was given back"
    return pids


def test_four_workers_measure_what_one_process_does(parallel: pytest.Pytester, tmp_path: Path) -> None:
    serial = parallel.runpytest_subprocess(*KNOBS, "--greenllm-json=serial.json", timeout=600)
    serial.assert_outcomes(passed=len(POINTS))
    (tmp_path / "locks" / LOG_NAME).unlink()
    result = parallel.runpytest_subprocess(*KNOBS, "-n", "4", "--greenllm-json=parallel.json", timeout=600)
    result.assert_outcomes(passed=len(POINTS))
    result.stdout.fnmatch_lines(
        ["greenllm: [[]*/12[]] *(gw?)", "greenllm: 12 points measured by 4 pytest-xdist workers, *"]
    )
    one, many = report(parallel, "serial.json"), report(parallel, "parallel.json")
    assert [p["id"] for p in many["points"]] == [p["id"] for p in one["points"]] == POINTS
    assert [p["verdicts"]["slo_met"] for p in many["points"]] == [
        p["verdicts"]["slo_met"] for p in one["points"]
    ]
    journal = (parallel.path / "parallel.json.journal.jsonl").read_text().splitlines()[1:]
    assert sorted(json.loads(line)["id"] for line in journal) == sorted(POINTS)
    # Each point measured its own engine's GPUs, as many as its TP.
    for point in many["points"]:
        devices = point["repeats"][0]["energy"]["per_device_j"]
        assert len(devices) == point["config"]["tp"]
    events = leases(tmp_path)
    assert len(assert_no_gpu_held_twice(events)) == 4  # four workers leased
    # Each engine configuration was leased once: its points ran together on one worker.
    assert sum(e["event"] == "lease" for e in events) == 6
    assert max(len(e["gpus"]) for e in events) == 4


def test_a_killed_controller_loses_no_finished_point(parallel: pytest.Pytester, tmp_path: Path) -> None:
    journal = parallel.path / "run.json.journal.jsonl"
    env = {**os.environ, STEP_ENV: "0.05"}
    args = [sys.executable, "-m", "pytest", *KNOBS, "-n", "2", "--greenllm-json=run.json"]
    child = subprocess.Popen(
        args, cwd=parallel.path, env=env, stdout=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if journal.exists() and len(journal.read_text().splitlines()) >= 3:  # header and two points
            break
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)  # the controller only; its workers see it go
    child.wait()
    kept = [json.loads(line)["id"] for line in journal.read_text().splitlines()[1:] if line.endswith("}")]
    assert 2 <= len(kept) < len(POINTS)
    deadline = time.monotonic() + 60
    while any(e["event"] == "lease" for e in _open_leases(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.1)  # the orphaned workers finish their point and exit
    result = parallel.runpytest_subprocess(
        *KNOBS, "-n", "2", f"--greenllm-resume={journal.name}", "--greenllm-json=final.json", timeout=600
    )
    result.assert_outcomes(passed=len(POINTS) - len(kept), skipped=len(kept))
    assert [p["id"] for p in report(parallel, "final.json")["points"]] == POINTS
    ids = [json.loads(line)["id"] for line in journal.read_text().splitlines()[1:]]
    assert sorted(ids) == sorted(POINTS), "every point journaled exactly once"


def _open_leases(tmp_path: Path) -> list[dict[str, Any]]:
    """Leases not given back yet, by holders that still run."""
    held: dict[int, dict[str, Any]] = {}
    for event in leases(tmp_path):
        for gpu in event["gpus"]:
            if event["event"] == "lease":
                held[gpu] = event
            else:
                held.pop(gpu, None)
    return [e for e in held.values() if _alive(e["pid"])]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize(
    ("nodeid", "scope"),
    [
        ("test_sweep.py::test_point[8x2-tp1-b2-default]", "g1"),
        ("greenllm::test_energy_knob_point[28x2-tp1-b2-default]", "g2"),  # not 8x2's
        ("test_mine.py::test_it[8x2-tp1-b2-default-fast]", "g1"),  # with the test's own id
        ("test_mine.py::test_other", "test_mine.py::test_other"),
        ("test_mine.py::test_it[unrelated]", "test_mine.py::test_it[unrelated]"),
    ],
)
def test_a_tests_scope_is_its_points_engine(nodeid: str, scope: str) -> None:
    groups = {"8x2-tp1-b2-default": "g1", "28x2-tp1-b2-default": "g2"}
    assert engine_scope(nodeid, groups) == scope
