"""The ``greenllm`` command: ``main(argv) -> int``, callable in-process by tests."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from tabulate import tabulate

from pytest_greenllm import __version__
from pytest_greenllm.config import Settings
from pytest_greenllm.ini_files import find_ini
from pytest_greenllm.knobs import Matrix
from pytest_greenllm.options import OPTIONS, add_knob_options
from pytest_greenllm.session import build_matrix

EXIT_OK = 0
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="greenllm", description="Energy sweeps of LLM inference: the pytest-greenllm tools."
    )
    parser.add_argument("--version", action="version", version=f"pytest-greenllm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    knobs = commands.add_parser(
        "knobs",
        help="print the knob matrix that `pytest --greenllm` would run",
        description="Print the knob matrix that `pytest --greenllm` would run here: the same "
        "options, read from the same ini file, checked against the same device.",
    )
    add_knob_options(knobs.add_argument, "--")
    return parser


def matrix_table(matrix: Matrix) -> str:
    """The points, grouped by engine build, as a table."""
    engines = {engine: index for index, engine in enumerate(matrix.engine_configs, start=1)}
    rows = [
        (
            point.id,
            engines[point.engine],
            point.workload.name,
            point.workload.input_tokens,
            point.workload.output_tokens,
            point.tp,
            point.batch,
            point.freq_label,
        )
        for point in matrix.points
    ]
    headers = ("point", "engine", "workload", "in tok", "out tok", "tp", "batch", "clock")
    return tabulate(rows, headers=headers)


def _knobs(args: argparse.Namespace) -> int:
    ini_path, ini = find_ini(Path.cwd())
    cli = {option.dest: getattr(args, option.dest) for option in OPTIONS}
    settings = Settings.from_sources(True, cli, ini, "--")
    matrix = build_matrix(settings, "--device")
    if ini_path is not None:
        print(f"ini file: {ini_path}")
    for line in matrix.header_lines():
        print(line)
    if matrix.points:
        print(matrix_table(matrix))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run a ``greenllm`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        return _knobs(args)
    except pytest.UsageError as e:
        print(f"greenllm: error: {e}", file=sys.stderr)
        return EXIT_USAGE
