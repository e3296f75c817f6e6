"""Validate every knob option once, into one frozen Settings object.

Each value comes from the command line if given there, else from the ini file, else from the
default in ``options.py``. Every problem is a ``pytest.UsageError`` naming where the value
came from, what it was, and what is accepted: pytest prints it as one ``ERROR:`` line.
"""

from __future__ import annotations

import json
import math
import os
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias, TypeVar

import pytest

from pytest_greenllm.arrivals import CLOSED_LOOP, RATE_KINDS, Load
from pytest_greenllm.devices.base import DEVICE_KINDS
from pytest_greenllm.gate import BASELINE_REPEATS, INCONCLUSIVE_POLICIES, MIN_REPEATS
from pytest_greenllm.knobs import ALL_CLOCKS, FreqRequest
from pytest_greenllm.model_info import ModelError, ModelInfo, resolve_model, unresolved_model
from pytest_greenllm.options import ENABLE_FLAG, OPTIONS, PYTEST_PREFIX, KnobOption
from pytest_greenllm.shards import Shard, ShardError, parse_shard
from pytest_greenllm.trace import Trace, TraceError, derive_buckets, load_trace
from pytest_greenllm.verdicts import DEFAULT_SLO, DEFAULT_WORKLOAD_SLOS, Slo, SloError, parse_slo
from pytest_greenllm.workloads import (
    DEFAULT_BUCKETS,
    REPLAY,
    Workload,
    custom_workload,
    replay_workload,
)

T = TypeVar("T")
ALL_DEVICES: Final = "all"
# The devices an endpoint's energy is read from: CUDA indices, or every device ('all').
EndpointGpus: TypeAlias = tuple[int, ...] | Literal["all"]
MAX_CLOCK_MHZ: Final = 10_000
# Far above any accelerator's limit: a larger value is a limit given in mW by mistake.
MAX_POWER_LIMIT_W: Final = 10_000


@dataclass(frozen=True)
class Raw:
    """One option's raw text and where it came from, for error messages."""

    option: KnobOption
    text: str
    source: str  # e.g. the flag with its value, or 'ini greenllm_tp = 0'
    flag_prefix: str = PYTEST_PREFIX  # of the front end reading it, to name other options
    given: bool = True  # set on the command line or in the ini file, not the default

    def error(self, why: str) -> pytest.UsageError:
        return pytest.UsageError(f"{self.source}: {why}")

    def items(self) -> list[str]:
        return [item.strip() for item in self.text.split(",")]


def parse_positive_ints(raw: Raw, what: str) -> tuple[int, ...]:
    """A comma-separated list of whole numbers >= 1, duplicates dropped, order kept."""
    values = []
    for item in raw.items():
        if not item.isdigit() or int(item) < 1:
            raise raw.error(f"{what} must be whole numbers >= 1, comma separated, e.g. 1,2,4")
        values.append(int(item))
    return tuple(dict.fromkeys(values))


def parse_positive_int(raw: Raw, what: str) -> int:
    """One whole number >= 1."""
    if not raw.text.strip().isdigit() or int(raw.text) < 1:
        raise raw.error(f"{what} must be a whole number >= 1")
    return int(raw.text)


def parse_repeats(raw: Raw, baseline: bool) -> tuple[int, bool]:
    """(the fewest or fixed count, sequential): a whole number >= 1, or 'auto' (the default
    with a ``baseline``). 'auto' without a baseline runs BASELINE_REPEATS: that report will
    be the next run's baseline, and 2 repeats of it would leave +10% caught 41% of the time."""
    if raw.text.strip().lower() == "auto" or (baseline and not raw.given):
        return (MIN_REPEATS if baseline else BASELINE_REPEATS), True
    if not raw.text.strip().isdigit() or int(raw.text) < 1:
        raise raw.error("the repeat count must be a whole number >= 1, or 'auto'")
    return int(raw.text), False


