"""Reports of real (fake-device) sweeps for the figure tests: the built-in sweep run in a
subprocess with the sleep driver, so that a 16-point sweep takes seconds and imports no
vLLM.

The 16-point sweep of issue 15's Done-when (2 clocks x 2 TP x 2 batches x 2 workloads) is
run once per test session, whichever module asks first (:func:`sixteen_point_report`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sleep_driver import BUILD_ENV, STEP_ENV, conftest_source

# An SLO between the TTFT of the b2 points (their 8 requests wait for 4 batches) and that
# of the b4 points (2 batches), so that the heatmaps have cells on both sides of the boundary.
SIXTEEN_POINT_KNOBS = (
    "--greenllm",
    "--greenllm-device=fake",
    "--greenllm-cooldown=0",
    "--greenllm-min-window=0.3",
    "--greenllm-tp=1,2",
    "--greenllm-batch=2,4",
    "--greenllm-workloads=8:4,16:4",
    "--greenllm-freqs=1410,1980",
    "--greenllm-slo=ttft_p99=100ms",
)
# What `greenllm report` draws of it: one RQ1, RQ2 and RQ3 figure per workload, the
# frontier and the prefill/decode split; one power limit, so no power-limit figure.
SIXTEEN_POINT_FIGURES = (
    "rq1-8x4",
    "rq1-16x4",
    "rq2-8x4",
    "rq2-16x4",
    "rq3-8x4",
    "rq3-16x4",
    "pareto",
    "phases",
)
_SWEEPS: dict[str, Path] = {}


def run_sweep(directory: Path, knobs: tuple[str, ...]) -> Path:
    """The built-in sweep of ``knobs`` on the fake device, in ``directory``; its report.
    Points that miss their SLOs fail their tests: the report is written all the same."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "conftest.py").write_text(conftest_source(), encoding="utf-8")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("GREENLLM_FAKE_", "PYTEST_")) and key != "CUDA_VISIBLE_DEVICES"
    }
    env.update(
        {
            # Machine-wide defaults otherwise: another run on the box must not see these.
            "GREENLLM_STATE_FILE": str(directory / "guard.json"),
            "GREENLLM_FAKE_STATE": str(directory / "driver.json"),
            "GREENLLM_LOCK_DIR": str(directory / "locks"),
            STEP_ENV: "0.01",
            BUILD_ENV: "0",
        }
    )
    report = directory / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *knobs, f"--greenllm-json={report}"],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if not report.exists():
        pytest.fail(
            f"the sweep wrote no report (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return report


def sixteen_point_report(factory: pytest.TempPathFactory) -> Path:
    """The report of the 16-point sweep, run on the first call of the session."""
    if "sixteen" not in _SWEEPS:
        _SWEEPS["sixteen"] = run_sweep(factory.mktemp("sixteen-point-sweep"), SIXTEEN_POINT_KNOBS)
    return _SWEEPS["sixteen"]
