"""The knob options, defined once for both pytest and the ``greenllm`` command.

pytest-benchmark shares its display options between ``pytest_addoption`` and its CLI by
writing them once with a prefix; we do the same so that a flag, its ini key and its help
text can never drift apart between the two entry points.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ENABLE_FLAG = "--greenllm"
PYTEST_PREFIX = "--greenllm-"
INI_PREFIX = "greenllm_"
# Flags of the plugin alone (the CLI spells its own in cli.py).
ALLOW_MISMATCH_FLAG = "--greenllm-allow-mismatch"
BUILTIN_SWEEP_FLAG = "--greenllm-builtin-sweep"
BUILTIN_SWEEP_INI = "greenllm_builtin_sweep"
# The fixture a benchmark takes to get one test item per knob point.
POINT_FIXTURE = "greenllm_point"


@dataclass(frozen=True)
class KnobOption:
    """One knob: ``--greenllm-<name>`` on the command line, ``greenllm_<name>`` in ini."""

    name: str
    metavar: str
    default: str
    help: str
    repeatable: bool = False  # given several times on the command line; ini: one per line

    @property
    def dest(self) -> str:
        return INI_PREFIX + self.name.replace("-", "_")

    @property
    def ini(self) -> str:
        return self.dest

    @property
    def flag(self) -> str:
        return PYTEST_PREFIX + self.name


OPTIONS: tuple[KnobOption, ...] = (
    KnobOption(
        "freqs",
        "MHZ,...",
        "800,1200,1600,1980",
        "GPU SM clocks to lock, in MHz, comma separated; snapped to the nearest clock the "
        "device supports. 'all' sweeps every supported clock, 'default' leaves clocks alone.",
    ),
    KnobOption("tp", "N,...", "1,2,4,8", "Tensor-parallel sizes (GPUs per engine), comma separated."),
    KnobOption(
        "batch",
        "N,...",
        "1,8,32",
        "Batch sizes: the engine's max_num_seqs, the most requests decoded together.",
    ),
    KnobOption(
        "workloads",
        "W,...",
        "S,M,L",
        "Workloads: buckets S, M, L, custom input:output token pairs such as 512:128, and "
        "'trace' to replay --greenllm-trace.",
    ),
    KnobOption(
        "model",
        "MODEL",
        "embedded",
        "Model to serve: 'embedded' (a tiny Llama shipped with the plugin, random weights), "
        "a local directory with config.json, or a model hub id.",
    ),
    KnobOption(
        "device",
        "KIND",
        "auto",
        "Energy meter and clock control: auto, nvml, rapl, fake or none.",
    ),
    KnobOption(
        "mode",
        "MODE",
        "offline",
        "How requests reach vLLM: 'offline' steps its in-process engine (vllm.LLM); 'serve' "
        "starts its OpenAI-compatible server for each engine configuration and streams the "
        "requests over HTTP, at most batch-size in flight.",
    ),
    KnobOption(
        "endpoint",
        "URL",
        "",
        "Measure an OpenAI-compatible server that runs already (vLLM, SGLang, TGI), e.g. "
        "http://127.0.0.1:8000, instead of starting vLLM: --greenllm-model names the model "
        "it serves (default: its only one), TP and max_num_seqs are the server's own, and "
        "the batch size is the client's concurrency.",
    ),
    KnobOption(
        "endpoint-gpus",
        "N,...",
        "none",
        "The local GPUs the --greenllm-endpoint server runs on, by CUDA index: their energy "
        "is measured and their clocks and power limits swept; 'all' for every device the "
        "meter has; 'none' measures latency only.",
    ),
    KnobOption(
        "shard",
        "K/N",
        "",
        "Run shard K of N (from 1) of the sweep, for one node of many: whole engine "
        "configurations, split the same way on every node, balanced by estimated time. "
        "'auto' reads Slurm's array task, a Kubernetes indexed Job's completion index (with "
        "$GREENLLM_SHARD_TOTAL) or $GREENLLM_SHARD_INDEX and $GREENLLM_SHARD_TOTAL.",
    ),
    KnobOption(
        "repeats",
        "N",
        "1",
        "Runs of every knob point; 'auto' (the default with --greenllm-baseline) runs 2, then "
        "one more at a time until the energy verdict against the baseline is settled "
        "(regressed or ok), at most --greenllm-max-repeats; without a baseline 'auto' runs 5, "
        "enough for the report to serve as one (docs/gate.md).",
    ),
    KnobOption("max-repeats", "N", "10", "The most runs --greenllm-repeats=auto spends on a point."),
    KnobOption(
        "inconclusive",
        "WHAT",
        "warn",
        "What a verdict the measurements could not settle (an energy change, an SLO) does: "
        "'fail' fails the point, 'warn' lists it in the summary and issues an "
        "InconclusiveWarning, 'pass' only records it in the report.",
    ),
    KnobOption(
        "requests",
        "N",
        "auto",
        "Requests per knob point and repeat; 'auto' is twice the batch size, at least 8, or, "
        "where a p99 SLO is checked, enough (pooled over the repeats) to certify it at "
        "--greenllm-slo-confidence: 299 at 95% (docs/slo.md).",
    ),
    KnobOption(
        "rates",
        "REQ/S,...",
        "inf",
        "Arrival rates to sweep, one point per rate: 'inf' sends every request at once "
        "(a closed loop); a number sends that many requests/s, spaced as "
        "--greenllm-arrivals says. Either way at most batch-size requests are in flight.",
    ),
    KnobOption(
        "rate",
        "REQ/S",
        "inf",
        "One arrival rate: rates with a single value; give one or the other.",
    ),
    KnobOption(
        "arrivals",
        "KIND",
        "poisson",
        "How requests at a finite rate are spaced: 'poisson' (exponential gaps, as vllm "
        "bench serve) or 'constant' (equal gaps).",
    ),
    KnobOption(
        "trace-time-scale",
        "FACTOR",
        "1",
        "The trace workload's recorded arrival times are multiplied by FACTOR: 0.5 replays "
        "the trace twice as fast, 2 half as fast.",
    ),
    KnobOption(
        "engine-arg",
        "KEY=VALUE",
        "",
        "Any other vLLM engine argument, passed through (repeat the option; in ini, one "
        "per line). Values are read as JSON where they parse, else as strings.",
        repeatable=True,
    ),
    KnobOption("seed", "N", "0", "Seed of the token-id prompts: same seed, same prompts."),
    KnobOption(
        "trace",
        "CSV",
        "",
        "Azure LLM inference trace (TIMESTAMP,ContextTokens,GeneratedTokens): S, M and L "
        "become its length terciles, and the 'trace' workload replays it.",
    ),
    KnobOption("json", "PATH", "", "Write the JSON report to PATH."),
    KnobOption(
        "junit-properties",
        "WHERE",
        "testcase",
        "Where --junitxml gets each point's figures: 'testcase' (each test's properties, "
        "as pytest writes user_properties), 'suite' (testsuite-level properties, the only "
        "place pytest's junit-10.xsd allows them) or 'both'.",
    ),
    KnobOption(
        "slo",
        "SPEC",
        "",
        "SLOs, e.g. 'ttft_p99=2000ms,tbt_p99=200ms,throughput_min=50'; a 'W:' prefix "
        "after ';' sets them for workload W only ('ttft_p99=2s;L:ttft_p99=5s'); 'none' "
        "drops one. Names: ttft_p99, tbt_p99, tpot_p99, e2el_p99, throughput_min (tok/s). "
        "Defaults: ttft_p99=2s (5s for L), tbt_p99=200ms.",
    ),
    KnobOption(
        "baseline",
        "PATH",
        "",
        "A previous JSON report, or a folder of them (the most recent matching ones are "
        "pooled): every point in both fails if its J/output-token or average power rose by "
        "more than the tolerance, credibly over the repeats (docs/gate.md).",
    ),
    KnobOption(
        "slo-confidence",
        "PCT",
        "95%",
        "Confidence of each SLO verdict: a point is judged met, violated or inconclusive "
        "over every request of its repeats, each wrong at most 1 - PCT of the time "
        "(docs/slo.md).",
    ),
    KnobOption(
        "noise",
        "PROFILE",
        "",
        "A noise profile from greenllm calibrate: the box's run-to-run spread, which the "
        "energy gate adds to the repeats' own (docs/gate.md).",
    ),
    KnobOption(
        "energy-tolerance",
        "PCT",
        "5%",
        "Largest J/output-token or average-power increase over the baseline that passes.",
    ),
    KnobOption(
        "resume",
        "JOURNAL",
        "",
        "Continue a killed sweep from its journal: measured points are kept, not rerun.",
    ),
    KnobOption(
        "sample-hz",
        "HZ",
        "10",
        "Power sampling rate of the energy meter's background thread, in Hz.",
    ),
    KnobOption(
        "min-window",
        "SECONDS",
        "5",
        "Shortest measurement window, in seconds: a point's requests run again, back to "
        "back in the same window, until it is this long (the energy counter updates every "
        "20-100 ms); 0 runs them once.",
    ),
    KnobOption(
        "cooldown",
        "SECONDS",
        "60",
        "Longest wait, in seconds, before each point for the GPUs to cool to within 3 °C "
        "of their idle temperature; 0 does not wait.",
    ),
    KnobOption(
        "stall-timeout",
        "SECONDS",
        "auto",
        "How long an engine step may take before the engine counts as stalled and its point "
        "fails; 'auto' allows 20 times its slowest step so far, at least 120 s. An engine "
        "process that dies fails its point at once either way.",
    ),
    KnobOption(
        "power-limits",
        "WATTS,...",
        "default",
        "GPU power limits to sweep, in whole W, comma separated: each point runs with its "
        "GPUs' limit set to one of them and put back after; 'default' leaves the limit alone.",
    ),
    KnobOption(
        "power-limit",
        "WATTS",
        "default",
        "One GPU power limit, in whole W: power-limits with a single value; give one or the other.",
    ),
)

OPTIONS_BY_NAME = {option.name: option for option in OPTIONS}


def add_knob_options(addoption: Callable[..., Any], prefix: str) -> None:
    """Declare every knob with ``addoption`` (pytest's or argparse's), flags ``prefix+name``."""
    for option in OPTIONS:
        shown = option.default or "none"
        addoption(
            prefix + option.name,
            dest=option.dest,
            metavar=option.metavar,
            default=None,
            action="append" if option.repeatable else "store",
            # argparse %-formats help texts: a literal % must be doubled.
            help=f"{option.help} Default: {shown}.".replace("%", "%%"),
        )