def parse_max_repeats(raw: Raw, auto: bool, fewest: int) -> int:
    """The most repeats 'auto' spends: a whole number >= ``fewest``; only with 'auto'."""
    if raw.given and not auto:
        raise raw.error(f"it applies to {raw.flag_prefix}repeats=auto only; give that too, or drop it")
    if not raw.text.strip().isdigit() or int(raw.text) < fewest:
        raise raw.error(f"the most repeats must be a whole number >= {fewest}, the fewest 'auto' runs here")
    return int(raw.text)


def parse_confidence(raw: Raw) -> float:
    """'95%' or 0.95: a confidence strictly between 50% and 100%."""
    text = raw.text.strip()
    value = _number(text[:-1]) / 100 if text.endswith("%") else _number(text)
    if not 0.5 < value < 1:
        raise raw.error("the confidence must be a percentage above 50% and below 100%, such as 95%")
    return value


def parse_inconclusive(raw: Raw) -> str:
    """fail, pass or warn."""
    value = raw.text.strip().lower()
    if value not in INCONCLUSIVE_POLICIES:
        raise raw.error(f"use one of {', '.join(INCONCLUSIVE_POLICIES)}")
    return value


def parse_junit_properties(raw: Raw) -> str:
    """testcase, suite or both."""
    value = raw.text.strip().lower()
    if value not in JUNIT_PLACES:
        raise raw.error(f"use one of {', '.join(JUNIT_PLACES)}")
    return value


def parse_freqs(raw: Raw) -> FreqRequest:
    """'all', or MHz values and 'default' (leave clocks alone), comma separated."""
    if raw.text.strip().lower() == ALL_CLOCKS.value:
        return ALL_CLOCKS
    freqs: list[int | None] = []
    for item in raw.items():
        if item.lower() == "default":
            freqs.append(None)
        elif item.isdigit() and 1 <= int(item) <= MAX_CLOCK_MHZ:
            freqs.append(int(item))
        else:
            raise raw.error(
                f"{item!r} is not a clock; give MHz values such as 1410,1980, 'all' for every "
                "supported clock, or 'default' to leave clocks alone"
            )
    return tuple(dict.fromkeys(freqs))


def parse_workloads(
    raw: Raw, buckets: Mapping[str, tuple[int, int]], trace: Trace | None
) -> tuple[Workload, ...]:
    """Bucket names (S, M, L), custom input:output pairs, and 'trace'."""
    accepted = f"use {', '.join(buckets)}, {REPLAY}, or input:output token counts such as 512:128"
    workloads = []
    for item in raw.items():
        name = item.upper()
        if name in buckets:
            workloads.append(Workload(name, *buckets[name]))
        elif item.lower() == REPLAY:
            if trace is None:
                raise raw.error(
                    f"the {REPLAY} workload replays a trace; give one with {raw.flag_prefix}trace=CSV"
                )
            workloads.append(replay_workload(trace))
        elif ":" in item:
            inp, _, out = item.partition(":")
            if not (inp.isdigit() and out.isdigit() and int(inp) >= 1 and int(out) >= 1):
                raise raw.error(f"{item!r}: input and output token counts must be >= 1; {accepted}")
            workloads.append(custom_workload(int(inp), int(out)))
        else:
            raise raw.error(f"unknown workload {item!r}; {accepted}")
    return tuple(dict.fromkeys(workloads))


def parse_requests(raw: Raw) -> int | None:
    """'auto' (None) or a request count >= 1."""
    if raw.text.strip().lower() == "auto":
        return None
    return parse_positive_int(raw, "the request count ('auto' or a number)")


def parse_seed(raw: Raw) -> int:
    """A whole number >= 0."""
    if not raw.text.strip().isdigit():
        raise raw.error("the seed must be a whole number >= 0")
    return int(raw.text)


def parse_device(raw: Raw) -> str:
    """One of the device kinds."""
    kind = raw.text.strip().lower()
    if kind not in DEVICE_KINDS:
        raise raw.error(f"unknown device; use one of {', '.join(DEVICE_KINDS)}")
    return kind


MODES = ("offline", "serve")
# Where --junitxml gets each point's figures (junit.py).
JUNIT_PLACES = ("testcase", "suite", "both")


