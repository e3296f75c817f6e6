"""Locked clocks are reset however a process ends: signals, SIGKILL and the next run, fork.

Each case runs in a process of its own, since a signal or a kill ends the process that gets it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_engine import sweep_knobs
from signal_scripts import SIGINT_AS_AT_A_TERMINAL

from pytest_greenllm.cli import main
from pytest_greenllm.devices.fake_nvml import FakeNvml
from pytest_greenllm.devices.guard import ClockGuard
from pytest_greenllm.devices.nvml import NvmlSession

TIMEOUT_S = 60

# Locks both GPUs of a fake whose driver state lives in a file, installs the guard, then
# ends as argv[3] says. It prints what the driver file shows at each step.
GUARD_SCRIPT = (
    r"""
import json, os, signal, sys, time
from pathlib import Path
from pytest_greenllm.devices.fake_nvml import FakeNvml
from pytest_greenllm.devices.guard import ClockGuard
from pytest_greenllm.devices.nvml import NvmlSession

fake_state, guard_state, how = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
"""
    + SIGINT_AS_AT_A_TERMINAL
    + r"""

def show(when):
    locked = [g["locked_mhz"] for g in json.loads(fake_state.read_text()).values()]
    print(when, locked, guard_state.exists(), flush=True)

session = NvmlSession(FakeNvml(gpus=2, state_path=fake_state))
guard = ClockGuard(session, guard_state)
guard.lock_clocks(session.gpus, 1410)
guard.install()
show("before")
if how.startswith("fork"):
    child = os.fork()
    if child == 0:
        if how == "fork-sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
        sys.exit(0)
    os.waitpid(child, 0)
    show("after child")
    sys.exit(0)
try:
    os.kill(os.getpid(), getattr(signal, how))
    # A signal a process sends itself is handled before kill returns; an ignored one never.
    time.sleep(1 if ignored else 30)
except KeyboardInterrupt:
    show("KeyboardInterrupt")
    raise
print("the signal did not end the process", flush=True)
"""
)

LOCKED_BOTH = "[[1410, 1410], [1410, 1410]] True"
RESET_BOTH = "[None, None] False"


def run_guard_script(tmp_path: Path, how: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", GUARD_SCRIPT, str(tmp_path / "fake.json"), str(tmp_path / "guard.json"), how],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def fake_locks(path: Path) -> list[list[int] | None]:
    """The locked clocks per GPU as the fake driver keeps them, outliving processes."""
    return [gpu["locked_mhz"] for gpu in json.loads(path.read_text()).values()]


def test_sigterm_resets_clocks_then_terminates(tmp_path: Path) -> None:
    result = run_guard_script(tmp_path, "SIGTERM")
    assert result.stdout == f"before {LOCKED_BOTH}\n", result.stderr
    # The default action still happens: killed by the signal, no atexit run.
    assert result.returncode == -signal.SIGTERM
    assert fake_locks(tmp_path / "fake.json") == [None, None]
    assert not (tmp_path / "guard.json").exists()


def test_sigint_resets_clocks_before_keyboard_interrupt(tmp_path: Path) -> None:
    result = run_guard_script(tmp_path, "SIGINT")
    # Already reset when the program sees its KeyboardInterrupt.
    assert result.stdout == f"before {LOCKED_BOTH}\nKeyboardInterrupt {RESET_BOTH}\n"
    assert "KeyboardInterrupt" in result.stderr
    assert result.returncode == -signal.SIGINT
    assert fake_locks(tmp_path / "fake.json") == [None, None]


def test_an_ignored_sigint_leaves_the_clocks_locked(tmp_path: Path) -> None:
    # The signal ends nothing, so the run goes on and needs its clocks as they were.
    result = run_guard_script(tmp_path, "ignored-SIGINT")
    assert result.stdout == f"before {LOCKED_BOTH}\nthe signal did not end the process\n", result.stderr
    assert result.returncode == 0
    # The owner's own exit (atexit) resets them.
    assert fake_locks(tmp_path / "fake.json") == [None, None]


def test_sigkill_leaves_the_record_and_recover_stale_resets(tmp_path: Path) -> None:
    result = subprocess.Popen(
        [
            sys.executable,
            "-c",
            GUARD_SCRIPT,
            str(tmp_path / "fake.json"),
            str(tmp_path / "guard.json"),
            "SIGKILL",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    stdout, _ = result.communicate(timeout=TIMEOUT_S)
    assert stdout == f"before {LOCKED_BOTH}\n"
    assert result.returncode == -signal.SIGKILL
    assert fake_locks(tmp_path / "fake.json") == [[1410, 1410]] * 2
    assert json.loads((tmp_path / "guard.json").read_text())["pid"] == result.pid

    session = NvmlSession(FakeNvml(gpus=2, state_path=tmp_path / "fake.json"))
    guard = ClockGuard(session, tmp_path / "guard.json")
    assert guard.recover_stale() == [f"reset what a killed run (pid {result.pid}) left changed: gpu0, gpu1"]
    assert fake_locks(tmp_path / "fake.json") == [None, None]
    assert not (tmp_path / "guard.json").exists()


@pytest.mark.parametrize("how", ["fork-exit", "fork-sigterm"])
def test_a_forked_child_does_not_reset_the_parents_clocks(tmp_path: Path, how: str) -> None:
    result = run_guard_script(tmp_path, how)
    assert result.stdout == f"before {LOCKED_BOTH}\nafter child {LOCKED_BOTH}\n", result.stderr
    # The owner's own exit (atexit) resets them.
    assert result.returncode == 0
    assert fake_locks(tmp_path / "fake.json") == [None, None]
    assert not (tmp_path / "guard.json").exists()


# --- a pytest run that holds a locked clock --------------------------------------------

HOLDING_TEST = """
import time

