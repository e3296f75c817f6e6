"""The ``greenllm`` command: ``main(argv) -> int``, callable in-process by tests."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from pytest_greenllm import __version__
from pytest_greenllm.calibrate import profile_of, run_aa
from pytest_greenllm.calibrate import render as render_calibration
from pytest_greenllm.compare import compare_reports
from pytest_greenllm.compare import render as render_comparison
from pytest_greenllm.config import Raw, Settings, parse_tolerance
from pytest_greenllm.devices.backend import fake_nvml_from_env, open_backend
from pytest_greenllm.devices.errors import DeviceError
from pytest_greenllm.devices.guard import STATE_ENV, ClockGuard, default_state_path, state_files
from pytest_greenllm.devices.nvml import NvmlSession, load_pynvml
from pytest_greenllm.doctor import diagnose
from pytest_greenllm.export import bencher, csv_text, github_action_benchmark
from pytest_greenllm.gate import INCONCLUSIVE_POLICIES
from pytest_greenllm.hints import CLI_PREFIX, HintedError
from pytest_greenllm.history import DEFAULT_HISTORY, load_history
from pytest_greenllm.html_report import OutputError, draw_report
from pytest_greenllm.ini_files import find_ini
from pytest_greenllm.loads import CpuSpinLoad, Load, gpu_load
from pytest_greenllm.merge import merge_files
from pytest_greenllm.noise import read_profile, write_profile
from pytest_greenllm.options import OPTIONS, OPTIONS_BY_NAME, add_knob_options
from pytest_greenllm.recommend import PlotUnavailable, plot, recommend
from pytest_greenllm.recommend import render as render_recommendation
from pytest_greenllm.report import ReportError, load_report
from pytest_greenllm.sweep import build_matrix, open_setup
from pytest_greenllm.tables import matrix_table
from pytest_greenllm.verdicts import SloError, parse_slo

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The ``greenllm`` argument parser, with every subcommand."""
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
    reset.add_argument("--device", choices=("nvml", "fake"), default="nvml", help="Default: nvml.")
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
    compare = commands.add_parser(
        "compare",
        help="compare two JSON reports point by point",
        description="Every knob point both reports hold, with deltas and the energy verdict "
        "(J/output-token and average power over repeats, judged by the gate of docs/gate.md: "
        "regressed, ok, or inconclusive where the repeats are too few for their noise). "
        "Exit 0: nothing regressed; 1: something did (or was inconclusive, with "
        "--inconclusive=fail); 2: bad input.",
    )
    compare.add_argument(
        "base",
        type=Path,
        help="the baseline: a report, or a folder of earlier reports (the autosave folder, "
        "downloaded artifacts) whose most recent matching ones are pooled",
    )
    compare.add_argument("head", type=Path, help="the report to judge")
    compare.add_argument(
        "--format",
        choices=("table", "markdown"),
        default="table",
        help="markdown for a PR comment or $GITHUB_STEP_SUMMARY. Default: table.",
    )
    compare.add_argument(
        "--tolerance", default="5%", help="largest increase that passes, e.g. 5%% or 0.05. Default: 5%%."
    )
    compare.add_argument(
        "--allow-mismatch", action="store_true", help="compare reports from setups whose energy differs"
    )
    compare.add_argument(
        "--history",
        type=int,
        default=DEFAULT_HISTORY,
        metavar="N",
        help=f"with a folder as base: pool the N most recent matching reports. Default: {DEFAULT_HISTORY}.",
    )
    compare.add_argument(
        "--output",
        type=Path,
        default=None,
        metavar="FILE",
        help="also append the output to FILE (e.g. $GITHUB_STEP_SUMMARY)",
    )
    compare.add_argument(
        "--inconclusive",
        choices=INCONCLUSIVE_POLICIES,
        default="warn",
        help="what a point whose repeats cannot settle the verdict does: fail exits 1; warn "
        "and pass exit 0 (both list it). Default: warn.",
    )
    compare.add_argument(
        "--noise",
        type=Path,
        default=None,
        metavar="PROFILE",
        help="a noise profile from greenllm calibrate: the run-to-run spread the gate adds",
    )
    compare.add_argument(
        "--missing-baseline",
        choices=("fail", "pass"),
        default="fail",
        help="when the base does not exist yet (a first run): 'fail' (exit 2) "
        "or 'pass' (exit 0, saying so). Default: fail.",
    )
    calibrate = commands.add_parser(
        "calibrate",
        help="measure this box's run-to-run noise (A/A runs) and write a noise profile",
        description="Run the same sweep K times (--runs K, each a fresh pytest process; "
        "pytest's arguments follow --) or read K >= 2 reports of such runs, estimate the "
        "within-run and between-run noise of J/output-token and average power, write the "
        "profile that --greenllm-noise and `greenllm compare --noise` read, and print the "
        "smallest change each repeat count can detect (docs/gate.md).",
    )
    calibrate.add_argument("reports", type=Path, nargs="*", help="reports of A/A runs (without --runs)")
    calibrate.add_argument("--runs", type=int, default=None, metavar="K", help="run the sweep K >= 2 times")
    calibrate.add_argument(
        "--output",
        type=Path,
        default=Path("greenllm-noise.json"),
        metavar="PROFILE",
        help="where the profile goes; the runs' reports go beside it. Default: greenllm-noise.json.",
    )
    calibrate.add_argument(
        "--tolerance", default="5%", help="the tolerance to size repeats for. Default: 5%%."
    )
    merge = commands.add_parser(
        "merge",
        help="merge the reports of a sharded sweep into one report",
        description="One report of the reports of a sweep split into shards "
        "(--greenllm-shard=K/N): every report must match the first's setup, no point may be in "
        "two reports, and the shards must be of one split. Says which shards and planned points "
        "are missing; the merged report is written even then. Exit 0: complete; 1: something is "
        "missing; 2: bad input.",
    )
    merge.add_argument("reports", type=Path, nargs="+", metavar="REPORT", help="the shards' reports")
    merge.add_argument(
        "--output",
        type=Path,
        required=True,
        metavar="FILE",
        help="write the merged report here (its folder must exist)",
    )
    merge.add_argument(
        "--allow-mismatch", action="store_true", help="merge reports from setups whose energy differs"
    )
    rec = commands.add_parser(
        "recommend",
        help="the best configuration per objective, and the Pareto frontier",
        description="Among points that meet the SLOs: the least energy per output token, the "
        "least average power, the most throughput; and the Pareto frontier of J/output-token "
        "against p99 TBT.",
    )
    rec.add_argument("report", type=Path)
    rec.add_argument(
        "--slo",
        default=None,
        help="judge against these SLOs instead of the report's verdicts, e.g. ttft_p99=2s,tbt_p99=200ms",
    )
    rec.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="PNG",
        help="also draw J/output-token against p99 TBT (needs matplotlib)",
    )
    doctor = commands.add_parser(
        "doctor",
        help="say whether this box can run an honest energy sweep",
        description="Check NVML, the driver, vLLM and RAPL, and for each visible GPU: "
        "persistence mode, permission to lock clocks and set power limits (tried, then "
        "restored), the energy counter and its update period, instantaneous power, the "
        "supported clocks, a clock lock held under a built-in load, a power limit set and read "
        "back, the counter against integrated power, idle power and temperature. Exit 0: ready; "
        "1: something is missing (each line says what to do); 2: bad input.",
    )
    doctor.add_argument("--device", choices=("nvml", "fake"), default="nvml", help="Default: nvml.")
    doctor.add_argument(
        "--read-only",
        action="store_true",
        help="change no setting (for shared GPUs): report permissions as NVML states them",
    )
    doctor.add_argument("--json", action="store_true", help="print the findings as JSON")
    doctor.add_argument(
        "--window",
        default="3",
        metavar="SECONDS",
        help="how long each GPU is measured under load. Default: 3.",
    )
    export = commands.add_parser(
        "export",
        help="write a report in a continuous-benchmarking tool's format",
        description="github-action-benchmark (customSmallerIsBetter and customBiggerIsBetter "
        "files, in --output-dir), bencher (Bencher Metric Format JSON) or csv.",
    )
    export.add_argument("report", type=Path)
    export.add_argument("--format", required=True, choices=("github-action-benchmark", "bencher", "csv"))
    export.add_argument(
        "--output",
        type=Path,
        default=None,
        metavar="FILE",
        help="bencher or csv: write here instead of standard output",
    )
    export.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="github-action-benchmark: write smaller-is-better.json and "
        "bigger-is-better.json here. Default: the current directory.",
    )
    figures = commands.add_parser(
        "report",
        help="draw the paper's figures of a report into one self-contained HTML page",
        description='The figures of "Towards Greener LLMs" for the axes the sweep has: metrics '
        "against the GPU clock (RQ1) and TP (RQ2), a batch x clock energy heatmap with the SLO "
        "boundary (RQ3), the best configuration per objective against the maximum-clock default "
        "(RQ4), the Pareto frontier, the prefill/decode split, the power-limit axis and the "
        "setup. One HTML file with inline SVG and nothing fetched. Needs matplotlib. Exit 0: "
        "written; 2: bad input.",
    )
    figures.add_argument("report", type=Path, help="a JSON report (--greenllm-json)")
    figures.add_argument(
        "--html", type=Path, required=True, metavar="FILE", help="write the page here (its folder must exist)"
    )
    figures.add_argument(
        "--png", type=Path, default=None, metavar="DIR", help="also write one PNG per figure into DIR"
    )
    return parser


