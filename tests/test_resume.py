"""A killed sweep and ``--greenllm-resume``: every point ends up measured exactly once.

The sweep runs on the fake device with the fake engine of tests/fake_engine.py; the kill is
a real SIGKILL of a child pytest, so nothing of the plugin's own clean-up runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path, PosixPath
from typing import Any

import pytest
from fake_engine import STEP_ENV, sweep_knobs

from pytest_greenllm.devices.fake_nvml import FakeNvml

KNOBS = sweep_knobs(0.1, 2, "8:4,16:4,24:4,32:4")
POINTS = [f"{n}x4-tp1-b2-1410MHz" for n in (8, 16, 24, 32)]
KEPT = "greenllm: measured before, kept from"


def whole_records(journal: Path) -> list[dict[str, Any]]:
    """The journal's point records; a line still being written (no newline yet) is not one."""
    if not journal.exists():
        return []
    lines = journal.read_text().split("\n")[1:-1]
    return [json.loads(line) for line in lines]


def assert_each_point_once(records: list[dict[str, Any]]) -> None:
    assert sorted(r["id"] for r in records) == sorted(POINTS)


def resume(sweep: pytest.Pytester, journal: Path, kept: list[str]) -> dict[str, Any]:
    """Resume from ``journal``; checks that exactly the ``kept`` points are skipped, the
    others run, and returns the final report."""
    result = sweep.runpytest(
        *KNOBS, f"--greenllm-resume={journal.name}", "--greenllm-json=final.json", "-v", "-rs"
    )
    result.assert_outcomes(passed=len(POINTS) - len(kept), skipped=len(kept))
    result.stdout.fnmatch_lines(
        [
            f"greenllm: resuming {journal.name}: {len(kept)} points kept from before",
            *(f"*::test_point[[]{p}[]] {'SKIPPED' if p in kept else 'PASSED'}*" for p in POINTS),
            f"SKIPPED [[]{len(kept)}[]] *: {KEPT} {journal.name}",
        ]
    )
    final: dict[str, Any] = json.loads((sweep.path / "final.json").read_text())
    # Every point once, in matrix order, and the journal holds each once too.
    assert [p["id"] for p in final["points"]] == POINTS
    assert_each_point_once(whole_records(journal))
    return final


def test_killed_sweep_resumes_with_every_point_once(sweep: pytest.Pytester) -> None:
    journal = sweep.path / "killed.json.journal.jsonl"
    # 80 ms steps: ~1.6 s a point, so that the kill lands inside one, with points to run.
    env = {**os.environ, STEP_ENV: "0.08"}
    with (sweep.path / "child.log").open("w") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *KNOBS, "--greenllm-json=killed.json"],
            cwd=sweep.path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 120  # the child imports vLLM first: slow on a busy box
            while len(whole_records(journal)) < 2:
                assert child.poll() is None, (sweep.path / "child.log").read_text()
                assert time.monotonic() < deadline, "the child wrote no 2 points in time"
                time.sleep(0.02)
            # Into the third point's run: a point half measured must be measured again. Not
            # at its boundary either, where the fake driver writes its state file
            # (test_fake_driver_state_survives_a_kill_mid_write).
            time.sleep(0.5)
        finally:
            child.kill()  # SIGKILL, as a CI runner's timeout does: no clean-up of any kind runs
            child.wait()
    assert child.returncode == -signal.SIGKILL
    before = whole_records(journal)
    assert 2 <= len(before) < len(POINTS), "the kill must leave points to run"
    assert not (sweep.path / "killed.json").exists()  # the session never got to its end

    final = resume(sweep, journal, kept=[r["id"] for r in before])
    by_id = {p["id"]: p for p in final["points"]}
    for record in before:
        # Kept as measured by the killed run, not measured again.
        assert by_id[record["id"]]["repeats"] == record["repeats"]


@pytest.mark.parametrize("torn", ["mid-record", "before-newline"])
def test_a_torn_last_journal_line_is_tolerated(sweep: pytest.Pytester, torn: str) -> None:
    sweep.runpytest(*KNOBS, "--greenllm-json=r.json").assert_outcomes(passed=4)
    journal = sweep.path / "r.json.journal.jsonl"
    header, *records = journal.read_text().splitlines()
    assert len(records) == 4
    if torn == "mid-record":
        # The kill landed while the third point was being written: it is measured again.
        text, kept = "\n".join([header, *records[:2], records[2][: len(records[2]) // 2]]), 2
    else:
        # The third point was written whole, its newline not: it is kept.
        text, kept = "\n".join([header, *records[:3]]), 3
    journal.write_text(text)
    resume(sweep, journal, kept=[json.loads(r)["id"] for r in records[:kept]])
    for line in journal.read_text().splitlines():
        json.loads(line)  # the repair left no torn line for later records to follow


def test_journal_of_another_setup_is_refused(sweep: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GREENLLM_FAKE_GPUS", "4")
    sweep.runpytest(*KNOBS, "--greenllm-workloads=8:4", "--greenllm-json=four.json").assert_outcomes(passed=1)
    journal = sweep.path / "four.json.journal.jsonl"
    assert len(whole_records(journal)) == 1
    monkeypatch.delenv("GREENLLM_FAKE_GPUS")
    result = sweep.runpytest(*KNOBS, f"--greenllm-resume={journal.name}", "--greenllm-json=final.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.strip()]
    assert len(errors) == 1
    assert errors[0].startswith(f"ERROR: {journal.name}: written on another setup (gpu_count: 4 -> 8)")
    # Refused before anything ran: no points measured, nothing mixed into the journal.
    assert not (sweep.path / "final.json").exists()
    assert len(whole_records(journal)) == 1


class Killed(BaseException):
    """What a SIGKILL does to a write, as an exception a test can catch."""


class KilledMidWrite(PosixPath):
    """A path whose writes stop halfway through."""

    def write_text(
        self, data: str, encoding: str | None = None, errors: str | None = None, newline: str | None = None
    ) -> int:
        with open(self, "w", encoding=encoding, errors=errors, newline=newline) as handle:
            handle.write(data[: len(data) // 2])
        raise Killed


def test_fake_driver_state_survives_a_kill_mid_write(tmp_path: Path) -> None:
    state = tmp_path / "driver.json"
    fake = FakeNvml(gpus=1, state_path=state)
    fake.nvmlInit()
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    fake.nvmlDeviceSetGpuLockedClocks(handle, 1410, 1410)
    fake.state_path = KilledMidWrite(state)
    with pytest.raises(Killed):
        fake.nvmlDeviceResetGpuLockedClocks(handle)
    # Like a driver, the file holds the last whole state: the clocks are still locked.
    assert FakeNvml(gpus=1, state_path=state).locked_clocks(0) == (1410, 1410)
