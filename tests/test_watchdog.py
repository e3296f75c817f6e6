"""An engine that dies or stalls mid-run fails its point with the cause instead of hanging the
sweep: unit tests on a blocking stand-in of vLLM's client, and an end-to-end test that kills
the real EngineCore process during a point."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fake_engine import FakeEngine, FakeLLM

from pytest_greenllm.driver import EngineFailed
from pytest_greenllm.engine import run_requests
from pytest_greenllm.watchdog import STALL_FLOOR_S, Pace, exit_text
from pytest_greenllm.workloads import RequestSpec

REQUESTS = [RequestSpec((101, 102, 103), 4, 0.0)] * 2


@dataclass
class Process:
    """What vLLM's engine manager keeps of each engine process."""

    name: str = "EngineCore"
    pid: int = 4242
    exitcode: int | None = None


@dataclass
class Client:
    """The parts of vLLM's SyncMPClient the watchdog reads and writes."""

    process: Process = field(default_factory=Process)
    outputs_queue: queue.Queue[Any] = field(default_factory=queue.Queue)

    @property
    def resources(self) -> Any:
        return type("Resources", (), {"engine_manager": type("Manager", (), {"processes": [self.process]})})

    def shutdown(self) -> None:
        pass


@dataclass
class BlockingEngine(FakeEngine):
    """Steps normally until ``hang_after`` steps, then blocks on the client's output queue
    as vLLM's step does when its engine process is gone."""

    hang_after: int = 1
    client: Client = field(default_factory=Client)

    def step(self) -> list[Any]:
        if self.steps >= self.hang_after:
            raised = self.client.outputs_queue.get(timeout=60)
            raise raised
        # This client has no get_output: the step's outputs come straight from the model.
        return self._core_step().outputs


def blocking_llm(**options: Any) -> tuple[FakeLLM, Client]:
    engine = BlockingEngine(max_num_seqs=2, **options)
    engine.engine_core = engine.client  # type: ignore[assignment]
    return FakeLLM(engine), engine.client


def test_a_killed_engine_process_fails_the_run_with_the_cause(vllm_imported: None) -> None:
    llm, client = blocking_llm()

    def kill_later() -> None:
        time.sleep(0.3)
        client.process.exitcode = -signal.SIGKILL

    threading.Thread(target=kill_later).start()
    start = time.monotonic()
    with pytest.raises(EngineFailed) as failed:
        run_requests(llm, REQUESTS, [0.0, 0.0], "killed")
    assert time.monotonic() - start < 5
    assert str(failed.value) == (
        "the engine failed during the run: the engine process EngineCore (pid 4242) was killed "
        "by SIGKILL (the OOM killer, or a kill)"
    )


def test_a_stalled_engine_fails_once_the_stall_timeout_passed(vllm_imported: None) -> None:
    llm, _ = blocking_llm()
    start = time.monotonic()
    with pytest.raises(EngineFailed, match=r"no output for \d+ s, beyond the stall timeout of 1 s"):
        run_requests(llm, REQUESTS, [0.0, 0.0], "stalled", pace=Pace(stall_timeout_s=0.8))
    assert time.monotonic() - start < 5


def test_a_healthy_run_is_not_touched(vllm_imported: None) -> None:
    llm, _ = blocking_llm(hang_after=10_000)
    records = run_requests(llm, REQUESTS, [0.0, 0.0], "healthy", pace=Pace(stall_timeout_s=0.8))
    assert [r.output_tokens for r in records] == [4, 4]


def test_the_pace_allows_twenty_slowest_steps_and_never_less_than_the_floor() -> None:
    pace = Pace()
    assert pace.limit_s() == STALL_FLOOR_S
    pace.step(30.0)
    pace.step(2.0)
    assert pace.limit_s() == 600.0
    assert Pace(stall_timeout_s=5.0).limit_s() == 5.0


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (1, "exited with code 1"),
        (-11, "was killed by SIGSEGV"),
        (-9, "was killed by SIGKILL (the OOM killer, or a kill)"),
    ],
)
def test_exit_text(code: int, text: str) -> None:
    assert exit_text(code) == text


KILLER = """
import os, signal, threading, time
import psutil
import pytest

def kill_the_engine_core(after_s):
    time.sleep(after_s)
    for child in psutil.Process().children(recursive=True):
        if "EngineCore" in " ".join(child.cmdline()) or child.name().startswith("VLLM::EngineCor"):
            os.kill(child.pid, signal.SIGKILL)
            return

def test_killed(greenllm_point, greenllm_engine, request):
    # Past the idle measurement of the point's clock state (1 s at rest, before its run).
    threading.Thread(target=kill_the_engine_core, args=(4.0,), daemon=True).start()
    request.getfixturevalue("greenllm_result")
"""


@pytest.mark.e2e
def test_killing_the_real_engine_core_mid_point_fails_that_point_only(tmp_path: Path) -> None:
    pytest.importorskip("vllm", reason="the e2e tests need vLLM (pip install -e '.[cpu]')")
    (tmp_path / "test_kill.py").write_text(KILLER)
    (tmp_path / "test_after.py").write_text("def test_after(greenllm_result):\n    pass\n")
    env = {
        **os.environ,
        "GREENLLM_STATE_FILE": str(tmp_path / "clock-state.json"),
        "GREENLLM_FAKE_STATE": str(tmp_path / "fake-gpus.json"),
    }
    start = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--greenllm",
            "--greenllm-builtin-sweep=off",
            "--greenllm-device=fake",
            "--greenllm-tp=1",
            "--greenllm-batch=4",
            "--greenllm-workloads=256:512",
            "--greenllm-requests=8",
            "--greenllm-freqs=1410",
            "--greenllm-cooldown=0",
            "--greenllm-min-window=0.1",
            "--greenllm-slo=ttft_p99=none,tbt_p99=none",
            "-p",
            "no:cacheprovider",
            "-rA",
            "test_kill.py",
            "test_after.py",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = result.stdout
    assert time.monotonic() - start < 600, "the sweep hung"
    assert result.returncode == 1, out[-4000:] + result.stderr[-2000:]
    assert "1 failed, 1 passed" in out, out[-4000:]
    assert "was killed by SIGKILL" in out, out[-4000:]
    # The next point got a fresh engine; the killed point's clock went back.
    assert "2 engine builds for 1 engine configuration" in out
    state = json.loads((tmp_path / "fake-gpus.json").read_text())
    assert all(gpu["locked_mhz"] is None for gpu in state.values())


def test_waiting_for_the_next_arrival_is_no_stall(vllm_imported: None) -> None:
    # A gap between arrivals longer than the stall timeout: the engine has nothing to do.
    llm, _ = blocking_llm(hang_after=10_000)
    records = run_requests(llm, REQUESTS, [0.0, 1.5], "gaps", pace=Pace(stall_timeout_s=0.6))
    assert [r.output_tokens for r in records] == [4, 4]
