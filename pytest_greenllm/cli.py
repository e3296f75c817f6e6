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
from pytest_greenllm.devices.backend import fake_nvml_from_env
from pytest_greenllm.devices.errors import DeviceError
from pytest_greenllm.devices.guard import STATE_ENV, ClockGuard, default_state_path
from pytest_greenllm.devices.nvml import NvmlSession, load_pynvml
from pytest_greenllm.session import build_matrix, open_device

EXIT_OK = 0
EXIT_FAILED = 1
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
    reset = commands.add_parser(
        "reset-clocks",
        help="reset GPU clocks and power limits that a killed run left changed",
        description="Reset the GPUs recorded in the clock state file "
        f"({default_state_path()}, or ${STATE_ENV}) by a run that was killed before it "
        "could reset them itself.",
    )
    reset.add_argument(
        "--device", choices=("nvml", "fake"), default="nvml", help="Default: nvml."
    )
    reset.add_argument(
        "--all",
        action="store_true",
        help="also reset the locked clocks of every visible GPU, recorded or not",
    )
    reset.add_argument(
        "--force",
        action="store_true",
        help="reset even if the run that locked them still seems to be alive",
    )
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
    backend = open_device(settings, "--device")
    try:
        matrix = build_matrix(settings, backend.capabilities)
    finally:
        backend.close()
    if ini_path is not None:
        print(f"ini file: {ini_path}")
    for line in matrix.header_lines():
        print(line)
    for note in backend.notes:
        print(f"greenllm: {note}")
    if matrix.points:
        print(matrix_table(matrix))
    return EXIT_OK


def _reset_clocks(args: argparse.Namespace) -> int:
    try:
        nvml = fake_nvml_from_env() if args.device == "fake" else load_pynvml()
        session = NvmlSession(nvml)
    except DeviceError as e:
        print(f"greenllm: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    try:
        guard = ClockGuard(session, default_state_path())
        messages = guard.recover_stale(force=args.force)
        if args.all:
            for gpu in session.gpus:
                gpu.reset_clocks()
            messages.append(f"reset the clocks of {len(session.gpus)} visible GPU(s)")
    except DeviceError as e:
        print(f"greenllm: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        session.close()
    for message in messages or [f"nothing to reset: no state file at {guard.state_path}"]:
        print(f"greenllm: {message}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run a ``greenllm`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "reset-clocks":
            return _reset_clocks(args)
        return _knobs(args)
    except pytest.UsageError as e:
        print(f"greenllm: error: {e}", file=sys.stderr)
        return EXIT_USAGE