def test_hold(greenllm_point, locked_clocks):
    assert locked_clocks == 1410
    time.sleep(60)
"""

PLAIN_TEST = """
def test_point(greenllm_point):
    pass
"""

KNOBS = sweep_knobs(0.5, 1, "S")


@pytest.fixture
def clock_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(fake driver state, guard state), both under tmp_path, for this process and children."""
    fake_state, guard_state = tmp_path / "fake.json", tmp_path / "guard.json"
    monkeypatch.setenv("GREENLLM_FAKE_STATE", str(fake_state))
    monkeypatch.setenv("GREENLLM_STATE_FILE", str(guard_state))
    monkeypatch.setenv("GREENLLM_FAKE_GPUS", "2")
    monkeypatch.delenv("GREENLLM_FAKE_FAIL", raising=False)
    return fake_state, guard_state


def locked_gpu0(fake_state: Path) -> bool:
    try:
        return fake_locks(fake_state)[0] == [1410, 1410]
    except (OSError, ValueError):  # not written yet, or caught mid-write (not atomic)
        return False


def start_holding_run(pytester: pytest.Pytester, fake_state: Path) -> subprocess.Popen[str]:
    """A child pytest inside test_hold, its clock locked (once the fake driver shows it)."""
    pytester.makepyfile(test_hold=HOLDING_TEST)
    child = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *KNOBS, "test_hold.py"],
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not locked_gpu0(fake_state):
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"the child run never locked a clock:\n{child.communicate()[0]}")
        time.sleep(0.05)
    return child


def end(child: subprocess.Popen[str], signum: int) -> None:
    child.send_signal(signum)
    try:
        child.wait(timeout=TIMEOUT_S)
    finally:
        child.kill()
        assert child.stdout is not None
        child.stdout.close()


