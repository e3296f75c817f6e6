"""ClockGuard against the fake NVML, in-process: state file, snapping, restore, recovery.

The exit paths (signals, SIGKILL, fork) need a process of their own: tests/test_clock_signals.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_greenllm.devices.errors import DeviceError, NoPermission, NotSupported
from pytest_greenllm.devices.fake_nvml import POWER_LIMIT_RANGE_MW, FakeNvml
from pytest_greenllm.devices.guard import RUN_ENV, WORKER_ENV, ClockGuard, state_files
from pytest_greenllm.devices.nvml import NvmlSession

ORIGINAL_LIMIT_MW = POWER_LIMIT_RANGE_MW[1]


class Rig:
    """A two-GPU fake whose driver state lives in a file, and a guard over it."""

    def __init__(self, tmp_path: Path) -> None:
        self.fake_state = tmp_path / "fake-driver.json"
        self.guard_state = tmp_path / "greenllm" / "locked-clocks.json"
        self.fake = FakeNvml(gpus=2, state_path=self.fake_state)
        self.session = NvmlSession(self.fake)
        self.guard = ClockGuard(self.session, self.guard_state)

    @property
    def uuids(self) -> list[str]:
        return [gpu.info.uuid for gpu in self.session.gpus]

    def record(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads(self.guard_state.read_text())
        return state

    def limit_mw(self, index: int) -> int:
        return self.session.gpus[index].power_limit_mw()


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def dead_pid() -> int:
    # A reaped child's pid names no process (until the kernel reuses it, far later).
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    return child.pid


def write_stale_record(rig: Rig, pid: int) -> None:
    """What a killed run leaves: gpu1 locked at 1410 MHz and limited to 400 W."""
    gpu = rig.session.gpus[1]
    gpu.lock_clocks(1410)
    gpu.set_power_limit_mw(400_000)
    rig.guard_state.parent.mkdir(parents=True, exist_ok=True)
    change = {"index": 1, "clock_mhz": 1410, "original_power_limit_mw": ORIGINAL_LIMIT_MW}
    rig.guard_state.write_text(json.dumps({"pid": pid, "devices": {rig.uuids[1]: change}}))


def test_lock_records_before_locking_and_rolls_back_a_refused_lock(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen_at_lock: list[dict[str, Any]] = []
    real_lock = rig.fake.nvmlDeviceSetGpuLockedClocks

    def spy(handle: Any, low: int, high: int) -> None:
        # A kill between the record and the lock must still leave the record behind.
        seen_at_lock.append(rig.record())
        real_lock(handle, low, high)

    monkeypatch.setattr(rig.fake, "nvmlDeviceSetGpuLockedClocks", spy)
    rig.fake.fail("nvmlDeviceSetGpuLockedClocks", 4)
    with pytest.raises(NoPermission, match="run as root") as info:
        rig.guard.lock_clocks(rig.session.gpus, 1410)
    assert info.value.code == 4
    assert seen_at_lock == [
        {
            "pid": os.getpid(),
            "devices": {rig.uuids[0]: {"index": 0, "clock_mhz": 1410, "original_power_limit_mw": None}},
        }
    ]
    assert not rig.guard_state.exists()
    assert not rig.guard.changed
    assert rig.fake.locked_clocks(0) is None


def test_refusal_on_the_second_gpu_keeps_the_record_of_the_first(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_lock = rig.fake.nvmlDeviceSetGpuLockedClocks

    def refuse_gpu1(handle: Any, low: int, high: int) -> None:
        if rig.fake.nvmlDeviceGetIndex(handle) == 1:
            raise rig.fake.NVMLError(4)
        real_lock(handle, low, high)

    monkeypatch.setattr(rig.fake, "nvmlDeviceSetGpuLockedClocks", refuse_gpu1)
    with pytest.raises(NoPermission):
        rig.guard.lock_clocks(rig.session.gpus, 1410)
    assert rig.fake.locked_clocks(0) == (1410, 1410)
    assert list(rig.record()["devices"]) == [rig.uuids[0]]
    assert rig.guard.restore() == ["gpu0"]
    assert rig.fake.locked_clocks(0) is None
    assert not rig.guard_state.exists()


def test_lock_snaps_to_the_nearest_supported_clock_with_a_note(rig: Rig) -> None:
    assert rig.guard.lock_clocks(rig.session.gpus, 1400) == (
        1395,
        ["gpu0: 1400 MHz snapped to 1395 MHz", "gpu1: 1400 MHz snapped to 1395 MHz"],
    )
    assert [rig.fake.locked_clocks(i) for i in (0, 1)] == [(1395, 1395)] * 2
    assert [d["clock_mhz"] for d in rig.record()["devices"].values()] == [1395, 1395]


def test_a_supported_clock_is_locked_without_a_note(rig: Rig) -> None:
    assert rig.guard.lock_clocks(rig.session.gpus[:1], 1410) == (1410, [])
    assert rig.fake.locked_clocks(0) == (1410, 1410)
    assert rig.fake.locked_clocks(1) is None


def test_restore_resets_clocks_removes_the_file_and_is_idempotent(rig: Rig) -> None:
    rig.guard.lock_clocks(rig.session.gpus, 1410)
    assert rig.guard_state.exists()
    assert json.loads(rig.fake_state.read_text())[rig.uuids[1]]["locked_mhz"] == [1410, 1410]

    assert rig.guard.restore() == ["gpu0", "gpu1"]
    assert [rig.fake.locked_clocks(i) for i in (0, 1)] == [None, None]
    # The driver's copy, which outlives this process, is reset too.
    assert all(g["locked_mhz"] is None for g in json.loads(rig.fake_state.read_text()).values())
    assert not rig.guard_state.exists()
    assert not rig.guard.changed

    assert rig.guard.restore() == []
    assert not rig.guard_state.exists()


def test_a_failed_reset_keeps_the_record_and_says_what_to_do(rig: Rig) -> None:
    rig.guard.lock_clocks(rig.session.gpus[:1], 1410)
    rig.fake.fail("nvmlDeviceResetGpuLockedClocks", 4)
    with pytest.raises(DeviceError, match="greenllm reset-clocks"):
        rig.guard.restore()
    assert list(rig.record()["devices"]) == [rig.uuids[0]]
    rig.fake.heal("nvmlDeviceResetGpuLockedClocks")
    assert rig.guard.restore() == ["gpu0"]
    assert not rig.guard_state.exists()


@pytest.mark.parametrize("limit_mw", [199_000, 700_001])
def test_power_limit_out_of_range_names_the_range(rig: Rig, limit_mw: int) -> None:
    # NotSupported, as NVML's own refusal: the sweep skips such a point with what to do.
    with pytest.raises(NotSupported, match=r"GPU 0: .* outside its 200-700 W range"):
        rig.guard.set_power_limit(rig.session.gpus, limit_mw)
    assert rig.limit_mw(0) == ORIGINAL_LIMIT_MW
    assert not rig.guard_state.exists()


def test_power_limit_is_put_back_by_restore(rig: Rig) -> None:
    rig.guard.set_power_limit(rig.session.gpus, 400_000)
    assert [rig.limit_mw(i) for i in (0, 1)] == [400_000, 400_000]
    assert [d["original_power_limit_mw"] for d in rig.record()["devices"].values()] == [ORIGINAL_LIMIT_MW] * 2
    # A second change must still remember the limit from before the first.
    rig.guard.set_power_limit(rig.session.gpus, 300_000)
    assert rig.guard.restore() == ["gpu0", "gpu1"]
    assert [rig.limit_mw(i) for i in (0, 1)] == [ORIGINAL_LIMIT_MW] * 2
    assert not rig.guard_state.exists()


def test_restore_puts_back_a_point_s_clock_and_limit_together(rig: Rig) -> None:
    rig.guard.lock_clocks(rig.session.gpus[:1], 1410)
    rig.guard.set_power_limit(rig.session.gpus[:1], 300_000)
    assert rig.record()["devices"] == {
        rig.uuids[0]: {"index": 0, "clock_mhz": 1410, "original_power_limit_mw": ORIGINAL_LIMIT_MW}
    }
    assert rig.guard.restore() == ["gpu0"]
    assert rig.fake.locked_clocks(0) is None
    assert [rig.limit_mw(i) for i in (0, 1)] == [ORIGINAL_LIMIT_MW] * 2
    assert not rig.guard_state.exists()


def test_restoring_clocks_only_keeps_the_limit_and_its_record(rig: Rig) -> None:
    rig.guard.lock_clocks(rig.session.gpus[:1], 1410)
    rig.guard.set_power_limit(rig.session.gpus[:1], 300_000)
    assert rig.guard.restore(clocks_only=True) == ["gpu0"]
    assert rig.fake.locked_clocks(0) is None
    assert rig.limit_mw(0) == 300_000
    assert rig.record()["devices"] == {
        rig.uuids[0]: {"index": 0, "clock_mhz": None, "original_power_limit_mw": ORIGINAL_LIMIT_MW}
    }
    assert rig.guard.restore() == ["gpu0"]
    assert rig.limit_mw(0) == ORIGINAL_LIMIT_MW
    assert not rig.guard_state.exists()


def test_a_refused_second_power_limit_keeps_the_original(rig: Rig) -> None:
    gpus = rig.session.gpus[:1]
    rig.guard.set_power_limit(gpus, 300_000)
    rig.fake.fail("nvmlDeviceSetPowerManagementLimit", 4)
    with pytest.raises(NoPermission):
        rig.guard.set_power_limit(gpus, 400_000)
    rig.fake.heal("nvmlDeviceSetPowerManagementLimit")
    rig.guard.restore()
    assert rig.limit_mw(0) == ORIGINAL_LIMIT_MW


def test_recover_stale_resets_what_a_dead_run_left(rig: Rig) -> None:
    pid = dead_pid()
    write_stale_record(rig, pid)
    assert rig.guard.recover_stale() == [f"reset what a killed run (pid {pid}) left changed: gpu1"]
    assert rig.fake.locked_clocks(1) is None
    assert rig.limit_mw(1) == ORIGINAL_LIMIT_MW
    assert not rig.guard_state.exists()
    assert rig.guard.recover_stale() == []


def test_recover_stale_refuses_a_live_run_unless_forced(rig: Rig) -> None:
    pid = os.getppid()
    write_stale_record(rig, pid)
    with pytest.raises(DeviceError, match=rf"another run \(pid {pid}\) .*greenllm reset-clocks"):
        rig.guard.recover_stale()
    # The other run's clocks and record are left alone.
    assert rig.fake.locked_clocks(1) == (1410, 1410)
    assert rig.guard_state.exists()

    assert rig.guard.recover_stale(force=True) == [f"reset what a killed run (pid {pid}) left changed: gpu1"]
    assert rig.fake.locked_clocks(1) is None
    assert not rig.guard_state.exists()


@pytest.mark.parametrize(
    "text",
    ["{not json", '{"devices": {}}', '{"pid": 1, "devices": {"GPU-x": {"bogus": 1}}}', "[]"],
    ids=["not-json", "no-pid", "bad-change", "not-an-object"],
)
def test_a_corrupt_state_file_says_what_to_do(rig: Rig, text: str) -> None:
    rig.guard_state.parent.mkdir(parents=True)
    rig.guard_state.write_text(text)
    with pytest.raises(DeviceError, match="unreadable clock state file") as info:
        rig.guard.recover_stale()
    assert "nvidia-smi" in str(info.value)
    assert "greenllm reset-clocks --all" in str(info.value)
    # Deleting it is the user's call, once the GPUs are checked.
    assert rig.guard_state.read_text() == text


def test_parallel_workers_keep_a_state_file_each_and_leave_each_other_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(RUN_ENV, "run-1")
    monkeypatch.setenv(WORKER_ENV, "gw1")
    rig = Rig(tmp_path)  # a worker's guard
    rig.guard.lock_clocks([rig.session.gpus[0]], 1410)
    own = rig.guard_state.with_name("locked-clocks.json.gw1")
    assert not rig.guard_state.exists()
    assert json.loads(own.read_text())["run"] == "run-1"
    # A live sibling of the same run, on gpu1: left alone.
    sibling = rig.guard_state.with_name("locked-clocks.json.gw2")
    record = {"pid": os.getppid(), "run": "run-1", "devices": {rig.uuids[1]: {"index": 1, "clock_mhz": 1410}}}
    sibling.write_text(json.dumps(record))
    assert rig.guard.recover_stale() == []
    assert state_files(rig.guard_state) == [own, sibling]
    # A live process of another run is another run, as before.
    sibling.write_text(json.dumps({**record, "run": "run-2"}))
    with pytest.raises(DeviceError, match=r"another run \(pid \d+\)"):
        rig.guard.recover_stale()
    # A killed worker's record is undone like a killed run's.
    sibling.write_text(json.dumps({**record, "pid": dead_pid()}))
    rig.fake.nvmlDeviceSetGpuLockedClocks(rig.fake.nvmlDeviceGetHandleByIndex(1), 1410, 1410)
    [done] = rig.guard.recover_stale()
    assert done.endswith("left changed: gpu1") and not sibling.exists()
    assert rig.fake.locked_clocks(1) is None
    rig.guard.restore()
    assert state_files(rig.guard_state) == []
