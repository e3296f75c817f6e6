"""The load axis: arrival offsets per load kind, Load validation and naming, point ids, the
expanded matrix with rate sweeps and trace replay, and the load in reports and CSV."""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_greenllm.arrivals import (
    CLOSED,
    CLOSED_LOOP,
    CONSTANT,
    POISSON,
    TRACE,
    Load,
    arrival_offsets,
    poisson_arrivals,
)
from pytest_greenllm.devices.base import Capabilities
from pytest_greenllm.devices.fake_nvml import GPU_NAME as FAKE_GPU_NAME
from pytest_greenllm.devices.fake_nvml import GRAPHICS_CLOCKS_MHZ, POWER_LIMIT_RANGE_MW
from pytest_greenllm.export import CSV_COLUMNS, csv_text
from pytest_greenllm.knobs import KnobPoint, Matrix, expand
from pytest_greenllm.metrics import RunMetrics, Stat, SteadyState
from pytest_greenllm.model_info import ModelInfo
from pytest_greenllm.record import (
    EnergyFigures,
    PointRecord,
    PointResult,
    RecordError,
    RepeatResult,
    Report,
)
from pytest_greenllm.report import load_report
from pytest_greenllm.trace import Trace, TraceRequest
from pytest_greenllm.workloads import DEFAULT_BUCKETS, Workload, replay_workload

S, M = (Workload(name, *DEFAULT_BUCKETS[name]) for name in "SM")
TRACE_WORKLOAD = replay_workload(
    Trace(
        "trace.csv",
        (TraceRequest(0.0, 100, 20), TraceRequest(0.5, 300, 40), TraceRequest(2.0, 200, 60)),
    )
)
REPORT_V1 = Path(__file__).with_name("data") / "report-v1.json"

rates = st.floats(min_value=1e-3, max_value=1e4, allow_nan=False, allow_infinity=False)
time_scales = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False)
seeds = st.integers(0, 2**32)
counts = st.integers(0, 200)
rate_loads = st.builds(Load, st.sampled_from((POISSON, CONSTANT)), rates)
untimed_loads = st.one_of(st.just(CLOSED_LOOP), rate_loads)
# Recorded arrivals as a loaded trace has them: ascending offsets from the first, at 0.
trace_offsets = st.lists(
    st.floats(min_value=0, max_value=1e5, allow_nan=False, allow_infinity=False), max_size=100
).map(lambda xs: [0.0, *sorted(xs)])


def is_non_decreasing(xs: Sequence[float]) -> bool:
    return all(a <= b for a, b in zip(xs, xs[1:]))


# --- arrival offsets -------------------------------------------------------------------------


@given(untimed_loads, counts, seeds)
def test_one_offset_per_request_non_decreasing_from_zero(load: Load, count: int, seed: int) -> None:
    # Outside a trace the recorded arrivals are all 0: only their number matters.
    offsets = arrival_offsets(load, [0.0] * count, seed)
    assert len(offsets) == count
    assert is_non_decreasing(offsets)
    assert all(math.isfinite(t) and t >= 0 for t in offsets)
    if count:
        assert offsets[0] == 0.0


@given(untimed_loads, trace_offsets, seeds)
def test_loads_other_than_trace_ignore_the_recorded_arrivals(
    load: Load, recorded: list[float], seed: int
) -> None:
    zeros = [0.0] * len(recorded)
    assert arrival_offsets(load, recorded, seed) == arrival_offsets(load, zeros, seed)


@given(counts, seeds)
def test_closed_loop_sends_every_request_at_once(count: int, seed: int) -> None:
    assert arrival_offsets(CLOSED_LOOP, [0.0] * count, seed) == [0.0] * count


@given(rates, st.integers(2, 200), seeds)
def test_constant_gaps_are_one_over_the_rate(rate: float, count: int, seed: int) -> None:
    offsets = arrival_offsets(Load(CONSTANT, rate), [0.0] * count, seed)
    assert offsets[0] == 0.0
    # Request i is sent at i/rate: no drift accumulates over the run.
    for i, t in enumerate(offsets):
        assert t == pytest.approx(i / rate, rel=1e-12)
    gaps = [b - a for a, b in zip(offsets, offsets[1:])]
    assert gaps == pytest.approx([1 / rate] * (count - 1), rel=1e-9)


