"""GPU leases: all or nothing, never one GPU to two holders, released when the holder dies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fake_engine import sweep_knobs

from pytest_greenllm.devices.fake_nvml import FakeNvml
from pytest_greenllm.devices.leases import LOG_NAME, GpuLeases

UUIDS = [f"GPU-fake-{i}" for i in range(4)]


def test_leases_take_the_first_free_gpus_and_release_them(tmp_path: Path) -> None:
    a, b = GpuLeases(UUIDS, tmp_path, "a"), GpuLeases(UUIDS, tmp_path, "b")  # two processes' worth
    assert a.acquire(2) == [0, 1]
    assert b.acquire(2) == [2, 3]
    a.release()
    assert b.acquire(1) == [0]  # b's earlier lease is given back first
    assert b.held == [0]
    b.close()
    events = [json.loads(line) for line in (tmp_path / LOG_NAME).read_text().splitlines()]
    assert [(e["who"], e["event"], e["gpus"]) for e in events] == [
        ("a", "lease", [0, 1]),
        ("b", "lease", [2, 3]),
        ("a", "release", [0, 1]),
        ("b", "release", [2, 3]),
        ("b", "lease", [0]),
        ("b", "release", [0]),
    ]
    assert events[0]["uuids"] == ["GPU-fake-0", "GPU-fake-1"]


def test_a_lease_waits_holding_nothing_and_says_who_holds_the_gpus(tmp_path: Path) -> None:
    holder = GpuLeases(UUIDS, tmp_path, "worker gw0")
    holder.acquire(3)
    told: list[str] = []
    waiter = GpuLeases(UUIDS, tmp_path, "worker gw1", poll_s=0.01, on_wait=told.append)
    got: list[int] = []
    thread = threading.Thread(target=lambda: got.extend(waiter.acquire(2)))
    thread.start()
    time.sleep(0.2)
    # Waiting for two, it holds none: the fourth GPU stays free for a one-GPU lease.
    other = GpuLeases(UUIDS, tmp_path, "c")
    assert other.acquire(1) == [3]
    assert told == [
        "worker gw1 waits for 2 free GPU(s): gpu0: worker gw0, gpu1: worker gw0, gpu2: worker gw0, gpu3: free"
    ]
    holder.release()
    thread.join(5)
    assert got == [0, 1]
    for leases in (other, waiter):
        leases.close()


def test_too_many_gpus_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="5 GPUs asked for, 4 exist"):
        GpuLeases(UUIDS, tmp_path).acquire(5)


def test_a_killed_holder_leaves_its_gpus_free(tmp_path: Path) -> None:
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from pytest_greenllm.devices.leases import GpuLeases\n"
        f"GpuLeases({UUIDS!r}, Path({str(tmp_path)!r}), 'doomed').acquire(4)\n"
        "print('held', flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    leases = GpuLeases(UUIDS, tmp_path, "next", poll_s=0.01)
    child.kill()
    child.communicate()
    assert leases.acquire(4) == [0, 1, 2, 3]
    leases.close()


def another_run(monkeypatch: pytest.MonkeyPatch, locks: Path, gpus: int) -> GpuLeases:
    """The leases of another run on a box of ``gpus`` fake GPUs, which the sweep shares."""
    monkeypatch.setenv("GREENLLM_LOCK_DIR", str(locks))
    monkeypatch.setenv("GREENLLM_FAKE_GPUS", str(gpus))
    return GpuLeases([gpu.uuid for gpu in FakeNvml(gpus=gpus)._devices], locks, "another run")


def test_a_sweep_leases_each_engines_gpus_and_measures_those(
    sweep: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    locks = tmp_path / "locks"
    # Another run on the box holds the first GPU: this one must take the others.
    other = another_run(monkeypatch, locks, 4)
    assert other.acquire(1) == [0]
    result = sweep.runpytest(*sweep_knobs(0, 2, "8:2"), "--greenllm-tp=1,2", "--greenllm-json=r.json")
    other.close()
    result.assert_outcomes(passed=2)
    events = [json.loads(line) for line in (locks / LOG_NAME).read_text().splitlines()]
    mine = [(e["event"], e["gpus"]) for e in events if e["who"] != "another run"]
    assert mine == [("lease", [1]), ("release", [1]), ("lease", [1, 2]), ("release", [1, 2])]
    report = json.loads((sweep.path / "r.json").read_text())
    measured = [[label for label, _ in p["repeats"][0]["energy"]["per_device_j"]] for p in report["points"]]
    assert measured == [["gpu1"], ["gpu1", "gpu2"]]
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # put back as it was


def test_a_sweep_waits_for_gpus_another_run_holds_and_says_so(
    sweep: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    other = another_run(monkeypatch, tmp_path / "locks", 2)
    other.acquire(2)
    timer = threading.Timer(1.0, other.release)
    timer.start()
    started = time.monotonic()
    result = sweep.runpytest(*sweep_knobs(0, 2, "8:2"))
    timer.join()
    other.close()
    result.assert_outcomes(passed=1)
    assert time.monotonic() - started >= 1.0
    result.stdout.fnmatch_lines(
        ["greenllm: pid * waits for 1 free GPU(s): gpu0: another run, gpu1: another run"]
    )
