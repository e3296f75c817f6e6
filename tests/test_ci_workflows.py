"""The energy-gate workflows and scripts in ci/: valid for their CI systems and schedulers,
and calling only `greenllm` commands and flags that exist."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pytest_greenllm.cli import build_parser
from pytest_greenllm.options import OPTIONS

ROOT = Path(__file__).resolve().parents[1]
GITHUB = ROOT / "ci" / "github" / "energy-gate.yml"
GITLAB = ROOT / "ci" / "gitlab" / "energy-gate.gitlab-ci.yml"
GITHUB_SHARDED = ROOT / "ci" / "github" / "energy-gate-sharded.yml"
GITHUB_DASHBOARD = ROOT / "ci" / "github" / "energy-dashboard.yml"
SLURM_SWEEP = ROOT / "ci" / "slurm" / "sweep-array.sbatch"
SLURM_MERGE = ROOT / "ci" / "slurm" / "merge.sbatch"
SLURM_SUBMIT = ROOT / "ci" / "slurm" / "submit.sh"
K8S_SWEEP = ROOT / "ci" / "kubernetes" / "sweep-indexed-job.yaml"
K8S_MERGE = ROOT / "ci" / "kubernetes" / "merge-job.yaml"
# The Kubernetes release the manifests are checked against: one kubernetes-validate bundles
# (offline); backoffLimitPerIndex is GA from 1.33.
KUBERNETES_VERSION = "1.33"
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; it comes with the dev extra (pip install -e '.[dev]')")
    return path


@pytest.mark.parametrize("path", [GITHUB, GITHUB_DASHBOARD], ids=["gate", "dashboard"])
def test_actionlint_passes_on_the_github_workflow(path: Path) -> None:
    result = subprocess.run(
        [tool("actionlint"), f"-shellcheck={tool('shellcheck')}", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def benchmark_action_steps(path: Path) -> list[dict[str, Any]]:
    workflow = yaml.safe_load(path.read_text())
    return [
        step["with"]
        for job in workflow["jobs"].values()
        for step in job["steps"]
        if str(step.get("uses", "")).startswith("benchmark-action/github-action-benchmark@")
    ]


@pytest.mark.parametrize("path", sorted((ROOT / "ci" / "github").glob("*.yml")), ids=lambda p: p.name)
def test_every_github_action_benchmark_step_has_a_name_of_its_own(path: Path) -> None:
    # The action keeps one history per name: two tools under one name compare each other's
    # entries, and a regression passes as "not found in previous benchmarks".
    steps = benchmark_action_steps(path)
    names = [step.get("name") for step in steps]
    assert all(names) and len(set(names)) == len(names), names


def test_the_dashboard_charts_both_exports_and_the_pytest_benchmark_file() -> None:
    steps = {step["tool"]: step for step in benchmark_action_steps(GITHUB_DASHBOARD)}
    assert set(steps) == {"customSmallerIsBetter", "customBiggerIsBetter", "pytest"}
    assert steps["customSmallerIsBetter"]["output-file-path"].endswith("/smaller-is-better.json")
    assert steps["customBiggerIsBetter"]["output-file-path"].endswith("/bigger-is-better.json")
    assert steps["pytest"]["output-file-path"].endswith("/bench.json")


def test_gitlab_ci_schema_passes_on_the_gitlab_file() -> None:
    result = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.gitlab-ci", str(GITLAB)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def commands(path: Path, program: str) -> list[list[str]]:
    """Every `program ...` invocation in a workflow or script, folded YAML lines and
    backslash-continued shell lines joined."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    text = re.sub(r"\n\s+(?=--|\$|\")", " ", text)
    found = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        # The program starts the command: the line, a list item or a `run:` value.
        match = re.match(rf"\s*(?:-\s+)?(?:run:\s*)?{program} (.*)$", line)
        if match:
            found.append(shlex.split(match.group(1).split(" || ")[0], comments=True))
    return found


def flags_of(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings}


GATE = {"reset-clocks", "compare"}
MERGE = {"merge", "compare"}


@pytest.mark.parametrize(
    "path, subcommands",
    [
        (GITHUB, GATE),
        (GITLAB, GATE),
        (GITHUB_SHARDED, GATE | MERGE),
        (GITHUB_DASHBOARD, {"reset-clocks", "export"}),
        (SLURM_SWEEP, {"reset-clocks"}),
        (SLURM_MERGE, MERGE),
        (K8S_SWEEP, {"reset-clocks"}),
        (K8S_MERGE, MERGE),
    ],
    ids=[
        "github",
        "gitlab",
        "github-sharded",
        "github-dashboard",
        "slurm-sweep",
        "slurm-merge",
        "k8s-sweep",
        "k8s-merge",
    ],
)
def test_every_greenllm_command_exists_with_its_flags(path: Path, subcommands: set[str]) -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    calls = commands(path, "greenllm")
    assert {c[0] for c in calls} == subcommands
    for call in calls:
        assert call[0] in subparsers.choices, f"{path.name}: greenllm has no command {call[0]}"
        sub = subparsers.choices[call[0]]
        used = {arg.split("=")[0] for arg in call[1:] if arg.startswith("--")}
        assert used <= flags_of(sub), f"{path.name}: greenllm {call[0]} has no {used - flags_of(sub)}"


