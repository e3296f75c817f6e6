"""The JSON report and the journal: schema round-trip, load errors, atomic writes, torn
journals, fingerprints and the per-point summary."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from pytest_greenllm.knobs import KnobPoint
from pytest_greenllm.metrics import RunMetrics, Stat, SteadyState
from pytest_greenllm.record import (
    SCHEMA_VERSION,
    EnergyFigures,
    JsonObject,
    PointRecord,
    PointResult,
    RepeatResult,
    Report,
    Verdicts,
    best_per_objective,
    summarise,
)
from pytest_greenllm.report import (
    ENERGY_FIELDS,
    Journal,
    ReportError,
    fingerprint_differences,
    load_report,
    write_atomic,
    write_report,
)
from pytest_greenllm.verdicts import Goodput, Regression, Violation
from pytest_greenllm.workloads import Workload

DATA = Path(__file__).parent / "data" / "report-v1.json"
NAN = float("nan")
FINGERPRINT: dict[str, Any] = {
    "device": "fake",
    "gpu_model": "NVIDIA H100 80GB HBM3",
    "gpu_count": 1,
    "gpu_uuids": ["GPU-0"],
    "power_limit_w": 700.0,
    "driver": "580.95.05",
    "vllm": "0.32.0",
    "torch": "2.13.0",
    "model": "tiny",
    "meter_method": "counter",
}


def run(itl_p99: float, requests: int = 3) -> RunMetrics:
    # Every output is one token long, so TPOT is undefined: its Stat is all NaN and each
    # request's TPOT is None, as run_metrics makes them.
    return RunMetrics(
        requests=requests,
        prompt_tokens=32 * requests,
        output_tokens=requests,
        duration_s=0.5,
        ttft_ms=Stat(100.0, 90.0, 140.0, 150.0),
        tpot_ms=Stat(NAN, NAN, NAN, NAN),
        itl_ms=Stat(itl_p99 / 2, itl_p99 / 2, itl_p99 / 1.5, itl_p99),
        e2el_ms=Stat(200.0, 190.0, 240.0, 250.0),
        output_throughput=6.0,
        total_throughput=198.0,
        request_throughput=6.0,
        steady=SteadyState(0.1, 0.4, 2),
        request_ttft_ms=tuple(100.0 + i for i in range(requests)),
        request_tpot_ms=(None,) * requests,
        request_e2el_ms=tuple(200.0 + i for i in range(requests)),
    )


def energy(j_per_token: float, watts: float) -> EnergyFigures:
    return EnergyFigures(
        method="counter",
        energy_j=3 * j_per_token,
        j_per_output_token=j_per_token,
        j_per_request=j_per_token,
        avg_power_w=watts,
        peak_power_w=None,
        steady_j_per_token=None,
        energy_above_idle_j=None,
        per_device_j=(("gpu0", 3 * j_per_token),),
        imbalance=None,
        sm_clock_mhz=(("gpu0", 1410.0),),
        clock_strayed=False,
        short_window=False,
        warnings=(),
    )


def result(*repeats: RepeatResult, batch: int = 4) -> PointResult:
    point = KnobPoint("tiny", 1, batch, Workload("32x8", 32, 8), 1410)
    return PointResult(point, 1410, repeats)


def report(points: Iterable[PointRecord]) -> Report:
    machine: dict[str, Any] = {"gpus": [], "driver": "580.95.05", "cpu": "x86_64"}
    return Report.new("fake", machine, None, FINGERPRINT, {"seed": 0, "repeats": 2}, points)


def report_json(points: list[JsonObject]) -> JsonObject:
    """A report as stored, with ``points`` as given (possibly malformed)."""
    return {**report([]).to_json(), "points": points}


def point_named(point_id: str, itl_p99: float = 20.0, watts: float = 100.0) -> PointRecord:
    """A whole measured point, renamed: what the journal stores."""
    measured = PointRecord.of(result(RepeatResult(run(itl_p99), energy(0.5, watts))))
    return dataclasses.replace(measured, id=point_id)


def as_json(points: dict[str, PointRecord]) -> dict[str, JsonObject]:
    # Compared as stored: a record holds NaN (TPOT of one-token outputs), and NaN != NaN.
    return {point_id: p.to_json() for point_id, p in points.items()}


def test_report_round_trips_through_write_atomic_and_load_report(tmp_path: Path) -> None:
    point = result(RepeatResult(run(20.0), energy(0.5, 100.0)), RepeatResult(run(40.0), None))
    violation = Violation("tbt_p99", 40.0, 30.0, "ms")
    verdicts = Verdicts((violation,), (), Goodput(2, 3, 4.0, 0.75))
    record = PointRecord.of(point, verdicts)
    original = report([record])
    path = tmp_path / "sub" / "report.json"
    write_report(path, original)
    assert load_report(path).to_json() == original.to_json()
    assert record.id == "32x8-tp1-b4-1410MHz"
    assert record.to_json()["config"]["workload"] == {
        "name": "32x8",
        "input_tokens": 32,
        "output_tokens": 8,
        "replay": False,
    }
    assert record.to_json()["verdicts"]["slo_violations"] == [
        {"metric": "tbt_p99", "measured": 40.0, "limit": 30.0, "unit": "ms"}
    ]
    # JSON has no NaN: an undefined statistic must be written as null, not as NaN.
    stored = json.loads(path.read_text())["points"][0]
    assert stored["repeats"][0]["metrics"]["tpot_ms"] == dict.fromkeys(("mean", "p50", "p90", "p99"))
    assert stored["repeats"][1]["energy"] is None
    assert stored["summary"]["tpot_p99_ms"] is None


def test_write_atomic_refuses_nan_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    write_atomic(path, report([]).to_json())
    write_report(path, report([]))
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    with pytest.raises(ValueError):
        write_atomic(path, {"bad": NAN})
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    assert load_report(path).points == ()


def _write(path: Path, data: Any) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


FULL_POINT: JsonObject = point_named("a").to_json()


def _without(key: str) -> JsonObject:
    data = report([]).to_json()
    del data[key]
    return data


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read (No such file or directory)"),
        ('{"schema": ', "not JSON"),
        ("[1, 2]", "not a pytest-greenllm report"),
        ({"schema": "something else", "schema_version": 1}, "not a pytest-greenllm report"),
        (
            {**report([]).to_json(), "schema_version": 3},
            "schema_version 3, this pytest-greenllm reads 1 and 2",
        ),
        (_without("fingerprint"), "the report has no 'fingerprint'"),
        (_without("points"), "the report has no 'points'"),
        (_without("device"), "the report has no 'device'"),
        (report_json([FULL_POINT, FULL_POINT]), "two points have the same id"),
        (report_json([FULL_POINT, {**FULL_POINT, "id": None}]), "point 1 lacks id"),
        (report_json([{**FULL_POINT, "summary": None}]), "point 0 lacks summary"),
    ],
    ids=[
        "missing",
        "not-json",
        "a-list",
        "other-schema",
        "version-3",
        "no-fingerprint",
        "no-points",
        "no-device",
        "duplicate-id",
        "no-id",
        "no-summary",
    ],
)
def test_load_report_errors_name_the_file(tmp_path: Path, content: Any, message: str) -> None:
    path = tmp_path / "report.json"
    if content is not None:
        _write(path, content)
    with pytest.raises(ReportError) as info:
        load_report(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_load_report_refuses_points_that_are_not_a_list(tmp_path: Path) -> None:
    path = _write(tmp_path / "report.json", {**report([]).to_json(), "points": 3})
    with pytest.raises(ReportError, match="points"):
        load_report(path)


def test_checked_in_example_of_schema_1_loads() -> None:
    data = load_report(DATA)
    assert data.device == "fake"
    assert [p.id for p in data.points] == ["32x8-tp1-b4-1410MHz", "64x8-tp1-b4-1410MHz"]
    # The plugin wrote each summary with summarise: a changed summarise would be caught here,
    # in every figure version 1 has.
    stored = json.loads(DATA.read_text())
    for point, stored_point in zip(data.points, stored["points"]):
        computed = dataclasses.replace(point, summary=summarise(point.repeats)).to_json()["summary"]
        assert {key: computed[key] for key in stored_point["summary"]} == stored_point["summary"]


def within(old: Any, new: Any, path: str = "") -> list[str]:
    """Where ``old`` is not contained in ``new``: every key of old with the same value."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            f for key, value in old.items() for f in within(value, new.get(key, KeyError), f"{path}.{key}")
        ]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [f for i, (a, b) in enumerate(zip(old, new)) for f in within(a, b, f"{path}[{i}]")]
    return [] if old == new else [path]


