"""The clock and energy fixtures as a user sees them, with the fake device's driver state
kept in a file so that what is locked can be read from outside the run.

Signals, SIGKILL and the next run's recovery are in tests/test_clock_signals.py.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
from fake_engine import sweep_knobs

KNOBS = sweep_knobs(0.5, 1, "S")

# The test files read the fake driver's state through this, from inside the run.
FAKE_STATE_HELPER = """
import json, os
from pathlib import Path

def fake_state():
    path = Path(os.environ["GREENLLM_FAKE_STATE"])
    return json.loads(path.read_text()) if path.exists() else {}

def fake_locks():
    return [gpu["locked_mhz"] for gpu in fake_state().values()]

def guard_record_exists():
    return Path(os.environ["GREENLLM_STATE_FILE"]).exists()
"""


class Clocks:
    """The fake driver's state file and the guard's, as seen from outside the run."""

    def __init__(self, tmp_path: Path) -> None:
        self.fake_state = tmp_path / "fake-driver.json"
        self.guard_state = tmp_path / "locked-clocks.json"

    def driver(self) -> dict[str, Any]:
        if not self.fake_state.exists():
            return {}
        state: dict[str, Any] = json.loads(self.fake_state.read_text())
        return state

    def locks(self) -> list[list[int] | None]:
        return [gpu["locked_mhz"] for gpu in self.driver().values()]

    def assert_all_reset(self) -> None:
        assert self.locks() in ([], [None, None])
        assert not self.guard_state.exists()


@pytest.fixture
def clocks(pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Clocks:
    clocks = Clocks(tmp_path)
    monkeypatch.setenv("GREENLLM_FAKE_STATE", str(clocks.fake_state))
    monkeypatch.setenv("GREENLLM_STATE_FILE", str(clocks.guard_state))
    monkeypatch.setenv("GREENLLM_FAKE_GPUS", "2")
    monkeypatch.delenv("GREENLLM_FAKE_FAIL", raising=False)
    pytester.makepyfile(fake_helper=FAKE_STATE_HELPER)
    return clocks


HOLDING_TESTS = """
from fake_helper import fake_locks, guard_record_exists

def check_locked(locked_clocks):
    assert locked_clocks == 1410
    # Only the point's tp=1 GPU, and recorded for the guard.
    assert fake_locks() == [[1410, 1410], None]
    assert guard_record_exists()

def test_passes(greenllm_point, locked_clocks):
    check_locked(locked_clocks)

def test_fails(greenllm_point, locked_clocks):
    check_locked(locked_clocks)
    raise AssertionError("fails on purpose")

def test_interrupted(greenllm_point, locked_clocks):
    check_locked(locked_clocks)
    raise KeyboardInterrupt
"""


@pytest.mark.parametrize(
    "name, how_it_ended, status",
    [
        ("test_passes", "* 1 passed, 2 deselected*", pytest.ExitCode.OK),
        ("test_fails", "E * AssertionError: fails on purpose", pytest.ExitCode.TESTS_FAILED),
        ("test_interrupted", "*!!! KeyboardInterrupt !!!*", pytest.ExitCode.INTERRUPTED),
    ],
    ids=["passing", "failing", "interrupted"],
)
def test_the_point_clock_is_locked_during_the_test_and_reset_after(
    pytester: pytest.Pytester, clocks: Clocks, name: str, how_it_ended: str, status: pytest.ExitCode
) -> None:
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    pytester.makepyfile(HOLDING_TESTS)
    # no_reraise_ctrlc: the inner run's KeyboardInterrupt must not end this outer run.
    result = pytester.runpytest(*KNOBS, "-k", name, no_reraise_ctrlc=True)
    assert result.ret == status, result.stdout.str()
    # Ending as intended shows that check_locked passed inside the test.
    result.stdout.fnmatch_lines([how_it_ended])
    clocks.assert_all_reset()
    # An in-process run must not leave its handlers in the process that ran it.
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


def test_indirect_parametrization_locks_each_clock_snapped(pytester: pytest.Pytester, clocks: Clocks) -> None:
    pytester.makepyfile(
        """
        import pytest
        from fake_helper import fake_locks

        @pytest.mark.parametrize(
            "locked_clocks, expected",
            [(1410, 1410), (1400, 1395), (1980, 1980)],
            indirect=["locked_clocks"],
        )
        def test_clock(locked_clocks, expected):
            assert locked_clocks == expected
            # Without a knob point it locks every GPU.
            assert fake_locks() == [[expected, expected]] * 2
        """
    )
    result = pytester.runpytest(*KNOBS, "-v")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*test_clock[[]1410-1410[]] PASSED*"])
    clocks.assert_all_reset()


MIXED_TESTS = """
from fake_helper import fake_locks

def test_point(greenllm_point, locked_clocks):
    assert locked_clocks is None
    assert fake_locks() == []

def test_plain():
    pass
"""


def test_refused_permission_skips_the_point_with_what_to_do(
    pytester: pytest.Pytester, clocks: Clocks, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GREENLLM_FAKE_FAIL", "nvmlDeviceSetGpuLockedClocks=4")
    pytester.makepyfile(MIXED_TESTS)
    result = pytester.runpytest(*KNOBS, "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED [[]1[]] *: clocks not locked: GPU 0: lock clocks at 1410 MHz: *"])
    skip_line = next(line for line in result.outlines if line.startswith("SKIPPED"))
    assert "run as root" in skip_line
    assert "--greenllm-freqs=default" in skip_line
    clocks.assert_all_reset()


def test_freqs_default_never_touches_the_clocks(
    pytester: pytest.Pytester, clocks: Clocks, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Any lock or reset attempt would fail, turning the point into a skip or an error.
    fail = "nvmlDeviceSetGpuLockedClocks=4,nvmlDeviceResetGpuLockedClocks=4"
    monkeypatch.setenv("GREENLLM_FAKE_FAIL", fail)
    pytester.makepyfile(MIXED_TESTS)
    result = pytester.runpytest(*KNOBS, "--greenllm-freqs=default")
    result.assert_outcomes(passed=2)
    assert not clocks.fake_state.exists()
    assert not clocks.guard_state.exists()


ENERGY_TEST = """
import time

def test_energy(energy_meter):
    with energy_meter.window() as window:
        time.sleep(0.6)
    result = window.result
    assert result.energy_j > 0
    assert result.method == "counter"
    assert not result.short
"""


def test_energy_meter_measures_a_window_on_the_fake(pytester: pytest.Pytester, clocks: Clocks) -> None:
    pytester.makepyfile(ENERGY_TEST)
    pytester.runpytest(*KNOBS).assert_outcomes(passed=1)


def test_energy_meter_skips_without_a_meter_and_says_how_to_get_one(
    pytester: pytest.Pytester, clocks: Clocks
) -> None:
    pytester.makepyfile(ENERGY_TEST)
    result = pytester.runpytest(*KNOBS, "--greenllm-device=none", "--greenllm-freqs=default", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        [
            "SKIPPED [[]1[]] *: energy not measured: no energy meter here (device=none): "
            "install the NVIDIA driver and nvidia-ml-py for GPUs, or make RAPL readable *"
        ]
    )