def parse_shard_option(raw: Raw) -> Shard | None:
    """'' (the whole sweep), K/N, or 'auto' (from the scheduler's variables)."""
    try:
        return parse_shard(raw.text, os.environ)
    except ShardError as e:
        raise raw.error(str(e)) from None


def parse_mode(raw: Raw) -> str:
    """offline or serve."""
    mode = raw.text.strip().lower()
    if mode not in MODES:
        raise raw.error(f"unknown mode; use {' or '.join(MODES)}")
    return mode


def parse_endpoint(raw: Raw) -> str | None:
    """An http(s) URL of a server (its /v1 is the API's); empty for none."""
    text = raw.text.strip()
    if not text:
        return None
    parts = urllib.parse.urlsplit(text)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok or parts.query:
        raise raw.error("give the server's http:// or https:// URL, e.g. http://127.0.0.1:8000")
    return text.rstrip("/").removesuffix("/v1")


def parse_endpoint_gpus(raw: Raw) -> EndpointGpus:
    """'none' (no energy), 'all', or CUDA indices, comma separated."""
    text = raw.text.strip().lower()
    if text == "none":
        return ()
    if text == "all":
        return ALL_DEVICES
    indices = []
    for item in raw.items():
        if not (item.isascii() and item.isdigit()):
            raise raw.error(f"{item!r} is not a GPU index; give CUDA indices such as 0,1, 'all' or 'none'")
        indices.append(int(item))
    return tuple(dict.fromkeys(indices))


def parse_mode_for(raw: Raw, endpoint: str | None, endpoint_raw: Raw) -> str:
    """The mode; an endpoint is served, and measuring it offline is a contradiction."""
    mode = parse_mode(raw)
    if endpoint is not None and mode != "serve":
        if raw.given:
            raise pytest.UsageError(
                f"{endpoint_raw.source} measures a running server, which {raw.source} cannot: "
                f"drop {raw.flag_prefix}{raw.option.name}"
            )
        return "serve"
    return mode


def parse_model(raw: Raw) -> ModelInfo:
    """'embedded', a local model directory or a hub id."""
    try:
        return resolve_model(raw.text.strip())
    except ModelError as e:
        raise raw.error(str(e)) from None


def parse_trace(raw: Raw) -> Trace | None:
    """An Azure-format trace CSV, loaded and checked; empty for none."""
    if not raw.text.strip():
        return None
    try:
        return load_trace(raw.text.strip())
    except TraceError as e:
        raise raw.error(str(e)) from None


def parse_json_path(raw: Raw) -> Path | None:
    """Where the JSON report goes; empty for nowhere."""
    if not raw.text.strip():
        return None
    path = Path(raw.text.strip())
    if path.is_dir():
        raise raw.error("is a directory; give a file path for the JSON report")
    return path


