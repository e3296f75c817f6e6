"""The record of a measured point, typed from the run to the report, and the report schema.

A point is measured (``PointResult``), summarised and judged into a ``PointRecord``, and
serialised once, by ``to_json``; every reader (report, journal, baseline, the ``greenllm``
tools) gets it back through ``from_json``. No other module knows the JSON keys.

Schema (``schema_version`` 2, which reads 1 too; docs/report-schema.md describes every
field)::

    {"schema": "pytest-greenllm report", "schema_version": 1, "created": ISO-8601,
     "device": "nvml" | "rapl" | "fake" | "none", "machine": {...}, "git": {...} | null,
     "fingerprint": {...}, "settings": {...}, "points": [{"id", "config", "locked_clock_mhz",
     "power_limit_w", "repeats": [{"metrics": {...}, "energy": {...} | null}],
     "summary": {...}, "verdicts": {...}}]}

JSON has no NaN or infinity: an undefined figure is written as null, and read back as NaN
where the field is a plain number.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeAlias, TypeVar

import cattrs

from pytest_greenllm.gate import INCONCLUSIVE, Noise, point_verdict
from pytest_greenllm.knobs import KnobPoint
from pytest_greenllm.metrics import RunMetrics
from pytest_greenllm.phases import PhaseSplit
from pytest_greenllm.scrape import ServerView
from pytest_greenllm.slo_verdicts import INCONCLUSIVE as SLO_INCONCLUSIVE
from pytest_greenllm.slo_verdicts import VIOLATED, SloVerdict, point_slo_verdict
from pytest_greenllm.verdicts import Goodput, Regression, Violation, regression

SCHEMA = "pytest-greenllm report"
SCHEMA_VERSION = 2
# Version 1 lacks only fields that version 2 added with defaults: it reads as it is.
READABLE_VERSIONS = (1, 2)
# What every stored point has, checked before its fields are read.
POINT_FIELDS = (("id", str), ("config", dict), ("repeats", list), ("summary", dict), ("verdicts", dict))
# One JSON object as json.loads returns it: the stored form, never passed between modules
# in place of a record.
JsonObject: TypeAlias = dict[str, Any]
T = TypeVar("T")


class RecordError(ValueError):
    """Stored data that does not have the schema's shape; the message names the field."""


@dataclass(frozen=True)
class EnergyFigures:
    """What the meter says about one run, per token and per request."""

    method: str  # counter, sampled or mixed
    energy_j: float  # Units: J.
    j_per_output_token: float  # Units: J/token.
    j_per_request: float  # Units: J.
    avg_power_w: float  # Units: W.
    peak_power_w: float | None  # Units: W.
    steady_j_per_token: float | None  # inside the steady state. Units: J/token.
    energy_above_idle_j: float | None  # Units: J.
    per_device_j: tuple[tuple[str, float], ...]  # Units: J.
    imbalance: float | None
    sm_clock_mhz: tuple[tuple[str, float | None], ...]  # mean observed clock per device
    clock_strayed: bool
    short_window: bool
    warnings: tuple[str, ...]
    # Added in schema version 2; a version-1 report reads them as unknown.
    timeline_power: str | None = None  # the timeline's power: instant, average or counter
    steady_from: str | None = None  # 'counter' (reads at its edges) or 'timeline'
    j_per_total_token: float | None = None  # over prompt + output tokens. Units: J/token.
    static_share: float | None = None  # idle power x duration / energy
    edp_js: float | None = None  # energy-delay product: energy x window. Units: J*s.
    event_reasons: tuple[tuple[str, tuple[str, ...]], ...] = ()  # per device, all seen
    phases: PhaseSplit | None = None  # prefill/decode split (its reason where unidentified); None: no steps
    # The kind of each of ``warnings``, in the same order (warning_types.KINDS); empty in
    # reports written before kinds were kept.
    warning_kinds: tuple[str, ...] = ()


@dataclass(frozen=True)
class RepeatResult:
    """One run of a point."""

    metrics: RunMetrics
    energy: EnergyFigures | None  # None where no meter measures
    passes: int = 1  # times the requests ran back to back in the window (min-window)
    server: ServerView | None = None  # the server's own metrics over the window (serve mode)
    unforced: int = 0  # completed requests whose output length was not the one forced