def test_sigterm_on_a_pytest_run_resets_its_clock(
    pytester: pytest.Pytester, clock_env: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_state, guard_state = clock_env
    child = start_holding_run(pytester, fake_state)
    assert json.loads(guard_state.read_text())["pid"] == child.pid

    # While it holds the GPUs, others are turned away rather than resetting its clock.
    assert main(["reset-clocks", "--device", "fake"]) == 1
    assert f"another run (pid {child.pid}) holds locked clocks" in capsys.readouterr().err
    plain = pytester.makepyfile(PLAIN_TEST)
    busy = pytester.runpytest(*KNOBS, plain)
    assert busy.ret == pytest.ExitCode.USAGE_ERROR
    busy.stderr.fnmatch_lines([f"ERROR: --greenllm-device=fake: another run (pid {child.pid}) *"])
    assert fake_locks(fake_state)[0] == [1410, 1410]

    end(child, signal.SIGTERM)
    assert child.returncode == -signal.SIGTERM
    assert fake_locks(fake_state) == [None, None]
    assert not guard_state.exists()


def test_after_sigkill_the_next_run_resets_what_was_left(
    pytester: pytest.Pytester, clock_env: tuple[Path, Path]
) -> None:
    fake_state, guard_state = clock_env
    child = start_holding_run(pytester, fake_state)
    end(child, signal.SIGKILL)
    assert child.returncode == -signal.SIGKILL
    assert fake_locks(fake_state) == [[1410, 1410], None]
    assert json.loads(guard_state.read_text())["pid"] == child.pid

    plain = pytester.makepyfile(PLAIN_TEST)
    result = pytester.runpytest(*KNOBS, plain)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"greenllm: reset what a killed run (pid {child.pid}) left changed: gpu0"])
    assert fake_locks(fake_state) == [None, None]
    assert not guard_state.exists()


def test_reset_clocks_command_resets_what_a_killed_run_left(
    pytester: pytest.Pytester, clock_env: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_state, guard_state = clock_env
    child = start_holding_run(pytester, fake_state)
    end(child, signal.SIGKILL)
    capsys.readouterr()

    assert main(["reset-clocks", "--device", "fake"]) == 0
    assert capsys.readouterr().out == (
        f"greenllm: reset what a killed run (pid {child.pid}) left changed: gpu0\n"
    )
    assert fake_locks(fake_state) == [None, None]
    assert not guard_state.exists()

    assert main(["reset-clocks", "--device", "fake"]) == 0
    assert capsys.readouterr().out == f"greenllm: nothing to reset: no state file at {guard_state}\n"


def run_with_refused_reset(pytester: pytest.Pytester) -> subprocess.CompletedProcess[str]:
    """A child run whose point locks a clock that the fake then refuses to reset."""
    pytester.makepyfile(
        """
        def test_point(greenllm_point, locked_clocks):
            pass
        """
    )
    env = {**os.environ, "GREENLLM_FAKE_FAIL": "nvmlDeviceResetGpuLockedClocks=4"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *KNOBS],
        cwd=pytester.path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def test_a_refused_reset_keeps_the_record_for_reset_clocks(
    pytester: pytest.Pytester, clock_env: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_state, guard_state = clock_env
    result = run_with_refused_reset(pytester)
    assert "ERROR at teardown of test_point" in result.stdout, result.stdout + result.stderr
    assert "run `greenllm reset-clocks`" in result.stdout
    assert fake_locks(fake_state)[0] == [1410, 1410]
    record = json.loads(guard_state.read_text())["devices"]
    assert list(record.values()) == [{"index": 0, "clock_mhz": 1410, "original_power_limit_mw": None}]

    assert main(["reset-clocks", "--device", "fake"]) == 0
    assert "left changed: gpu0" in capsys.readouterr().out
    assert fake_locks(fake_state) == [None, None]


def test_a_refused_reset_ends_the_run_cleanly(
    pytester: pytest.Pytester, clock_env: tuple[Path, Path]
) -> None:
    result = run_with_refused_reset(pytester)
    assert result.returncode == pytest.ExitCode.TESTS_FAILED
    assert "Traceback" not in result.stderr
    assert "Uninitialized" not in result.stderr
