"""The Azure trace loader and S/M/L buckets, on the real 2023 trace and on small files."""

from __future__ import annotations

import itertools
import statistics
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_greenllm.trace import (
    Bucket,
    Trace,
    TraceError,
    TraceRequest,
    derive_buckets,
    load_trace,
)

REAL_TRACE = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "azure-llm-inference-2023"
    / "AzureLLMInferenceTrace_conv.csv"
)
HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


@pytest.fixture(scope="module")
def real_trace() -> Trace:
    if not REAL_TRACE.is_file():
        pytest.skip(f"the Azure 2023 conversation trace is not at {REAL_TRACE}")
    return load_trace(REAL_TRACE)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trace.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_real_trace_loads_in_arrival_order(real_trace: Trace) -> None:
    requests = real_trace.requests
    assert len(requests) == 19366
    assert requests[0].arrival_s == 0.0
    assert all(a.arrival_s <= b.arrival_s for a, b in itertools.pairwise(requests))
    assert 3400 < real_trace.duration_s < 3700
    assert all(r.input_tokens >= 1 and r.output_tokens >= 1 for r in requests)


def ranges(buckets: tuple[Bucket, Bucket, Bucket], side: str) -> list[tuple[int, int]]:
    return [b.input_range if side == "input" else b.output_range for b in buckets]


def representatives(buckets: tuple[Bucket, Bucket, Bucket], side: str) -> list[int]:
    return [b.input_tokens if side == "input" else b.output_tokens for b in buckets]


@pytest.mark.parametrize("side", ["input", "output"])
def test_real_trace_buckets_are_its_terciles(real_trace: Trace, side: str) -> None:
    buckets = derive_buckets(real_trace)
    assert [b.name for b in buckets] == ["S", "M", "L"]
    values = [r.input_tokens if side == "input" else r.output_tokens for r in real_trace.requests]
    (s_low, s_high), (m_low, m_high), (l_low, l_high) = ranges(buckets, side)
    reps = representatives(buckets, side)
    assert reps == sorted(reps)
    for rep, (low, high) in zip(reps, ranges(buckets, side)):
        assert low <= rep <= high
    assert s_low == min(values) and l_high == max(values)
    assert s_high < m_low <= m_high < l_low
    cut1, cut2 = statistics.quantiles(values, n=3, method="inclusive")
    # Both cuts are lengths that occur in this trace, so each range ends exactly on its cut.
    assert (s_high, m_high) == (cut1, cut2)


def test_real_trace_input_terciles_hold_a_third_each(real_trace: Trace) -> None:
    buckets = derive_buckets(real_trace)
    total = len(real_trace.requests)
    for low, high in ranges(buckets, "input"):
        inside = sum(low <= r.input_tokens <= high for r in real_trace.requests)
        assert abs(inside / total - 1 / 3) < 0.02


@given(st.lists(st.integers(1, 40), min_size=1, max_size=60))
def test_buckets_stay_ordered_under_ties_and_tiny_traces(lengths: list[int]) -> None:
    # Few distinct lengths leave a tercile empty; S <= M <= L must survive that.
    trace = Trace("t.csv", tuple(TraceRequest(float(i), n, n) for i, n in enumerate(lengths)))
    buckets = derive_buckets(trace)
    reps = representatives(buckets, "input")
    assert reps == sorted(reps)
    for rep, (low, high) in zip(reps, ranges(buckets, "input")):
        assert min(lengths) <= low <= rep <= high <= max(lengths)


def test_2024_timestamps_with_a_timezone_parse(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEADER
        + "2024-05-10 00:00:00.009930+00:00,4808,10\n"
        + "2024-05-10 00:00:01.509930+00:00,3180,8\n"
        + "2024-05-10 01:00:01.509930+01:00,110,27\n",  # the same instant as the line above
    )
    trace = load_trace(path)
    assert trace.requests == (
        TraceRequest(0.0, 4808, 10),
        TraceRequest(1.5, 3180, 8),
        TraceRequest(1.5, 110, 27),
    )
    assert trace.path == str(path)


GOOD = "2023-11-16 18:15:46.6805900,374,44\n"
LATER = "2023-11-16 18:15:47"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("time,in,out\n" + GOOD, 1, "expected the header TIMESTAMP,ContextTokens,GeneratedTokens"),
        (HEADER + GOOD + LATER + ",374\n", 3, "expected 3 columns, found 2"),
        (HEADER + GOOD + "\n" + LATER + ",5\n", 4, "expected 3 columns, found 2"),
        (HEADER + LATER + ",lots,44\n", 2, "ContextTokens='lots' is not a whole number"),
        (HEADER + LATER + ",37.5,44\n", 2, "ContextTokens='37.5' is not a whole number"),
        (HEADER + GOOD + LATER + ",374,0\n", 3, "GeneratedTokens=0 must be at least 1 token"),
        (HEADER + LATER + ",-3,44\n", 2, "ContextTokens=-3 must be at least 1 token"),
        (HEADER + "16/11/2023 18:15,1,1\n", 2, "TIMESTAMP='16/11/2023 18:15' is not a timestamp"),
        (
            HEADER + GOOD + "2023-11-16 18:15:48,1,1\n2023-11-16 18:15:47,1,1\n",
            4,
            "TIMESTAMP goes back in time",
        ),
        ("", 1, "expected the header"),
    ],
    ids=[
        "header",
        "columns",
        "blank-line",
        "word",
        "fraction",
        "zero",
        "negative",
        "timestamp",
        "backwards",
        "no-header",
    ],
)
def test_bad_rows_name_the_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(TraceError) as error:
        load_trace(path)
    assert str(error.value).startswith(f"{path}:{line}: ")
    assert message in str(error.value)


def test_header_only_trace_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER)
    with pytest.raises(TraceError) as error:
        load_trace(path)
    assert str(error.value) == f"{path}: the trace holds no requests"


def test_missing_trace_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.csv"
    with pytest.raises(TraceError) as error:
        load_trace(path)
    assert str(error.value) == f"{path}: cannot read the trace (No such file or directory)"


def test_mixed_timezone_awareness_is_a_trace_error(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "2024-05-10 00:00:00+00:00,5,5\n2024-05-10 00:00:01,5,5\n")
    with pytest.raises(TraceError, match=":3: TIMESTAMP mixes times with and without a time zone"):
        load_trace(path)


def test_byte_order_mark_and_blank_lines_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_text(HEADER + GOOD + "\n" + LATER + ",5,6\n\n", encoding="utf-8-sig")
    assert [r.input_tokens for r in load_trace(path).requests] == [374, 5]


THREE = HEADER + "2023-11-16 18:15:46.68,374,44\n2023-11-16 18:15:47.18,5,6\n2023-11-16 18:15:50.68,17,1\n"


@pytest.mark.parametrize("count", [0, 1, 2, 3])
def test_replay_returns_the_first_requests(tmp_path: Path, count: int) -> None:
    trace = load_trace(write(tmp_path, THREE))
    assert trace.requests == (TraceRequest(0.0, 374, 44), TraceRequest(0.5, 5, 6), TraceRequest(4.0, 17, 1))
    assert trace.replay(count) == trace.requests[:count]


def test_replay_of_more_than_the_trace_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, THREE)
    with pytest.raises(TraceError) as error:
        load_trace(path).replay(4)
    assert str(error.value) == f"{path}: 4 requests asked for, the trace holds 3"