def _number(text: str) -> float:
    """The number ``text`` holds, or NaN, which every range check below refuses."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def parse_positive_float(raw: Raw, what: str) -> float:
    """A number > 0."""
    value = _number(raw.text)
    if not 0 < value < math.inf:
        raise raw.error(f"{what} must be a number > 0")
    return value


def parse_seconds(raw: Raw, what: str) -> float:
    """A number of seconds >= 0."""
    value = _number(raw.text)
    if not 0 <= value < math.inf:
        raise raw.error(f"{what} must be a number of seconds >= 0")
    return value


def parse_rates(raw: Raw) -> tuple[float | None, ...]:
    """'inf' (None: a closed loop) and requests per second > 0, comma separated, duplicates
    dropped, order kept."""
    rates: list[float | None] = []
    for item in raw.items():
        value = None if item.lower() == "inf" else _number(item)
        if value is not None and not 0 < value < math.inf:
            raise raw.error(f"{item!r} is not an arrival rate; give 'inf' or requests/s > 0, e.g. inf,2,8")
        rates.append(value)
    return tuple(dict.fromkeys(rates))


def parse_loads(rates: Raw, single: Raw, arrivals: Raw) -> tuple[Load, ...]:
    """The load axis: the rates (one point each), spaced as ``arrivals`` says."""
    kind = arrivals.text.strip().lower()
    if kind not in RATE_KINDS:
        raise arrivals.error(f"unknown arrival process; use {' or '.join(RATE_KINDS)}")
    values = parse_axis_or_one(rates, single, parse_rates, "the arrival rate", "inf", "R")
    return tuple(CLOSED_LOOP if rate is None else Load(kind, rate) for rate in values)


def parse_engine_args(raw: Raw) -> tuple[tuple[str, Any], ...]:
    """KEY=VALUE lines; values as JSON where they parse (numbers, true, null), else strings."""
    parsed: dict[str, Any] = {}
    # One argument a line, so that JSON values may hold spaces.
    for line in filter(None, (line.strip() for line in raw.text.splitlines())):
        key, sep, text = line.partition("=")
        if not sep or not key.replace("_", "").isalnum():
            raise raw.error(f"{line!r} is not KEY=VALUE, e.g. max_model_len=4096")
        try:
            parsed[key] = json.loads(text)
        except ValueError:
            parsed[key] = text
    return tuple(parsed.items())


def parse_slos(raw: Raw, workloads: tuple[Workload, ...]) -> tuple[tuple[str, Slo], ...]:
    """The SLO of every workload: defaults, then global items, then the workload's own."""
    global_items, own = "", {}
    for group in filter(None, (g.strip() for g in raw.text.split(";"))):
        name, sep, items = group.partition(":")
        if sep and "=" not in name:
            own[name.strip().upper()] = items
        else:
            global_items += "," + group
    names = {w.name.upper() for w in workloads}
    unknown = sorted(set(own) - names)
    if unknown:
        raise raw.error(f"SLOs for {', '.join(unknown)}, which is not among the workloads")
    try:
        return tuple(
            (
                w.name,
                parse_slo(
                    own.get(w.name.upper(), ""),
                    parse_slo(global_items, DEFAULT_WORKLOAD_SLOS.get(w.name, DEFAULT_SLO)),
                ),
            )
            for w in workloads
        )
    except SloError as e:
        raise raw.error(str(e)) from None


def parse_tolerance(raw: Raw) -> float:
    """'5%' or 0.05: a relative increase >= 0."""
    text = raw.text.strip()
    value = _number(text[:-1]) / 100 if text.endswith("%") else _number(text)
    if not 0 <= value < math.inf:
        raise raw.error("the tolerance must be a percentage such as 5% (or 0.05), >= 0")
    return value


def parse_existing_path(raw: Raw) -> Path | None:
    """A path that exists; empty for none."""
    if not raw.text.strip():
        return None
    path = Path(raw.text.strip())
    if not path.exists():
        raise raw.error(f"{path} does not exist")
    return path


def parse_stall_timeout(raw: Raw) -> float | None:
    """'auto' (None) or seconds > 0."""
    if raw.text.strip().lower() == "auto":
        return None
    return parse_positive_float(raw, "the stall timeout ('auto' or seconds)")


def parse_power_limits(raw: Raw) -> tuple[int | None, ...]:
    """Whole watts and 'default' (None: leave the limit alone), comma separated, duplicates
    dropped, order kept."""
    limits: list[int | None] = []
    for item in raw.items():
        if item.lower() == "default":
            limits.append(None)
        elif item.isascii() and item.isdigit() and 1 <= int(item) <= MAX_POWER_LIMIT_W:
            limits.append(int(item))
        else:
            raise raw.error(
                f"{item!r} is not a power limit; give whole watts such as 300,500 (at most "
                f"{MAX_POWER_LIMIT_W}), or 'default' to leave the limit alone"
            )
    return tuple(dict.fromkeys(limits))


