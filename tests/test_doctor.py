"""`greenllm doctor` on the fake device: every check, the three ways a GPU falls short (no
permission, no energy counter, a lock not held under load), read-only mode, JSON, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_greenllm.cli import main

GPU_CHECKS = {
    "persistence mode",
    "idle power and temperature",
    "supported clocks",
    "energy counter",
    "instantaneous power",
    "permission to lock clocks",
    "permission to set power limits",
    "power limit set and read back",
    "clock lock held under load",
    "counter vs integrated power",
}
SYSTEM_CHECKS = {"vLLM", "CUDA_VISIBLE_DEVICES", "RAPL", "NVML"}


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """One fake GPU under a constant full load; returns the fake driver's state file."""
    state = tmp_path / "fake-gpus.json"
    monkeypatch.setenv("GREENLLM_STATE_FILE", str(tmp_path / "clock-state.json"))
    monkeypatch.setenv("GREENLLM_FAKE_STATE", str(state))
    monkeypatch.setenv("GREENLLM_FAKE_GPUS", "1")
    monkeypatch.setenv("GREENLLM_FAKE_LOAD", "1")
    for name in ("GREENLLM_FAKE_FAIL", "GREENLLM_FAKE_POWER_SCALE", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    return state


def doctor(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    status = main(["doctor", "--device", "fake", "--window", "0.5", "--json", *args])
    return status, json.loads(capsys.readouterr().out)


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["checks"] if c["scope"] == "gpu0"}


def test_a_healthy_fake_gpu_passes_every_check(fake: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Two seconds: the counter's 100 ms steps then move the comparison by 5% at most.
    status, report = doctor(capsys, "--window", "2")
    assert status == 0 and report["ok"] is True
    assert {c["name"] for c in report["checks"] if c["scope"] == "system"} == SYSTEM_CHECKS
    checks = by_name(report)
    assert set(checks) == GPU_CHECKS
    assert all(c["status"] in ("ok", "info") for c in checks.values()), checks
    assert "updates every 100 ms" in checks["energy counter"]["detail"]
    assert "locked 1980 MHz" in checks["clock lock held under load"]["detail"]
    assert "set 650 W, read 650 W; put back to 700 W" in checks["power limit set and read back"]["detail"]
    # Everything it changed went back: no clock locked, the limit where it was.
    saved = json.loads(fake.read_text())
    assert all(g["locked_mhz"] is None and g["power_limit_mw"] == 700_000 for g in saved.values())


def test_the_screen_ends_with_the_verdict(fake: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--device", "fake", "--window", "0.5"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("greenllm doctor: device=fake")
    assert out[-1] == "ready: this box can run an honest energy sweep"


@pytest.mark.parametrize(
    ("fail", "check", "fix"),
    [
        ("nvmlDeviceSetGpuLockedClocks=4", "permission to lock clocks", "run the sweep as root"),
        ("nvmlDeviceSetPowerManagementLimit=4", "permission to set power limits", "run as root"),
        ("nvmlDeviceGetTotalEnergyConsumption=3", "energy counter", "integrated sampled power"),
        ("nvmlDeviceGetPersistenceMode=3", "persistence mode", ""),
    ],
    ids=["no-lock-permission", "no-limit-permission", "no-energy-counter", "persistence-unreadable"],
)
def test_what_is_missing_says_what_to_do(
    fake: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fail: str,
    check: str,
    fix: str,
) -> None:
    monkeypatch.setenv("GREENLLM_FAKE_FAIL", fail)
    status, report = doctor(capsys)
    found = by_name(report)[check]
    if fix:
        assert (status, report["ok"], found["status"]) == (1, False, "missing")
        assert fix in found["fix"]
    else:  # a reading NVML refuses is a warning, not a blocker
        assert (status, found["status"]) == (0, "warn")


def test_a_lock_accepted_but_not_held_under_load_fails(
    fake: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A 200 W limit: at full load the driver pulls the locked 1980 MHz down (SwPowerCap).
    fake.write_text(json.dumps({"GPU-fa4e0000-0000-4000-8000-000000000000": {"power_limit_mw": 200_000}}))
    status, report = doctor(capsys)
    held = by_name(report)["clock lock held under load"]
    assert (status, held["status"]) == (1, "missing")
    assert "SwPowerCap" in held["detail"] and "not held" in held["fix"]
    assert json.loads(fake.read_text())["GPU-fa4e0000-0000-4000-8000-000000000000"]["locked_mhz"] is None


def test_read_only_changes_nothing_and_reports_what_nvml_states(
    fake: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Any setter would raise: read-only must not call one.
    monkeypatch.setenv(
        "GREENLLM_FAKE_FAIL",
        "nvmlDeviceSetGpuLockedClocks=4,nvmlDeviceSetPowerManagementLimit=4,nvmlDeviceResetGpuLockedClocks=4",
    )
    status, report = doctor(capsys, "--read-only")
    assert status == 0 and report["read_only"] is True
    checks = by_name(report)
    assert checks["permission to lock clocks"]["status"] == "info"
    assert "NVML restricts clock changes to root" in checks["permission to lock clocks"]["detail"]
    assert "power limit set and read back" not in checks
    assert checks["clocks under load"]["status"] == "info"
    assert checks["counter vs integrated power"]["status"] in ("ok", "warn")
    assert not fake.exists() or all(g["locked_mhz"] is None for g in json.loads(fake.read_text()).values())


def test_without_nvml_the_doctor_says_what_to_install(
    fake: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GREENLLM_FAKE_FAIL", "nvmlInit=12")
    status, report = doctor(capsys)
    nvml = next(c for c in report["checks"] if c["name"] == "NVML")
    assert (status, nvml["status"]) == (1, "missing") and "install the NVIDIA driver" in nvml["fix"]


@pytest.mark.parametrize("window", ["0", "-1", "soon", "inf"])
def test_a_bad_window_is_a_usage_error(fake: Path, capsys: pytest.CaptureFixture[str], window: str) -> None:
    assert main(["doctor", "--device", "fake", "--window", window]) == 2
    assert f"--window={window}" in capsys.readouterr().err


def test_an_unknown_device_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["doctor", "--device", "bogus"])
    assert exit_.value.code == 2


def test_read_only_leaves_another_runs_clock_record_alone(
    fake: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    record = tmp_path / "clock-state.json"
    record.write_text('{"pid": 999999, "gpus": {}}')
    doctor(capsys, "--read-only")
    assert record.read_text() == '{"pid": 999999, "gpus": {}}'