def test_constant_offsets_at_a_round_rate_are_exact() -> None:
    assert arrival_offsets(Load(CONSTANT, 4), [0.0] * 5, 0) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert arrival_offsets(Load(CONSTANT, 0.5), [0.0] * 3, 0) == [0.0, 2.0, 4.0]


@given(rates, st.integers(2, 100), seeds)
def test_poisson_is_seeded(rate: float, count: int, seed: int) -> None:
    load = Load(POISSON, rate)
    first = arrival_offsets(load, [0.0] * count, seed)
    assert arrival_offsets(load, [0.0] * count, seed) == first
    assert poisson_arrivals(count, rate, seed) == first
    assert arrival_offsets(load, [0.0] * count, seed + 1) != first
    # A longer run starts with the same arrivals: the count does not reshuffle them.
    assert arrival_offsets(load, [0.0] * (count + 5), seed)[:count] == first


@given(rates, seeds)
def test_poisson_gaps_are_not_constant(rate: float, seed: int) -> None:
    offsets = arrival_offsets(Load(POISSON, rate), [0.0] * 3, seed)
    assert offsets[1] != pytest.approx(offsets[2] - offsets[1], rel=1e-9)


@settings(max_examples=10, deadline=None)
@given(rates, seeds)
def test_poisson_mean_gap_is_one_over_the_rate(rate: float, seed: int) -> None:
    # 20000 exponential gaps: the mean's standard error is 0.7% of it, so 5% is 7 sigma.
    offsets = poisson_arrivals(20_001, rate, seed)
    gaps = [b - a for a, b in zip(offsets, offsets[1:])]
    assert statistics.fmean(gaps) == pytest.approx(1 / rate, rel=0.05)
    # And exponential, not constant: the gaps' spread is about their mean.
    assert statistics.stdev(gaps) == pytest.approx(1 / rate, rel=0.1)


@given(trace_offsets, time_scales, seeds)
def test_trace_scales_the_recorded_arrivals(recorded: list[float], scale: float, seed: int) -> None:
    offsets = arrival_offsets(Load(TRACE, time_scale=scale), recorded, seed)
    assert len(offsets) == len(recorded)
    assert offsets == pytest.approx([t * scale for t in recorded], rel=1e-12)
    assert is_non_decreasing(offsets)
    assert arrival_offsets(Load(TRACE), recorded, seed) == recorded


def test_trace_at_half_the_time_scale_runs_twice_as_fast() -> None:
    assert arrival_offsets(Load(TRACE, time_scale=0.5), [0.0, 1.0, 3.0], 0) == [0.0, 0.5, 1.5]
    assert arrival_offsets(Load(TRACE, time_scale=2), [0.0, 1.0, 3.0], 0) == [0.0, 2.0, 6.0]


# --- Load ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": POISSON},
        {"kind": CONSTANT},
        {"kind": CLOSED, "rate_per_s": 2.0},
        {"kind": TRACE, "rate_per_s": 2.0},
        {"kind": POISSON, "rate_per_s": 0.0},
        {"kind": POISSON, "rate_per_s": -1.0},
        {"kind": CONSTANT, "rate_per_s": math.nan},
        {"kind": CONSTANT, "rate_per_s": math.inf},
        {"kind": TRACE, "time_scale": 0.0},
        {"kind": TRACE, "time_scale": -0.5},
        {"kind": TRACE, "time_scale": math.nan},
        {"kind": TRACE, "time_scale": math.inf},
        {"kind": CLOSED, "time_scale": 0.0},
        {"kind": "burst", "rate_per_s": 2.0},
    ],
    ids=repr,
)
def test_invalid_loads_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Load(**kwargs)


@given(st.sampled_from((POISSON, CONSTANT)), rates, time_scales)
def test_valid_loads_are_accepted(kind: str, rate: float, scale: float) -> None:
    assert Load(kind, rate).rate_per_s == rate
    assert Load(TRACE, time_scale=scale).time_scale == scale


@pytest.mark.parametrize(
    ("load", "fragment", "label"),
    [
        (CLOSED_LOOP, "", "closed"),
        (Load(POISSON, 2), "poisson2rps", "poisson 2 req/s"),
        (Load(POISSON, 2.0), "poisson2rps", "poisson 2 req/s"),
        (Load(CONSTANT, 0.5), "const0.5rps", "constant 0.5 req/s"),
        (Load(TRACE), "", "trace x1"),
        (Load(TRACE, time_scale=1.0), "", "trace x1"),
        (Load(TRACE, time_scale=0.5), "ts0.5", "trace x0.5"),
        (Load(TRACE, time_scale=2), "ts2", "trace x2"),
    ],
    ids=lambda v: repr(v) if isinstance(v, Load) else None,
)
def test_fragment_and_label(load: Load, fragment: str, label: str) -> None:
    assert load.fragment == fragment
    assert load.label == label