def test_checked_in_example_of_schema_1_reads_back_with_nothing_lost() -> None:
    stored = json.loads(DATA.read_text())
    assert stored["schema_version"] == 1
    written = Report.from_json(stored).to_json()
    assert written["schema_version"] == SCHEMA_VERSION == 2
    # Version 2 only adds fields: every value of version 1 is kept where it was.
    assert within({**stored, "schema_version": 2}, written) == []
    # What version 2 added reads as unknown, not as zero.
    point = written["points"][0]
    assert point["summary"]["j_per_prefill_token"] is None
    assert point["repeats"][0]["energy"]["phases"] is None and point["repeats"][0]["passes"] == 1
    # And the version-2 form reads back to itself.
    assert Report.from_json(json.loads(json.dumps(written))).to_json() == written


def test_point_record_round_trips_through_json() -> None:
    # NaN-free, so that the records compare equal: TPOT defined, every figure finite.
    metrics = dataclasses.replace(
        run(20.0), tpot_ms=Stat(30.0, 28.0, 35.0, 40.0), request_tpot_ms=(30.0, 31.0, 32.0)
    )
    # One as reports before the sequential gate wrote it, one as it writes now.
    before = Regression("j_per_output_token", 0.5, 0.6, 0.2, 0.1, 0.3, 0.05, True, "bootstrap")
    now = Regression(
        "avg_power_w", 300.0, 310.0, 0.03, -0.01, 0.12, 0.05, False, "t (repeats)", "inconclusive", (5, 3)
    )
    verdicts = Verdicts((Violation("tbt_p99", 40.0, 30.0, "ms"),), (before, now), Goodput(2, 3, 4.0, 0.75))
    original = PointRecord.of(
        result(RepeatResult(metrics, energy(0.5, 100.0)), RepeatResult(metrics, None)), verdicts
    )
    assert PointRecord.from_json(original.to_json()) == original
    assert PointRecord.from_json(json.loads(json.dumps(original.to_json()))) == original
    assert (before.outcome, now.outcome, verdicts.energy) == ("regressed", "inconclusive", "regressed")
    assert original.to_json()["verdicts"]["energy"] == "regressed"
    unjudged = dataclasses.replace(original, verdicts=None)
    assert unjudged.to_json()["verdicts"] == {}
    assert PointRecord.from_json(unjudged.to_json()) == unjudged