def _knobs(args: argparse.Namespace) -> int:
    ini_path, ini = find_ini(Path.cwd())
    cli = {option.dest: getattr(args, option.dest) for option in OPTIONS}
    settings = Settings.from_sources(True, cli, ini, "--")
    settings, backend, notes = open_setup(settings, lambda s: open_backend(s.device), CLI_PREFIX)
    try:
        matrix = build_matrix(settings, backend.capabilities)
    finally:
        backend.close()
    if ini_path is not None:
        print(f"ini file: {ini_path}")
    for line in matrix.header_lines():
        print(line)
    for note in [*backend.notes, *notes]:
        print(f"greenllm: {note}")
    if matrix.points:
        print(matrix_table(matrix))
    return EXIT_OK


def _reset_clocks(args: argparse.Namespace) -> int:
    state_path = default_state_path()
    if not args.all and not state_files(state_path):
        # Nothing recorded: a CI step that runs this on every job must not need NVML then.
        print(f"greenllm: nothing to reset: no state file at {state_path}")
        return EXIT_OK
    try:
        nvml = fake_nvml_from_env() if args.device == "fake" else load_pynvml()
        session = NvmlSession(nvml)
    except DeviceError as e:
        print(f"greenllm: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    try:
        guard = ClockGuard(session, state_path)
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


def _emit(text: str, output: Path | None) -> None:
    print(text)
    if output is not None:
        with output.open("a", encoding="utf-8") as handle:
            handle.write(text + "\n")


def _compare(args: argparse.Namespace) -> int:
    tolerance = parse_tolerance(
        Raw(OPTIONS_BY_NAME["energy-tolerance"], args.tolerance, f"--tolerance={args.tolerance}")
    )
    if args.history < 1:
        raise pytest.UsageError(f"--history={args.history}: pool at least 1 report")
    if args.missing_baseline == "pass" and not args.base.exists():
        _emit(f"greenllm: no baseline at {args.base} yet: nothing to compare (passing)", args.output)
        return EXIT_OK
    try:
        head = load_report(args.head)
        history = load_history(args.base, head.fingerprint, args.allow_mismatch, args.history)
        noise = (
            None if args.noise is None else read_profile(args.noise, head.fingerprint, args.allow_mismatch)
        )
        comparison = compare_reports(history.report, head, tolerance, args.allow_mismatch, noise)
    except ReportError as e:
        print(f"greenllm: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    markdown = args.format == "markdown"
    comparison.notes[:0] = history.lines()
    _emit(render_comparison(comparison, markdown=markdown), args.output)
    unsettled = comparison.inconclusive and args.inconclusive == "fail"
    return EXIT_FAILED if comparison.regressed or unsettled else EXIT_OK


def _calibrate(args: argparse.Namespace) -> int:
    tolerance = parse_tolerance(
        Raw(OPTIONS_BY_NAME["energy-tolerance"], args.tolerance, f"--tolerance={args.tolerance}")
    )
    pytest_args = list(args.pytest_args)
    if args.runs is not None:
        if args.runs < 2:
            raise pytest.UsageError(f"--runs={args.runs}: between-run noise needs at least 2 runs")
        if args.reports:
            raise pytest.UsageError("give --runs K or reports of earlier runs, not both")
        folder = args.output.with_name(args.output.stem + "-runs")
        paths = run_aa(args.runs, folder, pytest_args, print)
    else:
        if pytest_args:
            raise pytest.UsageError("pytest arguments after -- apply to --runs K only")
        paths = list(args.reports)
    try:
        profile = profile_of(paths)
        write_profile(args.output, profile)
    except OSError as e:
        print(f"greenllm: error: cannot write {args.output} ({e.strerror or e})", file=sys.stderr)
        return EXIT_USAGE
    print(render_calibration(profile, tolerance))
    print(f"greenllm: noise profile written: {args.output}")
    return EXIT_OK


def _merge(args: argparse.Namespace) -> int:
    try:
        merged = merge_files(args.reports, args.output, args.allow_mismatch)
    except ReportError as e:
        print(f"greenllm: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    for note in merged.notes:
        print(f"greenllm: {note}")
    points = len(merged.report.points)
    print(f"greenllm: merged {len(args.reports)} report(s), {points} point(s): {args.output}")
    return EXIT_OK if merged.complete else EXIT_FAILED


def _recommend(args: argparse.Namespace) -> int:
    try:
        report = load_report(args.report)
        slo = None if args.slo is None else parse_slo(args.slo)
    except (ReportError, SloError) as e:
        print(f"greenllm: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    recommendation = recommend(report, slo)
    if report.device == "fake":
        print("device: FAKE — every energy figure below is simulated, not measured")
    print(render_recommendation(recommendation))
    if args.plot is not None:
        try:
            plot(recommendation, report, args.plot)
        except PlotUnavailable as e:
            print(f"greenllm: error: {e}", file=sys.stderr)
            return EXIT_USAGE
        print(f"plot written: {args.plot}")
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    try:
        report = load_report(args.report)
    except ReportError as e:
        print(f"greenllm: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.format == "github-action-benchmark":
        directory = args.output_dir or Path.cwd()
        directory.mkdir(parents=True, exist_ok=True)
        lists = github_action_benchmark(report)
        for tool, name in (
            ("customSmallerIsBetter", "smaller-is-better.json"),
            ("customBiggerIsBetter", "bigger-is-better.json"),
        ):
            path = directory / name
            path.write_text(json.dumps(lists[tool], indent=1) + "\n", encoding="utf-8")
            print(f"{tool}: {path} ({len(lists[tool])} entries)")
        return EXIT_OK
    text = csv_text(report) if args.format == "csv" else json.dumps(bencher(report), indent=1) + "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
        print(f"{args.format}: {args.output}")
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    try:
        report = load_report(args.report)
        draw_report(report, args.report, args.html, args.png)
    except (ReportError, OutputError, PlotUnavailable) as e:
        print(f"greenllm: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _doctor(args: argparse.Namespace) -> int:
    try:
        window = float(args.window)
    except ValueError:
        window = math.nan
    if not 0 < window < math.inf:
        raise pytest.UsageError(f"--window={args.window}: give the seconds to measure each GPU, > 0")

    def open_session() -> NvmlSession:
        return NvmlSession(fake_nvml_from_env() if args.device == "fake" else load_pynvml())

    def make_load(gpus: int) -> tuple[Load | None, str]:
        return (CpuSpinLoad(), "") if args.device == "fake" else gpu_load(gpus)

    diagnosis = diagnose(
        open_session,
        device=args.device,
        read_only=args.read_only,
        window_s=window,
        make_load=make_load,
        state_path=default_state_path(),
    )
    print(json.dumps(diagnosis.to_json(), indent=1) if args.json else diagnosis.render())
    return EXIT_OK if diagnosis.ok else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """Run a ``greenllm`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # calibrate passes what follows its first '--' to each run's pytest untouched: argparse
    # would read a pytest option there as its own, and a REMAINDER beside the reports as a
    # report.
    pytest_args: list[str] = []
    if argv[:1] == ["calibrate"] and "--" in argv:
        cut = argv.index("--")
        argv, pytest_args = argv[:cut], argv[cut + 1 :]
    args = build_parser().parse_args(argv)
    args.pytest_args = pytest_args
    commands = {
        "reset-clocks": _reset_clocks,
        "compare": _compare,
        "merge": _merge,
        "recommend": _recommend,
        "knobs": _knobs,
        "export": _export,
        "report": _report,
        "doctor": _doctor,
        "calibrate": _calibrate,
    }
    try:
        return commands[args.command](args)
    except BrokenPipeError:
        # `greenllm knobs | head`: the reader left; say nothing more, to nobody.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except (pytest.UsageError, HintedError) as e:
        print(f"greenllm: error: {e}", file=sys.stderr)
        return EXIT_USAGE