@dataclass(frozen=True)
class PointResult:
    """Every repeat of a point, with the clock and power limit it ran at."""

    point: KnobPoint
    locked_clock_mhz: int | None
    repeats: tuple[RepeatResult, ...]
    # The limit the GPUs reported once it was set; None: left alone. Units: W.
    power_limit_w: float | None = None


@dataclass(frozen=True)
class Summary:
    """Means over repeats of the key figures, and the per-repeat lists the gate tests.

    None where no repeat has the figure. Latencies in ms, throughputs per second.
    """

    ttft_p99_ms: float | None
    itl_p99_ms: float | None  # the paper's TBT
    tpot_p99_ms: float | None
    e2el_p99_ms: float | None
    output_throughput: float | None  # Units: tokens/s.
    request_throughput: float | None  # Units: requests/s.
    j_per_output_token: float | None  # Units: J/token.
    avg_power_w: float | None  # Units: W.
    j_per_output_token_repeats: tuple[float | None, ...]  # metered repeats only
    avg_power_w_repeats: tuple[float | None, ...]
    # Added in schema version 2; a version-1 report reads them as unknown.
    j_per_total_token: float | None = None  # Units: J/token.
    j_per_prefill_token: float | None = None  # Units: J/token.
    j_per_decode_token: float | None = None  # Units: J/token.
    prefill_share: float | None = None  # of prefill + decode energy
    energy_j: float | None = None  # gross, per repeat. Units: J.
    energy_above_idle_j: float | None = None  # per repeat. Units: J.
    static_share: float | None = None  # idle power's share of the energy
    edp_js: float | None = None  # Units: J*s.
    # A baseline pooled from several reports: how many of each per-repeat list came from
    # each report, in order (the gate's random effects); () for one run.
    runs: tuple[int, ...] = ()