def test_closed_loop_is_the_default_load() -> None:
    assert Load() == CLOSED_LOOP
    assert CLOSED_LOOP.kind == CLOSED and CLOSED_LOOP.rate_per_s is None


# --- point ids -------------------------------------------------------------------------------


def test_closed_loop_point_keeps_its_id() -> None:
    assert KnobPoint("m", 1, 8, S, 1410).id == "S-tp1-b8-1410MHz"
    assert KnobPoint("m", 1, 8, S, 1410, None, CLOSED_LOOP).id == "S-tp1-b8-1410MHz"
    assert KnobPoint("m", 2, 16, M, None, 300).id == "M-tp2-b16-default-pl300W"


def test_load_fragment_follows_the_workload() -> None:
    assert KnobPoint("m", 1, 8, S, 1410, load=Load(POISSON, 2)).id == "S-poisson2rps-tp1-b8-1410MHz"
    assert (
        KnobPoint("m", 2, 16, M, 1410, 300, Load(CONSTANT, 0.5)).id == "M-const0.5rps-tp2-b16-1410MHz-pl300W"
    )
    assert KnobPoint("m", 1, 8, TRACE_WORKLOAD, None, load=Load(TRACE)).id == "trace-tp1-b8-default"
    assert (
        KnobPoint("m", 1, 8, TRACE_WORKLOAD, None, load=Load(TRACE, time_scale=0.5)).id
        == "trace-ts0.5-tp1-b8-default"
    )


def test_a_load_does_not_change_the_engine() -> None:
    closed = KnobPoint("m", 1, 8, S, 1410)
    poisson = KnobPoint("m", 1, 8, S, 1410, load=Load(POISSON, 2))
    assert closed.engine == poisson.engine
    assert closed != poisson and closed.id != poisson.id


# --- expand ----------------------------------------------------------------------------------


def model(ctx: int | None = None) -> ModelInfo:
    return ModelInfo("m", "m", False, None, None, ctx, None)


def caps() -> Capabilities:
    clocks = tuple(sorted(GRAPHICS_CLOCKS_MHZ))
    return Capabilities("fake", FAKE_GPU_NAME, 8, "GPUs", clocks, POWER_LIMIT_RANGE_MW)


RATE_SWEEP = (Load(POISSON, 1), Load(POISSON, 2), Load(CONSTANT, 0.5))
TRACE_NOTE = "replays its own arrivals"


def matrix(
    *,
    workloads: Sequence[Workload] = (S,),
    loads: Sequence[Load] | None = None,
    trace_time_scale: float | None = None,
    batches: Sequence[int] = (8,),
    freqs: tuple[int | None, ...] = (1410,),
    info: ModelInfo | None = None,
) -> Matrix:
    extra: dict[str, Any] = {}
    if loads is not None:
        extra["loads"] = loads
    if trace_time_scale is not None:
        extra["trace_time_scale"] = trace_time_scale
    return expand(
        model=info or model(),
        tps=(1,),
        batches=batches,
        workloads=workloads,
        freqs=freqs,
        power_limits_w=(None,),
        caps=caps(),
        **extra,
    )


def has_trace_note(m: Matrix) -> bool:
    return any(TRACE_NOTE in line for line in m.header_lines())


def test_without_loads_every_point_is_closed_loop() -> None:
    m = matrix(workloads=(S, M))
    assert [p.id for p in m.points] == ["S-tp1-b8-1410MHz", "M-tp1-b8-1410MHz"]
    assert {p.load for p in m.points} == {CLOSED_LOOP}


def test_rate_sweep_is_one_point_per_rate_sharing_one_engine() -> None:
    m = matrix(workloads=(S, M), loads=RATE_SWEEP, freqs=(1410, 1005))
    assert len(m.points) == 2 * 2 * len(RATE_SWEEP)
    assert len(m.engine_configs) == 1 and m.removed == ()
    assert len({p.id for p in m.points}) == len(m.points)
    for freq in (1410, 1005):
        for workload in (S, M):
            loads = [p.load for p in m.points if p.freq_mhz == freq and p.workload == workload]
            assert loads == list(RATE_SWEEP)
    assert "S-poisson1rps-tp1-b8-1410MHz" in {p.id for p in m.points}
    assert "M-const0.5rps-tp1-b8-1005MHz" in {p.id for p in m.points}
    assert not has_trace_note(m)