def test_a_reader_never_sees_a_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    repeats = tuple(RepeatResult(run(float(i), requests=300), energy(0.5, 100.0)) for i in range(1, 4))
    big = report(
        [dataclasses.replace(PointRecord.of(result(*repeats, batch=b)), id=f"p{b}") for b in range(10)]
    ).to_json()
    small = report([]).to_json()
    write_atomic(path, small)
    done = threading.Event()
    failures: list[BaseException] = []

    def writer() -> None:
        try:
            for n in range(4):
                write_atomic(path, big if n % 2 == 0 else small)
        except BaseException as e:  # reported by the main thread
            failures.append(e)
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    while not done.is_set() or reads == 0:
        assert len(load_report(path).points) in (0, 10)
        reads += 1
    thread.join()
    assert not failures
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def _journal(path: Path, fingerprint: dict[str, Any] | None = None) -> Journal:
    return Journal(path, FINGERPRINT if fingerprint is None else fingerprint)


def test_journal_appends_and_reads_back_with_a_header(tmp_path: Path) -> None:
    path = tmp_path / "j" / "report.json.journal.jsonl"
    journal = _journal(path)
    assert journal.read() == {}
    a1, b, a3 = point_named("a", 10.0), point_named("b", 20.0), point_named("a", 30.0)
    journal.append(a1)
    journal.append(b)
    journal.append(a3)  # a re-measured point: the later one wins
    header = json.loads(path.read_text().splitlines()[0])
    assert header == {
        "schema": "pytest-greenllm journal",
        "schema_version": SCHEMA_VERSION,
        "fingerprint": FINGERPRINT,
    }
    points = _journal(path).read()
    assert as_json(points) == {"a": a3.to_json(), "b": b.to_json()}
    assert points["a"].summary.itl_p99_ms == 30.0 and points["b"].summary.itl_p99_ms == 20.0