def _known(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _mean(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None


def summarise(repeats: Sequence[RepeatResult]) -> Summary:
    """The summary of a point's repeats; undefined figures count as unknown."""
    metrics = [r.metrics for r in repeats]
    energies = [r.energy for r in repeats if r.energy is not None]
    j_per_token = tuple(_known(e.j_per_output_token) for e in energies)
    power = tuple(_known(e.avg_power_w) for e in energies)
    # Only splits that were measured: an unidentified one, or an older report's split shared
    # out by rule, states no per-token figure.
    phases = [e.phases for e in energies if e.phases is not None and e.phases.measured]
    return Summary(
        ttft_p99_ms=_mean(_known(m.ttft_ms.p99) for m in metrics),
        itl_p99_ms=_mean(_known(m.itl_ms.p99) for m in metrics),
        tpot_p99_ms=_mean(_known(m.tpot_ms.p99) for m in metrics),
        e2el_p99_ms=_mean(_known(m.e2el_ms.p99) for m in metrics),
        output_throughput=_mean(_known(m.output_throughput) for m in metrics),
        request_throughput=_mean(_known(m.request_throughput) for m in metrics),
        j_per_output_token=_mean(j_per_token),
        avg_power_w=_mean(power),
        j_per_output_token_repeats=j_per_token,
        avg_power_w_repeats=power,
        j_per_total_token=_mean(_known(e.j_per_total_token) for e in energies),
        j_per_prefill_token=_mean(p.j_per_prefill_token for p in phases),
        j_per_decode_token=_mean(p.j_per_decode_token for p in phases),
        prefill_share=_mean(p.prefill_share for p in phases),
        energy_j=_mean(_known(e.energy_j) for e in energies),
        energy_above_idle_j=_mean(_known(e.energy_above_idle_j) for e in energies),
        static_share=_mean(_known(e.static_share) for e in energies),
        edp_js=_mean(_known(e.edp_js) for e in energies),
    )


@dataclass(frozen=True)
class SummaryMetric:
    """One figure of the summary, with what every table, export and gate shows of it."""

    key: str  # the Summary field
    label: str  # e.g. 'energy per output token'
    unit: str
    header: str  # short column header
    slug: str  # Bencher measure
    lower_is_better: bool
    repeats_key: str | None = None  # the Summary field with its per-repeat values

    def of(self, summary: Summary) -> float | None:
        """The mean over repeats, None where unknown."""
        value: float | None = getattr(summary, self.key)
        return value

    def repeats(self, summary: Summary) -> tuple[float | None, ...]:
        """The per-repeat values; empty for metrics that keep none."""
        if self.repeats_key is None:
            return ()
        values: tuple[float | None, ...] = getattr(summary, self.repeats_key)
        return values


TTFT_P99 = SummaryMetric("ttft_p99_ms", "p99 TTFT", "ms", "TTFT p99 ms", "ttft-p99", True)
TBT_P99 = SummaryMetric("itl_p99_ms", "p99 TBT", "ms", "TBT p99 ms", "tbt-p99", True)
TPOT_P99 = SummaryMetric("tpot_p99_ms", "p99 TPOT", "ms", "TPOT p99 ms", "tpot-p99", True)
E2EL_P99 = SummaryMetric("e2el_p99_ms", "p99 E2EL", "ms", "E2EL p99 ms", "e2el-p99", True)
OUTPUT_THROUGHPUT = SummaryMetric(
    "output_throughput", "output throughput", "tokens/s", "out tok/s", "output-throughput", False
)
REQUEST_THROUGHPUT = SummaryMetric(
    "request_throughput", "request throughput", "requests/s", "req/s", "request-throughput", False
)
J_PER_TOKEN = SummaryMetric(
    "j_per_output_token",
    "energy per output token",
    "J/token",
    "J/tok",
    "energy-per-output-token",
    True,
    "j_per_output_token_repeats",
)
AVG_POWER = SummaryMetric(
    "avg_power_w", "average power", "W", "avg W", "average-power", True, "avg_power_w_repeats"
)
J_PER_TOTAL_TOKEN = SummaryMetric(
    "j_per_total_token", "energy per total token", "J/token", "J/tot tok", "energy-per-total-token", True
)
J_PER_PREFILL_TOKEN = SummaryMetric(
    "j_per_prefill_token",
    "energy per prefill token",
    "J/token",
    "J/prefill tok",
    "energy-per-prefill-token",
    True,
)
J_PER_DECODE_TOKEN = SummaryMetric(
    "j_per_decode_token",
    "energy per decode token",
    "J/token",
    "J/decode tok",
    "energy-per-decode-token",
    True,
)
ENERGY_ABOVE_IDLE = SummaryMetric(
    "energy_above_idle_j", "energy above idle", "J", "J above idle", "energy-above-idle", True
)
EDP = SummaryMetric("edp_js", "energy-delay product", "J*s", "EDP J*s", "energy-delay-product", True)
SUMMARY_METRICS = (
    TTFT_P99,
    TBT_P99,
    TPOT_P99,
    E2EL_P99,
    OUTPUT_THROUGHPUT,
    REQUEST_THROUGHPUT,
    J_PER_TOKEN,
    AVG_POWER,
    J_PER_TOTAL_TOKEN,
    J_PER_PREFILL_TOKEN,
    J_PER_DECODE_TOKEN,
    ENERGY_ABOVE_IDLE,
    EDP,
)
# The energy gate: each is tested over repeats against the baseline's.
GATED_METRICS = (J_PER_TOKEN, AVG_POWER)


def _usable(values: Sequence[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v) and v > 0]


def energy_regressions(
    base: Summary,
    head: Summary,
    tolerance: float,
    looks: tuple[int, ...] = (),
    noise: Mapping[str, Noise] | None = None,
) -> list[Regression]:
    """The regression test of every gated metric both summaries have repeats of; the point's
    false-alarm rate is split over them. A repeat without a value > 0 (no token, or a window
    too short for the counter: 0 J) is left out and counted; a side left with none is not
    compared. ``base.runs`` groups a pooled baseline's repeats by report; ``looks``: see
    ``verdicts.regression``; ``noise``: a noise profile's figures per metric key."""
    pairs = []
    for metric in GATED_METRICS:
        before_all = metric.repeats(base)
        now_all = metric.repeats(head)
        sizes = base.runs if sum(base.runs) == len(before_all) else (len(before_all),)
        runs, start = [], 0
        for size in sizes:
            runs.append(_usable(before_all[start : start + size]))
            start += size
        runs = [r for r in runs if r]
        now = _usable(now_all)
        dropped = (len(before_all) - sum(len(r) for r in runs), len(now_all) - len(now))
        if runs and now:
            pairs.append((metric, runs, now, dropped))
    return [
        regression(
            metric.key,
            runs,
            now,
            tolerance,
            metrics=len(pairs),
            looks=looks,
            noise=None if noise is None else noise.get(metric.key),
            dropped=dropped,
        )
        for metric, runs, now, dropped in pairs
    ]


@dataclass(frozen=True)
class Objective:
    """What the paper's RQ4 optimises for: one metric, at its better end."""

    name: str  # e.g. 'least energy per token'
    mark: str  # one letter, for the summary table
    metric: SummaryMetric


OBJECTIVES = (
    Objective("least energy per token", "E", J_PER_TOKEN),
    Objective("least average power", "P", AVG_POWER),
    Objective("most throughput", "T", OUTPUT_THROUGHPUT),
)


def best_per_objective(
    points: Sequence[PointRecord],
) -> list[tuple[Objective, PointRecord | None]]:
    """The best of ``points`` for each objective (None where no point has the figure); the
    first point wins a tie. A point some of whose requests failed is never the best: its
    figures describe only the requests that completed."""
    out: list[tuple[Objective, PointRecord | None]] = []
    complete = [p for p in points if not any(r.metrics.failed for r in p.repeats)]
    for objective in OBJECTIVES:
        metric = objective.metric
        scored = [(value, p) for p in complete if (value := metric.of(p.summary)) is not None]
        pick = min if metric.lower_is_better else max
        out.append((objective, pick(scored, key=lambda vp: vp[0])[1] if scored else None))
    return out


@dataclass(frozen=True)
class Verdicts:
    """What one point's figures say against its SLO and the baseline."""

    # SLOs missed, as reports before SLO verdicts with a confidence recorded them; new
    # reports keep the judged SLOs in ``slos`` and leave this empty.
    slo_violations: tuple[Violation, ...]
    regressions: tuple[Regression, ...]  # every gated metric compared, regressed or not
    goodput: Goodput
    slos: tuple[SloVerdict, ...] = ()  # every SLO judged, met, violated or inconclusive

    @property
    def slo(self) -> str | None:
        """The point's SLO verdict: met, violated or inconclusive; None where none was set."""
        if self.slo_violations:
            return VIOLATED
        return point_slo_verdict([v.verdict for v in self.slos])

    @property
    def slo_met(self) -> bool:
        """No SLO shown violated: met, inconclusive or none set (``slo`` tells which)."""
        return self.slo != VIOLATED

    @property
    def regressed(self) -> bool:
        return any(r.regressed for r in self.regressions)

    @property
    def energy(self) -> str | None:
        """The point's energy verdict (gate.point_verdict); None: not compared."""
        return point_verdict([r.outcome for r in self.regressions])

    def failures(self, point_id: str, inconclusive: str = "warn") -> list[str]:
        """One line per violated SLO or regression; per inconclusive SLO and energy verdict
        too where ``inconclusive`` is 'fail'."""
        fail_unsure = inconclusive == "fail"
        lines = [v.message(point_id) for v in self.slo_violations]
        lines += [
            v.message(point_id)
            for v in self.slos
            if v.verdict == VIOLATED or (fail_unsure and v.verdict == SLO_INCONCLUSIVE)
        ]
        lines += [r.message(point_id) for r in self.regressions if r.regressed]
        if fail_unsure and self.energy == INCONCLUSIVE:
            lines += [r.message(point_id) for r in self.regressions if r.outcome == INCONCLUSIVE]
        return lines

    def unsure(self, point_id: str) -> list[str]:
        """One line per inconclusive SLO and energy verdict."""
        lines = [v.message(point_id) for v in self.slos if v.verdict == SLO_INCONCLUSIVE]
        if self.energy == INCONCLUSIVE:
            lines += [r.message(point_id) for r in self.regressions if r.outcome == INCONCLUSIVE]
        return lines


@dataclass(frozen=True)
class PointRecord:
    """One point as reports keep it: configuration, repeats, summary and verdicts."""

    id: str
    point: KnobPoint
    locked_clock_mhz: int | None  # Units: MHz.
    repeats: tuple[RepeatResult, ...]
    summary: Summary
    verdicts: Verdicts | None = None  # None: not judged (a record written without them)
    # The limit the GPUs reported once it was set; None: left alone (or a record written
    # before the power-limit axis). Units: W.
    power_limit_w: float | None = None

    @classmethod
    def of(cls, result: PointResult, verdicts: Verdicts | None = None) -> PointRecord:
        """The record of a measured point."""
        return cls(
            result.point.id,
            result.point,
            result.locked_clock_mhz,
            result.repeats,
            summarise(result.repeats),
            verdicts,
            result.power_limit_w,
        )

    @property
    def slo_met(self) -> bool:
        """No SLO shown violated (met, or inconclusive: ``slo`` tells which); an unjudged
        point counts as not violated."""
        return self.verdicts is None or self.verdicts.slo_met

    @property
    def slo(self) -> str | None:
        """met, violated or inconclusive; None: no SLO, or not judged."""
        return None if self.verdicts is None else self.verdicts.slo

    @property
    def regressed(self) -> bool:
        return self.verdicts is not None and self.verdicts.regressed

    @property
    def unforced(self) -> int:
        """Requests, over every repeat, whose output was not of the forced length."""
        return sum(repeat.unforced for repeat in self.repeats)

    def to_json(self) -> JsonObject:
        """The point as the report and the journal store it."""
        verdicts: JsonObject = {}
        if self.verdicts is not None:
            v = self.verdicts
            verdicts = {
                "slo_met": v.slo_met,
                "slo": v.slo,
                "slos": _plain(v.slos),
                "slo_violations": _plain(v.slo_violations),
                "regressions": _plain(v.regressions),
                "regressed": v.regressed,
                "energy": v.energy,
                "goodput": {
                    "good_requests": v.goodput.good_requests,
                    "requests": v.goodput.requests,
                    "share": _plain(v.goodput.share),
                    "requests_per_s": _plain(v.goodput.requests_per_s),
                    "j_per_good_request": _plain(v.goodput.j_per_good_request),
                    "good_requests_per_kj": _plain(v.goodput.good_requests_per_kj),
                },
            }
        return {
            "id": self.id,
            "config": _plain(self.point),
            "locked_clock_mhz": self.locked_clock_mhz,
            "power_limit_w": self.power_limit_w,
            "repeats": _plain(self.repeats),
            "summary": _plain(self.summary),
            "verdicts": verdicts,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PointRecord:
        """A stored point; RecordError names the field that does not fit the schema."""
        if not isinstance(data, Mapping):
            raise RecordError("not a JSON object")
        verdicts = data.get("verdicts")
        return cls(
            id=_structure(data.get("id"), str, "id"),
            point=_structure(data.get("config"), KnobPoint, "config"),
            locked_clock_mhz=_structure(data.get("locked_clock_mhz"), int | None, "locked_clock_mhz"),  # type: ignore[arg-type]
            repeats=_structure(data.get("repeats"), tuple[RepeatResult, ...], "repeats"),
            summary=_structure(data.get("summary"), Summary, "summary"),
            verdicts=_structure(verdicts, Verdicts, "verdicts") if verdicts else None,
            power_limit_w=_structure(data.get("power_limit_w"), float | None, "power_limit_w"),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class Report:
    """A whole sweep: where it ran and every point it measured."""

    device: str  # nvml, rapl, fake, none, or a plugin backend's kind
    machine: JsonObject  # GPUs, driver, CPU, library versions
    git: JsonObject | None
    fingerprint: JsonObject  # what makes two reports' energy comparable
    settings: JsonObject
    points: tuple[PointRecord, ...]
    created: str = ""  # ISO-8601; '' until written

    @classmethod
    def new(
        cls,
        device: str,
        machine: JsonObject,
        git: JsonObject | None,
        fingerprint: JsonObject,
        settings: JsonObject,
        points: Iterable[PointRecord],
    ) -> Report:
        """A report stamped now."""
        created = datetime.now(UTC).isoformat(timespec="seconds")
        return cls(device, machine, git, fingerprint, settings, tuple(points), created)

    def point(self, point_id: str) -> PointRecord | None:
        """The point with this id, if the report has it."""
        return next((p for p in self.points if p.id == point_id), None)

    def to_json(self) -> JsonObject:
        """The report as the schema lays it out."""
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "created": self.created,
            "device": self.device,
            "machine": self.machine,
            "git": self.git,
            "fingerprint": self.fingerprint,
            "settings": self.settings,
            "points": [p.to_json() for p in self.points],
        }

    @classmethod
    def from_json(cls, data: Any) -> Report:
        """A stored report; RecordError says what does not fit the schema, naming the point
        and field where it is one point."""
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise RecordError("not a pytest-greenllm report")
        if data.get("schema_version") not in READABLE_VERSIONS:
            readable = " and ".join(str(v) for v in READABLE_VERSIONS)
            raise RecordError(
                f"schema_version {data.get('schema_version')!r}, this pytest-greenllm reads {readable}"
            )
        for key, kind in (("fingerprint", dict), ("points", list), ("device", str)):
            if not isinstance(data.get(key), kind):
                raise RecordError(f"the report has no {key!r} {kind.__name__}")
        for index, point in enumerate(data["points"]):
            missing = [
                key
                for key, kind in POINT_FIELDS
                if not isinstance(point, dict) or not isinstance(point.get(key), kind)
            ]
            if missing:
                raise RecordError(f"point {index} lacks {', '.join(missing)}")
        ids = [p["id"] for p in data["points"]]
        if len(set(ids)) != len(ids):
            raise RecordError("two points have the same id")
        points = []
        for index, point in enumerate(data["points"]):
            try:
                points.append(PointRecord.from_json(point))
            except RecordError as e:
                raise RecordError(f"point {index}: {e}") from None
        return cls(
            device=data["device"],
            machine=_object(data.get("machine"), "machine"),
            git=data.get("git") if isinstance(data.get("git"), dict) else None,
            fingerprint=dict(data["fingerprint"]),
            settings=_object(data.get("settings"), "settings"),
            points=tuple(points),
            created=str(data.get("created", "")),
        )


def _object(value: Any, name: str) -> JsonObject:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RecordError(f"the report's {name!r} is not an object")
    return dict(value)


def _plain(value: Any) -> Any:
    """Dataclasses, tuples, NaN and infinities into what JSON holds (those become null)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _float(value: Any, _: type) -> float:
    # null is how an undefined figure (NaN, an infinite ratio) was written.
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def _int(value: Any, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a whole number, got {value!r}")
    return value


def _strict(kind: type[T], name: str) -> Callable[[Any, type], T]:
    def structure(value: Any, _: type) -> T:
        if not isinstance(value, kind):
            raise ValueError(f"expected {name}, got {value!r}")
        return value

    return structure


_converter = cattrs.Converter(forbid_extra_keys=False)
_converter.register_structure_hook(float, _float)
# cattrs would turn 1 into '1' and '1' into 1: a report with the wrong types is refused.
_converter.register_structure_hook(str, _strict(str, "a string"))
_converter.register_structure_hook(bool, _strict(bool, "true or false"))
_converter.register_structure_hook(int, _int)


def _structure(value: Any, kind: type[T], name: str) -> T:
    try:
        return _converter.structure(value, kind)
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as e:
        detail = (
            "; ".join(cattrs.transform_error(e, path=name))
            if isinstance(e, cattrs.BaseValidationError)
            else f"{e} @ {name}"
        )
        raise RecordError(detail) from None