@pytest.mark.parametrize(
    "path",
    [GITHUB, GITLAB, GITHUB_SHARDED, GITHUB_DASHBOARD, SLURM_SWEEP, K8S_SWEEP],
    ids=["github", "gitlab", "github-sharded", "github-dashboard", "slurm-sweep", "k8s-sweep"],
)
def test_every_pytest_flag_exists(path: Path) -> None:
    known = {o.flag for o in OPTIONS} | {"--greenllm", "--junitxml", "--benchmark-json"}
    calls = commands(path, "pytest")
    assert calls
    for call in calls:
        used = {arg.split("=")[0] for arg in call if arg.startswith("--")}
        assert used <= known, f"{path.name}: pytest has no {used - known}"


# Sharded sweeps (issue 14): the GitHub matrix, the Slurm array, the Kubernetes Indexed Job.


def test_actionlint_passes_on_the_sharded_github_workflow() -> None:
    # shellcheck named, so that the run: scripts are checked whatever is on PATH.
    result = subprocess.run(
        [tool("actionlint"), f"-shellcheck={tool('shellcheck')}", str(GITHUB_SHARDED)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_sharded_github_workflow_sweeps_every_shard_once_then_merges() -> None:
    text = GITHUB_SHARDED.read_text()
    jobs = yaml.safe_load(text)["jobs"]
    sweep, merge = jobs["sweep"], jobs["merge"]
    totals = re.findall(r"--greenllm-shard=\$\{\{ matrix\.shard \}\}/(\d+)", text)
    assert len(totals) == 1, "one sweep, given its shard from the matrix"
    total = int(totals[0])
    assert sweep["strategy"]["matrix"]["shard"] == list(range(1, total + 1))
    assert sweep["strategy"]["fail-fast"] is False
    assert f"of {total}" in sweep["name"]
    upload = next(s for s in sweep["steps"] if s.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["if"] == "always()"
    name = upload["with"]["name"]
    assert "${{ matrix.shard }}" in name
    assert merge["needs"] == "sweep"
    assert "!cancelled()" in merge["if"]
    download = next(s for s in merge["steps"] if s.get("uses", "").startswith("actions/download-artifact"))
    shard_2 = name.replace("${{ matrix.shard }}", "2")
    assert re.fullmatch(download["with"]["pattern"].replace("*", ".*"), shard_2)


@pytest.mark.parametrize("path", [SLURM_SWEEP, SLURM_MERGE, SLURM_SUBMIT], ids=lambda p: p.name)
def test_shellcheck_passes_on_the_slurm_scripts(path: Path) -> None:
    result = subprocess.run([tool("shellcheck"), str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def jobs_of(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc["kind"] == "Job"]


def container(job: Any) -> Any:
    (only,) = job["spec"]["template"]["spec"]["containers"]
    return only


@pytest.mark.parametrize("path", [K8S_SWEEP, K8S_MERGE], ids=lambda p: p.name)
def test_kubernetes_validate_passes_on_the_manifests(path: Path) -> None:
    result = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, str(path)],
        capture_output=True,
        text=True,
    )
    lines = result.stdout.splitlines()
    # An unknown kind or apiVersion is only a WARN (exit 0): every resource must pass.
    assert result.returncode == 0 and lines, result.stdout + result.stderr
    assert len(lines) == len(list(yaml.safe_load_all(path.read_text())))
    assert all(line.startswith("INFO") and " passed " in line for line in lines), result.stdout


@pytest.mark.parametrize("path", [K8S_SWEEP, K8S_MERGE], ids=lambda p: p.name)
def test_shellcheck_passes_on_the_kubernetes_jobs_scripts(path: Path) -> None:
    for job in jobs_of(path):
        (script,) = container(job)["args"]
        assert container(job)["command"] == ["bash", "-c"]
        # Kubernetes expands $(NAME) in args itself: the scripts keep to $NAME.
        assert "$(" not in script
        result = subprocess.run(
            [tool("shellcheck"), "--shell=bash", "-"], input=script, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_indexed_job_runs_one_shard_per_index_onto_the_claim() -> None:
    (job,) = jobs_of(K8S_SWEEP)
    spec, sweep = job["spec"], container(job)
    env = {e["name"]: e.get("value") for e in sweep["env"]}
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == int(env["GREENLLM_SHARD_TOTAL"])
    assert "nvidia.com/gpu" in sweep["resources"]["limits"]
    (call,) = commands(K8S_SWEEP, "pytest")
    assert "--greenllm-shard=auto" in call
    # The reports go to a claim of the manifest, where the merge Job reads them.
    claims = {}
    for each in jobs_of(K8S_SWEEP) + jobs_of(K8S_MERGE):
        volumes = {v["name"]: v for v in each["spec"]["template"]["spec"]["volumes"]}
        (mount,) = [
            m for m in container(each)["volumeMounts"] if "persistentVolumeClaim" in volumes[m["name"]]
        ]
        claims[mount["mountPath"]] = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
    ((reports, claim),) = claims.items()
    assert claim in {d["metadata"]["name"] for d in yaml.safe_load_all(K8S_SWEEP.read_text())}
    assert f'out="{reports}/' in sweep["args"][0]


# The Slurm scripts run here with sbatch, pytest and greenllm stood in by scripts that log
# their arguments, one <argument> each.

STUB = """#!/bin/bash
printf '%s' "$(basename "$0")" >> "$STUB_LOG"; printf ' <%s>' "$@" >> "$STUB_LOG"; echo >> "$STUB_LOG"
"""
STUBS = {
    # The first job id with a cluster name, as --parsable prints it on a multi-cluster setup.
    "sbatch": STUB + 'if [ "$(wc -l < "$STUB_LOG")" -eq 1 ]; then echo "4242;gpu"; else echo 4243; fi\n',
    "pytest": STUB + 'exit "${STUB_PYTEST_EXIT:-0}"\n',
    "greenllm": STUB
    + """if [ "$1" = merge ]; then
  while [ $# -gt 0 ]; do if [ "$1" = --output ]; then echo '{}' > "$2"; fi; shift; done
  exit "${STUB_MERGE_EXIT:-0}"
fi
""",
}


def run_slurm(script: Path, tmp_path: Path, *args: str, **env: str) -> tuple[int, list[str], str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in STUBS.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "log"
    log.write_text("")
    base = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path), "STUB_LOG": str(log)}
    result = subprocess.run(
        [tool("bash"), str(script), *args],
        cwd=tmp_path,
        env=base | env,
        capture_output=True,
        text=True,
    )
    return result.returncode, log.read_text().splitlines(), result.stdout + result.stderr


def test_submit_sh_makes_the_merge_wait_for_the_whole_array(tmp_path: Path) -> None:
    rc, log, output = run_slurm(SLURM_SUBMIT, tmp_path, "3")
    assert rc == 0, output
    assert log == [
        f"sbatch <--parsable> <--array=1-3> <{SLURM_SWEEP}>",
        "sbatch <--parsable> <--dependency=afterany:4242> <--export=ALL,GREENLLM_SWEEP_JOB=4242>"
        f" <{SLURM_MERGE}>",
    ]
    assert "array job 4242 (3 shards)" in output and "job 4243" in output


def test_an_array_task_sweeps_its_shard_into_the_runs_folder(tmp_path: Path) -> None:
    rc, log, output = run_slurm(
        SLURM_SWEEP,
        tmp_path,
        SLURM_ARRAY_JOB_ID="4242",
        SLURM_ARRAY_TASK_ID="2",
        USER="someone",
        GREENLLM_PYTEST_ARGS="--greenllm-model=/models/m --greenllm-freqs=default",
        STUB_PYTEST_EXIT="1",
    )
    # pytest's status is the task's, and the clocks are reset before and after it.
    assert rc == 1, output
    assert log == [
        "greenllm <reset-clocks>",
        "pytest <--greenllm> <-m> <greenllm> <--greenllm-shard=auto> <--greenllm-repeats=3>"
        " <--greenllm-json=greenllm-out/4242/shard-2.json> <--junitxml=greenllm-out/4242/junit-2.xml>"
        " <--greenllm-model=/models/m> <--greenllm-freqs=default>",
        "greenllm <reset-clocks>",
    ]
    assert (tmp_path / "greenllm-out" / "4242").is_dir()


@pytest.mark.parametrize(
    "merge_exit, keep, rc", [("0", "1", 0), ("1", "1", 1), ("0", "0", 0)], ids=["kept", "missing", "passed"]
)
def test_the_merge_job_gates_even_when_shards_are_missing(
    tmp_path: Path, merge_exit: str, keep: str, rc: int
) -> None:
    (tmp_path / "greenllm-out" / "4242").mkdir(parents=True)
    for task in (1, 2):
        (tmp_path / "greenllm-out" / "4242" / f"shard-{task}.json").write_text("{}")
    status, log, output = run_slurm(
        SLURM_MERGE,
        tmp_path,
        GREENLLM_SWEEP_JOB="4242",
        GREENLLM_KEEP_BASELINE=keep,
        STUB_MERGE_EXIT=merge_exit,
    )
    assert status == rc, output
    out = "greenllm-out/4242"
    assert log == [
        f"greenllm <merge> <{out}/shard-1.json> <{out}/shard-2.json> <--output> <{out}/report.json>",
        f"greenllm <compare> <greenllm-baseline> <{out}/report.json> <--format> <markdown>"
        f" <--tolerance> <5%> <--missing-baseline> <pass> <--output> <{out}/energy-comparison.md>",
    ]
    # Only a complete, passing report becomes a baseline, and only when asked.
    kept = tmp_path / "greenllm-baseline" / "report-4242.json"
    assert kept.exists() == (merge_exit == "0" and keep == "1")


def test_the_merge_job_needs_the_sweeps_job_id(tmp_path: Path) -> None:
    status, log, output = run_slurm(SLURM_MERGE, tmp_path)
    assert status != 0 and not log
    assert "GREENLLM_SWEEP_JOB" in output