@pytest.mark.parametrize("cut", [1, 9, -1])
def test_torn_last_line_is_dropped_and_the_file_repaired(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "journal.jsonl"
    journal = _journal(path)
    a, c = point_named("a"), point_named("c", 30.0)
    journal.append(a)
    whole = json.dumps(point_named("b").to_json())
    with path.open("a") as handle:  # killed after writing part of the line
        handle.write(whole[:cut])
    assert as_json(_journal(path).read()) == {"a": a.to_json()}
    assert path.read_text().endswith(json.dumps(a.to_json()) + "\n")
    journal.append(c)
    assert as_json(_journal(path).read()) == {"a": a.to_json(), "c": c.to_json()}


def test_record_killed_before_its_newline_does_not_swallow_the_next(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = _journal(path)
    journal.append(point_named("a"))
    with path.open("a") as handle:
        handle.write(json.dumps(point_named("b").to_json()))
    journal.read()  # the resumed session reads, then appends
    journal.append(point_named("c"))
    assert "c" in _journal(path).read()


def test_torn_line_in_the_middle_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = _journal(path)
    journal.append(point_named("a"))
    with path.open("a") as handle:
        handle.write('{"id": "b", "su\n')
    journal.append(point_named("c"))
    with pytest.raises(ReportError) as info:
        journal.read()
    assert str(info.value) == f"{path}:3: not JSON"


def test_line_that_is_no_point_record_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = _journal(path)
    journal.append(point_named("a"))
    with path.open("a") as handle:
        handle.write(json.dumps({**point_named("b").to_json(), "config": {}}) + "\n")
    journal.append(point_named("c"))
    with pytest.raises(ReportError) as info:
        journal.read()
    assert str(info.value).startswith(f"{path}:3: not a point record (")
    assert "config" in str(info.value)


@pytest.mark.parametrize("field", ENERGY_FIELDS)
def test_journal_of_another_setup_is_refused(tmp_path: Path, field: str) -> None:
    path = tmp_path / "journal.jsonl"
    a = point_named("a")
    _journal(path).append(a)
    other = {**FINGERPRINT, field: "changed"}
    with pytest.raises(ReportError, match=f"another setup \\({field}: "):
        _journal(path, other).read()
    # Fields that do not change energy do not block a resume.
    resumed = _journal(path, {**FINGERPRINT, "driver": "999", "meter_method": None}).read()
    assert as_json(resumed) == {"a": a.to_json()}


@pytest.mark.parametrize(
    "content",
    [
        '{"id": "a"}\n',
        "not json\n",
        '{"schema": "pytest-greenllm journal", "schema_version": 3}\n{"id": "a"}\n',
        json.dumps(report([]).to_json(), indent=1),  # the report beside it, passed by mistake
    ],
    ids=["no-header", "text", "version-3", "report"],
)
def test_non_journal_file_is_refused(tmp_path: Path, content: str) -> None:
    path = _write(tmp_path / "journal.jsonl", content)
    with pytest.raises(ReportError) as info:
        _journal(path).read()
    assert str(info.value) == f"{path}: not a pytest-greenllm journal of schema {SCHEMA_VERSION}"


def test_journal_whose_header_is_not_an_object_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "journal.jsonl", '123\n{"id": "a"}\n')
    with pytest.raises(ReportError):
        _journal(path).read()


def test_empty_journal_resumes_as_empty(tmp_path: Path) -> None:
    path = _write(tmp_path / "journal.jsonl", "")
    assert _journal(path).read() == {}


def test_fingerprint_differences_split_energy_fields_from_others() -> None:
    head = {
        **FINGERPRINT,
        "device": "nvml",
        "gpu_model": "NVIDIA A100",
        "gpu_count": 2,
        "power_limit_w": 400.0,
        "model": "big",
        "driver": "999",
        "gpu_uuids": ["GPU-1"],
    }
    del head["meter_method"]
    energy, other = fingerprint_differences(FINGERPRINT, head)
    assert energy == [
        "device: 'fake' -> 'nvml'",
        "gpu_count: 1 -> 2",
        "gpu_model: 'NVIDIA H100 80GB HBM3' -> 'NVIDIA A100'",
        "model: 'tiny' -> 'big'",
        "power_limit_w: 700.0 -> 400.0",
    ]
    assert other == [
        "driver: '580.95.05' -> '999'",
        "gpu_uuids: ['GPU-0'] -> ['GPU-1']",
        "meter_method: 'counter' -> None",
    ]
    assert fingerprint_differences(FINGERPRINT, dict(FINGERPRINT)) == ([], [])
    # 700 W read as an int on one machine and a float on another is the same limit.
    assert fingerprint_differences(FINGERPRINT, {**FINGERPRINT, "power_limit_w": 700}) == ([], [])


def test_summarise_means_over_repeats_and_keeps_the_repeat_lists() -> None:
    # The third repeat was not metered: energy means are over the first two only.
    repeats = (RepeatResult(run(20.0), energy(0.5, 100.0)), RepeatResult(run(40.0), energy(0.7, 140.0)))
    record = PointRecord.of(result(*repeats, RepeatResult(run(60.0), None)))
    summary = summarise(record.repeats)
    assert summary == record.summary
    assert summary.itl_p99_ms == pytest.approx(40.0)
    assert summary.ttft_p99_ms == 150.0 and summary.output_throughput == 6.0
    assert (summary.j_per_output_token, summary.avg_power_w) == pytest.approx((0.6, 120.0))
    assert summary.j_per_output_token_repeats == (0.5, 0.7)
    assert summary.avg_power_w_repeats == (100.0, 140.0)
    assert summary.tpot_p99_ms is None
    unmetered = PointRecord.of(result(RepeatResult(run(20.0), None))).summary
    assert unmetered.j_per_output_token is None is unmetered.avg_power_w
    assert unmetered.j_per_output_token_repeats == () == unmetered.avg_power_w_repeats


def test_a_fingerprint_without_a_mode_was_measured_offline() -> None:
    # Reports written before serve mode existed measured the in-process engine.
    assert fingerprint_differences(FINGERPRINT, {**FINGERPRINT, "mode": "offline"}) == ([], [])
    energy, _ = fingerprint_differences(FINGERPRINT, {**FINGERPRINT, "mode": "serve"})
    assert energy == ["mode: 'offline' -> 'serve'"]


def test_a_point_with_failed_requests_is_never_the_best() -> None:
    frugal, plain = point_named("frugal", watts=50.0), point_named("plain", watts=100.0)
    # The frugal point's energy is that of the requests that completed: two of them failed.
    broken = dataclasses.replace(
        frugal.repeats[0], metrics=dataclasses.replace(frugal.repeats[0].metrics, failed=2)
    )
    failing = dataclasses.replace(frugal, repeats=(broken,))
    assert {o.mark: p.id for o, p in best_per_objective([frugal, plain]) if p}["P"] == "frugal"
    assert {o.mark: p.id for o, p in best_per_objective([failing, plain]) if p}["P"] == "plain"
    assert all(p is None for _, p in best_per_objective([failing]))
