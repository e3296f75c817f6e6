"""The energy-gate workflows in ci/: valid for their CI systems, and calling only
`greenllm` commands and flags that exist."""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_greenllm.cli import build_parser
from pytest_greenllm.options import OPTIONS

ROOT = Path(__file__).resolve().parents[1]
GITHUB = ROOT / "ci" / "github" / "energy-gate.yml"
GITLAB = ROOT / "ci" / "gitlab" / "energy-gate.gitlab-ci.yml"
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; it comes with the dev extra (pip install -e '.[dev]')")
    return path


def test_actionlint_passes_on_the_github_workflow() -> None:
    result = subprocess.run([tool("actionlint"), str(GITHUB)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_gitlab_ci_schema_passes_on_the_gitlab_file() -> None:
    result = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.gitlab-ci", str(GITLAB)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def commands(path: Path, program: str) -> list[list[str]]:
    """Every `program ...` invocation in a workflow, folded YAML lines joined."""
    text = re.sub(r"\n\s+(?=--|\$|\")", " ", path.read_text())
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


@pytest.mark.parametrize("path", [GITHUB, GITLAB], ids=["github", "gitlab"])
def test_every_greenllm_command_exists_with_its_flags(path: Path) -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    calls = commands(path, "greenllm")
    assert {c[0] for c in calls} == {"reset-clocks", "compare"}
    for call in calls:
        sub = subparsers.choices[call[0]]
        used = {arg.split("=")[0] for arg in call[1:] if arg.startswith("--")}
        assert used <= flags_of(sub), f"{path.name}: greenllm {call[0]} has no {used - flags_of(sub)}"


@pytest.mark.parametrize("path", [GITHUB, GITLAB], ids=["github", "gitlab"])
def test_every_pytest_flag_exists(path: Path) -> None:
    known = {o.flag for o in OPTIONS} | {"--greenllm", "--junitxml"}
    calls = commands(path, "pytest")
    assert calls
    for call in calls:
        used = {arg.split("=")[0] for arg in call if arg.startswith("--")}
        assert used <= known, f"{path.name}: pytest has no {used - known}"