def test_rate_sweep_over_two_batches_keeps_engines_grouped() -> None:
    m = matrix(loads=RATE_SWEEP, batches=(4, 8))
    assert len(m.points) == 2 * len(RATE_SWEEP)
    assert [p.batch for p in m.points] == [4] * 3 + [8] * 3
    assert len(m.engine_configs) == 2


def test_trace_workload_gets_one_trace_point_per_configuration() -> None:
    m = matrix(workloads=(S, TRACE_WORKLOAD), loads=RATE_SWEEP, trace_time_scale=0.5, freqs=(1410, 1005))
    traced = [p for p in m.points if p.workload == TRACE_WORKLOAD]
    assert [p.freq_mhz for p in traced] == [1410, 1005]
    assert {p.load for p in traced} == {Load(TRACE, time_scale=0.5)}
    assert [p.id for p in traced] == ["trace-ts0.5-tp1-b8-1410MHz", "trace-ts0.5-tp1-b8-1005MHz"]
    # The other workload still sweeps every rate.
    assert len([p for p in m.points if p.workload == S]) == 2 * len(RATE_SWEEP)
    assert len(m.points) == 2 * len(RATE_SWEEP) + 2
    assert len({p.id for p in m.points}) == len(m.points)
    assert has_trace_note(m)


def test_trace_point_at_its_own_pace_has_the_plain_trace_id() -> None:
    m = matrix(workloads=(TRACE_WORKLOAD,))
    assert [(p.id, p.load) for p in m.points] == [("trace-tp1-b8-1410MHz", Load(TRACE))]
    assert not has_trace_note(m)


@pytest.mark.parametrize("load", [CLOSED_LOOP, Load(POISSON, 2)], ids=lambda load: load.label)
def test_one_load_with_a_trace_has_no_note_but_still_replays(load: Load) -> None:
    m = matrix(workloads=(S, TRACE_WORKLOAD), loads=(load,), trace_time_scale=2)
    assert [p.load for p in m.points] == [load, Load(TRACE, time_scale=2)]
    assert not has_trace_note(m)


def test_trace_note_is_in_the_header_once() -> None:
    m = matrix(workloads=(TRACE_WORKLOAD,), loads=RATE_SWEEP)
    assert len(m.points) == 1
    assert sum(TRACE_NOTE in line for line in m.header_lines()) == 1
    assert m.header_lines()[0].startswith("greenllm: 1 point, 1 engine build")


def test_removed_trace_point_is_listed_once() -> None:
    # The trace needs 360 tokens of context; the model allows 200, S needs 192.
    m = matrix(workloads=(S, TRACE_WORKLOAD), loads=RATE_SWEEP, info=model(ctx=200))
    assert len(m.points) == len(RATE_SWEEP)
    assert [point.id for point, _ in m.removed] == ["trace-tp1-b8-1410MHz"]
    assert "removed 1 point: workload trace needs 360 tokens" in "\n".join(m.header_lines())


# --- report and CSV --------------------------------------------------------------------------


def _run() -> RunMetrics:
    # Every figure finite, so that records compare equal after a round trip.
    return RunMetrics(
        requests=3,
        prompt_tokens=96,
        output_tokens=24,
        duration_s=0.5,
        ttft_ms=Stat(100.0, 90.0, 140.0, 150.0),
        tpot_ms=Stat(30.0, 28.0, 35.0, 40.0),
        itl_ms=Stat(10.0, 10.0, 13.0, 20.0),
        e2el_ms=Stat(200.0, 190.0, 240.0, 250.0),
        output_throughput=48.0,
        total_throughput=240.0,
        request_throughput=6.0,
        steady=SteadyState(0.1, 0.4, 2),
        request_ttft_ms=(100.0, 101.0, 102.0),
        request_tpot_ms=(30.0, 31.0, 32.0),
        request_e2el_ms=(200.0, 201.0, 202.0),
    )