def parse_axis_or_one(
    many: Raw, one: Raw, parse: Callable[[Raw], tuple[T, ...]], what: str, leave: str, value: str
) -> tuple[T, ...]:
    """An axis from ``many``, or the one value of ``one`` (its flag at ``leave`` counts as
    not given), which may not be given beside it. ``what`` names the knob in errors and
    ``value`` stands for a value of it."""
    axis = parse(many)
    if one.text.strip().lower() == leave:
        return axis
    if "," in one.text:
        noun = what.removeprefix("the ")
        raise one.error(f"give one {noun} here; sweep several with {one.flag_prefix}{many.option.name}")
    single = parse(one)
    if many.given:
        prefix = one.flag_prefix
        raise pytest.UsageError(
            f"{one.source} and {many.source} both set {what}: give {prefix}{many.option.name} "
            f"alone ({prefix}{one.option.name}={value} is {prefix}{many.option.name}={value})"
        )
    return single


def parse_time_scale(raw: Raw) -> float:
    return parse_positive_float(raw, "the trace time scale")


@dataclass(frozen=True)
class Settings:
    """Every knob, validated. Built once per session and kept in ``config.stash``."""

    enabled: bool
    freqs: FreqRequest
    tps: tuple[int, ...]
    batches: tuple[int, ...]
    workloads: tuple[Workload, ...]
    model: ModelInfo
    device: str
    mode: str  # offline (vllm.LLM in process) or serve (vLLM's OpenAI-compatible server)
    endpoint: str | None  # a running server to measure (serve mode); None: greenllm starts vLLM
    endpoint_model: str | None  # the model to ask the endpoint for; None: its only one
    endpoint_gpus: EndpointGpus  # where the endpoint's energy is read; (): not measured
    shard: Shard | None  # the part of the sweep this node runs; None: all of it
    repeats: int  # the fixed count; with auto_repeats, the fewest
    auto_repeats: bool  # sequential: more repeats until the energy verdict is settled
    max_repeats: int  # the most auto_repeats spends
    inconclusive: str  # fail, pass or warn: what an unsettled energy or SLO verdict does
    requests: int | None  # None: 'auto', see workloads.request_count
    seed: int
    trace: Trace | None
    json_path: Path | None
    junit_properties: str  # where --junitxml gets the figures: testcase, suite or both
    sample_hz: float  # Units: Hz.
    min_window_s: float  # Units: s.
    cooldown_s: float  # longest wait for the GPUs to cool before a point. Units: s.
    power_limits_w: tuple[int | None, ...]  # the axis; None leaves the limit alone. Units: W.
    loads: tuple[Load, ...]  # the load axis: how requests arrive
    stall_timeout_s: float | None  # None: from the engine's pace. Units: s.
    trace_time_scale: float  # multiplies the trace's arrival offsets
    slos: tuple[tuple[str, Slo], ...]  # per workload name
    slos_given: bool  # set by the user, not only the defaults
    baseline_path: Path | None
    energy_tolerance: float  # relative: 0.05 is 5%
    resume_path: Path | None
    noise_path: Path | None  # a noise profile (greenllm calibrate) the gate judges with
    slo_confidence: float  # of each SLO verdict: 0.95 is 95%
    engine_args: tuple[tuple[str, Any], ...]  # passed to vllm.LLM as they are

    @classmethod
    def from_sources(
        cls,
        enabled: bool,
        cli: Mapping[str, str | list[str] | None],
        ini: Mapping[str, str],
        flag_prefix: str,
    ) -> Settings:
        """Build from command-line values (None: not given) and ini values ('' : not set)."""
        raw: dict[str, Raw] = {}
        for option in OPTIONS:
            given = cli.get(option.dest)
            flag = f"{flag_prefix}{option.name}"
            if isinstance(given, list):
                source = " ".join(f"{flag}={value}" for value in given)
                raw[option.name] = Raw(option, "\n".join(given), source, flag_prefix)
            elif given is not None:
                raw[option.name] = Raw(option, given, f"{flag}={given}", flag_prefix)
            elif ini.get(option.ini, ""):
                text = ini[option.ini]
                raw[option.name] = Raw(option, text, f"ini {option.ini} = {text}", flag_prefix)
            else:
                raw[option.name] = Raw(
                    option,
                    option.default,
                    f"default {option.name}={option.default}",
                    flag_prefix,
                    given=False,
                )
        trace = parse_trace(raw["trace"])
        buckets = DEFAULT_BUCKETS
        if trace is not None:
            buckets = {b.name: (b.input_tokens, b.output_tokens) for b in derive_buckets(trace)}
        workloads = parse_workloads(raw["workloads"], buckets, trace)
        endpoint = parse_endpoint(raw["endpoint"])
        endpoint_model = raw["model"].text.strip() if endpoint is not None and raw["model"].given else None
        # An endpoint's model is the name it serves, which need not exist here: what it is
        # comes from the endpoint when the sweep connects (endpoint.attach_endpoint).
        model = parse_model(raw["model"]) if endpoint is None else unresolved_model(endpoint_model or "")
        baseline_path = parse_existing_path(raw["baseline"])
        repeats, auto_repeats = parse_repeats(raw["repeats"], baseline_path is not None)
        return cls(
            enabled=enabled,
            freqs=parse_freqs(raw["freqs"]),
            tps=parse_positive_ints(raw["tp"], "tensor-parallel sizes"),
            batches=parse_positive_ints(raw["batch"], "batch sizes"),
            workloads=workloads,
            model=model,
            device=parse_device(raw["device"]),
            mode=parse_mode_for(raw["mode"], endpoint, raw["endpoint"]),
            endpoint=endpoint,
            endpoint_model=endpoint_model,
            endpoint_gpus=parse_endpoint_gpus(raw["endpoint-gpus"]),
            shard=parse_shard_option(raw["shard"]),
            repeats=repeats,
            auto_repeats=auto_repeats,
            max_repeats=parse_max_repeats(raw["max-repeats"], auto_repeats, repeats),
            inconclusive=parse_inconclusive(raw["inconclusive"]),
            requests=parse_requests(raw["requests"]),
            seed=parse_seed(raw["seed"]),
            trace=trace,
            json_path=parse_json_path(raw["json"]),
            junit_properties=parse_junit_properties(raw["junit-properties"]),
            sample_hz=parse_positive_float(raw["sample-hz"], "the sampling rate"),
            min_window_s=parse_seconds(raw["min-window"], "the minimum window"),
            cooldown_s=parse_seconds(raw["cooldown"], "the cool-down wait"),
            power_limits_w=parse_axis_or_one(
                raw["power-limits"], raw["power-limit"], parse_power_limits, "the power limit", "default", "W"
            ),
            loads=parse_loads(raw["rates"], raw["rate"], raw["arrivals"]),
            stall_timeout_s=parse_stall_timeout(raw["stall-timeout"]),
            trace_time_scale=parse_time_scale(raw["trace-time-scale"]),
            slos=parse_slos(raw["slo"], workloads),
            slos_given=bool(raw["slo"].text.strip()),
            baseline_path=baseline_path,
            noise_path=parse_existing_path(raw["noise"]),
            slo_confidence=parse_confidence(raw["slo-confidence"]),
            energy_tolerance=parse_tolerance(raw["energy-tolerance"]),
            resume_path=parse_existing_path(raw["resume"]),
            engine_args=parse_engine_args(raw["engine-arg"]),
        )

    @property
    def looks(self) -> tuple[int, ...]:
        """The repeat counts a sequential run may judge at; () for a fixed count."""
        return tuple(range(self.repeats, self.max_repeats + 1)) if self.auto_repeats else ()

    @property
    def planned_repeats(self) -> int:
        """The most repeats a point may take."""
        return self.max_repeats if self.auto_repeats else self.repeats

    @classmethod
    def from_config(cls, config: pytest.Config) -> Settings:
        """Build from pytest's options and ini."""
        getoption: Callable[[str], str | list[str] | None] = config.getoption
        cli = {option.dest: getoption(option.dest) for option in OPTIONS}
        ini = {option.ini: str(config.getini(option.ini)) for option in OPTIONS}
        enabled = bool(config.getoption(ENABLE_FLAG.lstrip("-")))
        return cls.from_sources(enabled, cli, ini, PYTEST_PREFIX)


settings_key: Final = pytest.StashKey[Settings]()


def slo_for(settings: Settings, workload: str) -> Slo:
    """The SLO a point of ``workload`` is held to."""
    return dict(settings.slos)[workload]
