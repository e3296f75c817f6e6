"""The energy gate's command sequence, as ci/ runs it, on this CPU machine with the fake
device: a baseline sweep, a sweep with 10% more power injected, an unchanged sweep, and a
baseline folder of earlier reports with one from another setup among them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_greenllm.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fake_engine

# A constant simulated load and engine steps long enough that each window covers many of
# the fake counter's 100 ms updates: the injected 10% must stand out of the noise.
KNOBS = (
    *fake_engine.OWN_TESTS,
    "--greenllm-device=fake",
    "--greenllm-tp=1",
    "--greenllm-batch=2",
    "--greenllm-workloads=8:16,16:16",
    "--greenllm-freqs=1410",
    "--greenllm-requests=4",
    "--greenllm-repeats=3",
    "--greenllm-cooldown=0",
    "--greenllm-min-window=0.5",
    "-p",
    "no:cacheprovider",
)
POINTS = ("8x16-tp1-b2-1410MHz", "16x16-tp1-b2-1410MHz")


@pytest.fixture
def ci_dir(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    pytester.makeconftest(fake_engine.conftest_source())
    pytester.makepyfile(test_sweep="def test_point(greenllm_result):\n    pass\n")
    monkeypatch.setenv("GREENLLM_STATE_FILE", str(pytester.path / "state.json"))
    monkeypatch.setenv("GREENLLM_FAKE_STATE", str(pytester.path / "fake-gpus.json"))
    monkeypatch.setenv("GREENLLM_FAKE_LOAD", "0.5")
    monkeypatch.setenv(fake_engine.STEP_ENV, "0.05")
    return pytester.path


def sweep(directory: Path, out: str, power_scale: str = "1") -> Path:
    """The workflow's sweep step, in a child process as CI would run it."""
    env = {**os.environ, "GREENLLM_FAKE_POWER_SCALE": power_scale}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            *KNOBS,
            f"--greenllm-json={out}/report.json",
            f"--junitxml={out}/junit.xml",
        ],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    return directory / out / "report.json"


def gate(base: Path, head: Path, summary: Path) -> int:
    """The workflow's compare step."""
    return main(
        [
            "compare",
            str(base),
            str(head),
            "--format",
            "markdown",
            "--tolerance",
            "5%",
            "--missing-baseline",
            "pass",
            "--output",
            str(summary),
        ]
    )


@pytest.mark.e2e
def test_the_gate_catches_injected_power_and_passes_an_unchanged_sweep(
    ci_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["reset-clocks", "--device", "fake"]) == 0
    summary = ci_dir / "step-summary.md"
    # The first run on a repository has no baseline yet: the gate passes and says so.
    first = sweep(ci_dir, "base")
    assert gate(ci_dir / "no-baseline-yet", first, summary) == 0
    assert "no baseline" in summary.read_text()

    # 30% more power: with 3 repeats a side the gate settles +10% in most points, not all
    # (docs/gate.md); this test is about the workflow's steps, not the gate's power.
    regressed = sweep(ci_dir, "regressed", power_scale="1.3")
    summary.unlink()
    assert gate(first, regressed, summary) == 1
    text = summary.read_text()
    for point in POINTS:
        assert f"| {point} " in text and "**REGRESSED**" in text
    assert f"2 of 2 shared points regressed: {POINTS[0]}, {POINTS[1]}" in text or (
        f"2 of 2 shared points regressed: {POINTS[1]}, {POINTS[0]}" in text
    )

    unchanged = sweep(ci_dir, "unchanged")
    summary.unlink()
    assert gate(first, unchanged, summary) == 0, summary.read_text()
    assert "0 of 2 shared points regressed" in summary.read_text()

    # History: three earlier reports of the same setup, one of another GPU.
    history = ci_dir / "history"
    for index, report in enumerate((first, unchanged, sweep(ci_dir, "third"))):
        target = history / f"run-{index}" / "report.json"
        target.parent.mkdir(parents=True)
        shutil.copy(report, target)
    other = json.loads(first.read_text())
    other["fingerprint"]["gpu_model"] = "NVIDIA A100-SXM4-80GB"
    (history / "other-gpu").mkdir()
    (history / "other-gpu" / "report.json").write_text(json.dumps(other))
    capsys.readouterr()
    summary.unlink()
    assert gate(history, regressed, summary) == 1
    text = summary.read_text()
    used_line = next(line for line in text.splitlines() if line.startswith("- baseline: "))
    assert used_line.count("report.json") == 3 and "other-gpu" not in used_line
    # Three runs: each its own offset, judged as random effects (docs/gate.md).
    assert "noise from: t (history, random effects)" in text
    assert (
        f"- refused {history / 'other-gpu' / 'report.json'}: another setup "
        "(gpu_model: 'NVIDIA A100-SXM4-80GB' -> 'NVIDIA H100 80GB HBM3')"
    ) in text
    summary.unlink()
    assert gate(history, unchanged, summary) == 0, summary.read_text()