def _energy() -> EnergyFigures:
    return EnergyFigures(
        method="counter",
        energy_j=12.0,
        j_per_output_token=0.5,
        j_per_request=4.0,
        avg_power_w=100.0,
        peak_power_w=None,
        steady_j_per_token=None,
        energy_above_idle_j=None,
        per_device_j=(("gpu0", 12.0),),
        imbalance=None,
        sm_clock_mhz=(("gpu0", 1410.0),),
        clock_strayed=False,
        short_window=False,
        warnings=(),
    )


def record(load: Load = CLOSED_LOOP) -> PointRecord:
    point = KnobPoint("tiny", 1, 8, S, 1410, load=load)
    return PointRecord.of(PointResult(point, 1410, (RepeatResult(_run(), _energy()),)))


def test_poisson_point_record_round_trips_with_its_load() -> None:
    original = record(Load(POISSON, 2))
    assert original.id == "S-poisson2rps-tp1-b8-1410MHz"
    stored = original.to_json()
    assert stored["config"]["load"] == {"kind": "poisson", "rate_per_s": 2, "time_scale": 1.0}
    back = PointRecord.from_json(json.loads(json.dumps(stored)))
    assert back == original
    assert back.point.load == Load(POISSON, 2) and back.point.id == original.id


@pytest.mark.parametrize(
    "load", [Load(CONSTANT, 0.5), Load(TRACE, time_scale=0.25), CLOSED_LOOP], ids=lambda load: load.label
)
def test_every_load_kind_round_trips(load: Load) -> None:
    original = record(load)
    assert PointRecord.from_json(json.loads(json.dumps(original.to_json()))).point.load == load


def test_point_stored_before_the_load_axis_reads_back_closed_loop() -> None:
    stored = json.loads(json.dumps(record().to_json()))
    del stored["config"]["load"]
    back = PointRecord.from_json(stored)
    assert back.point.load == CLOSED_LOOP
    assert back.point.id == back.id == "S-tp1-b8-1410MHz"


def test_checked_in_report_without_loads_reads_back_closed_loop() -> None:
    stored = json.loads(REPORT_V1.read_text())
    assert all("load" not in p["config"] for p in stored["points"])
    points = load_report(REPORT_V1).points
    assert points and all(p.point.load == CLOSED_LOOP for p in points)
    assert [p.point.id for p in points] == [p.id for p in points]


@pytest.mark.parametrize(
    "load",
    [
        {"kind": "poisson", "rate_per_s": None, "time_scale": 1.0},
        {"kind": "closed", "rate_per_s": 2.0, "time_scale": 1.0},
        {"kind": "trace", "rate_per_s": None, "time_scale": 0},
        {"kind": "burst", "rate_per_s": None, "time_scale": 1.0},
        {"kind": "poisson", "rate_per_s": "2", "time_scale": 1.0},
    ],
    ids=repr,
)
def test_stored_invalid_load_is_a_record_error(load: dict[str, Any]) -> None:
    stored = json.loads(json.dumps(record().to_json()))
    stored["config"]["load"] = load
    with pytest.raises(RecordError, match="config"):
        PointRecord.from_json(stored)


def test_csv_has_the_load_columns() -> None:
    columns = list(CSV_COLUMNS)
    at = columns.index("load")
    assert columns[at : at + 3] == ["load", "rate_per_s", "time_scale"]
    report = Report.new(
        "fake",
        {},
        None,
        {"device": "fake"},
        {},
        (record(), record(Load(POISSON, 2)), record(Load(CONSTANT, 0.5))),
    )
    rows = list(csv.DictReader(csv_text(report).splitlines()))
    assert tuple(rows[0]) == CSV_COLUMNS
    by_id = {row["point"]: row for row in rows}
    poisson = by_id["S-poisson2rps-tp1-b8-1410MHz"]
    assert poisson["load"] == "poisson"
    assert (float(poisson["rate_per_s"]), float(poisson["time_scale"])) == (2.0, 1.0)
    constant = by_id["S-const0.5rps-tp1-b8-1410MHz"]
    assert (constant["load"], float(constant["rate_per_s"])) == ("constant", 0.5)
    closed = by_id["S-tp1-b8-1410MHz"]
    assert (closed["load"], closed["rate_per_s"], float(closed["time_scale"])) == ("closed", "", 1.0)
    # The other columns did not shift: the workload and clock still read back.
    assert (poisson["workload"], poisson["freq_mhz"], poisson["batch"]) == ("S", "1410", "8")
