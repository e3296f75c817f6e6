"""The GitHub energy-gate workflow's own command lines, run as a user's CI would run them: in
a folder that holds nothing of this repository, with the installed package and the real
vLLM CPU build, on the fake device (the one change: a small matrix where the workflow
reads GREENLLM_PYTEST_ARGS)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("vllm", reason="the e2e tests need vLLM (pip install -e '.[cpu]')")

WORKFLOW = Path(__file__).resolve().parents[1] / "ci" / "github" / "energy-gate.yml"
SMALL_MATRIX = (
    "--greenllm-device=fake --greenllm-tp=1 --greenllm-batch=2 --greenllm-workloads=8:4,16:4 "
    "--greenllm-freqs=1410 --greenllm-cooldown=0 --greenllm-min-window=0.1 "
    "--greenllm-slo=ttft_p99=none,tbt_p99=none -p no:cacheprovider"
)
# Steps that need GitHub itself (installing from PyPI, the gh CLI) or are actions, not runs.
NEEDS_GITHUB = ("pip install", "gh run")


def runnable_steps() -> list[tuple[str, str]]:
    """(name, shell text) of every `run:` step the test can run here, in workflow order."""
    job: dict[str, Any] = yaml.safe_load(WORKFLOW.read_text())["jobs"]["energy-gate"]
    steps = []
    for step in job["steps"]:
        script = step.get("run")
        if script is None or any(marker in script for marker in NEEDS_GITHUB):
            continue
        script = script.replace("${{ vars.GREENLLM_PYTEST_ARGS }}", SMALL_MATRIX)
        assert "${{" not in script, f"{step['name']}: an expression this test cannot fill in"
        steps.append((step["name"], script))
    return steps


def run_step(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-e", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


@pytest.mark.e2e
def test_the_github_workflow_commands_pass_in_a_users_empty_folder(tmp_path: Path) -> None:
    folder = tmp_path / "users-repo"
    folder.mkdir()
    job_env: dict[str, str] = yaml.safe_load(WORKFLOW.read_text())["jobs"]["energy-gate"]["env"]
    summary = tmp_path / "step-summary.md"
    env = {
        **os.environ,
        **job_env,
        # The workflow's PATH step puts the venv's bin first; this one is that venv.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "GITHUB_STEP_SUMMARY": str(summary),
        "GREENLLM_STATE_FILE": str(tmp_path / "clock-state.json"),
        "GREENLLM_FAKE_STATE": str(tmp_path / "fake-gpus.json"),
        "GREENLLM_FAKE_LOAD": "0.5",
    }
    ran = []
    sweep_out = ""
    for name, script in runnable_steps():
        result = run_step(script, folder, env)
        assert result.returncode == 0, f"{name}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        ran.append(script.split()[:2])
        if script.startswith("pytest"):
            sweep_out = result.stdout
    assert ran == [["greenllm", "reset-clocks"], ["pytest", "--greenllm"], ["greenllm", "compare"]]
    # The built-in sweep ran in a folder with no tests: two points, three repeats each.
    assert re.search(r"2 passed", sweep_out), sweep_out[-3000:]
    report = folder / job_env["GREENLLM_DIR"] / "report.json"
    assert report.exists() and (folder / job_env["GREENLLM_DIR"] / "junit.xml").exists()
    assert "no baseline" in summary.read_text()  # a first run: nothing to compare yet

    # The next pull request: the fetch step would have put the default branch's report here.
    shutil.copytree(report.parent, folder / "baseline")
    compare = next(script for name, script in runnable_steps() if name.startswith("Compare"))
    result = run_step(compare, folder, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 of 2 shared points regressed" in summary.read_text()
