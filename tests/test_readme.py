"""README.md matches the code: the options table, and the test command CI runs."""

from __future__ import annotations

import re
from pathlib import Path

from pytest_greenllm.options import OPTIONS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_options_table_matches_the_options() -> None:
    rows = re.findall(r"^\| `(--greenllm-[a-z-]+)=[^`]*` \| `([a-z_]+)` \| ([^|]+) \|", README, re.M)
    documented = {flag: (ini, default.strip().strip("`")) for flag, ini, default in rows}
    expected = {o.flag: (o.ini, o.default or "none") for o in OPTIONS}
    assert documented == expected


def test_ci_runs_the_readme_test_command() -> None:
    commands = re.findall(r"^python3 -m venv .*$", README, re.M)
    assert len(commands) == 2, "README opens with the main-job and the test command"
    assert commands[0].endswith("&& pytest --greenllm benchmarks")
    test_command = commands[1].rsplit("&& ", 1)[1]
    ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert test_command in ci_lines
