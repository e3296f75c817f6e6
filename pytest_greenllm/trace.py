"""Load an Azure LLM inference trace and derive S/M/L buckets from its lengths.

The public Azure traces (2023 code and conversation, 2024 week-long) share one CSV layout:
``TIMESTAMP,ContextTokens,GeneratedTokens``. Prompts are not published, so a trace gives
what latency and energy depend on: when each request arrived and how long it was.
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


class TraceError(ValueError):
    """A trace file that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class TraceRequest:
    """One request of a trace."""

    arrival_s: float  # seconds after the trace's first request
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Trace:
    """A loaded trace, requests in arrival order."""

    path: str
    requests: tuple[TraceRequest, ...]

    @property
    def duration_s(self) -> float:
        """Time from the first arrival to the last. Units: s."""
        return self.requests[-1].arrival_s

    def replay(self, count: int) -> tuple[TraceRequest, ...]:
        """The first ``count`` requests, with their recorded arrivals and lengths."""
        if count < 0:
            raise ValueError(f"a request count cannot be negative, got {count}")
        if count > len(self.requests):
            raise TraceError(f"{self.path}: {count} requests asked for, the trace holds {len(self.requests)}")
        return self.requests[:count]


@dataclass(frozen=True)
class Bucket:
    """A length bucket: the representative request and the range it stands for."""

    name: str
    input_tokens: int
    output_tokens: int
    input_range: tuple[int, int]  # inclusive bounds of the tercile, tokens
    output_range: tuple[int, int]


def _positive_int(text: str, column: str, where: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise TraceError(f"{where}: {column}={text!r} is not a whole number") from None
    if value < 1:
        raise TraceError(f"{where}: {column}={value} must be at least 1 token")
    return value


def load_trace(path: str | Path) -> Trace:
    """Read a trace CSV; arrivals become offsets from the first request."""
    path = Path(path)
    try:
        # utf-8-sig: spreadsheet exports start with a byte-order mark.
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as e:
        raise TraceError(f"{path}: cannot read the trace ({e.strerror})") from e
    stamps: list[datetime] = []
    lengths: list[tuple[int, int]] = []
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != COLUMNS:
            raise TraceError(f"{path}:1: expected the header {','.join(COLUMNS)}, found {header!r}")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if not row:
                continue
            if len(row) != len(COLUMNS):
                raise TraceError(f"{where}: expected 3 columns, found {len(row)}")
            try:
                stamp = datetime.fromisoformat(row[0].strip())
            except ValueError:
                raise TraceError(f"{where}: TIMESTAMP={row[0]!r} is not a timestamp") from None
            if stamps and (stamp.tzinfo is None) != (stamps[-1].tzinfo is None):
                raise TraceError(f"{where}: TIMESTAMP mixes times with and without a time zone")
            if stamps and stamp < stamps[-1]:
                raise TraceError(f"{where}: TIMESTAMP goes back in time; sort the trace")
            stamps.append(stamp)
            lengths.append(
                (
                    _positive_int(row[1], "ContextTokens", where),
                    _positive_int(row[2], "GeneratedTokens", where),
                )
            )
    if not stamps:
        raise TraceError(f"{path}: the trace holds no requests")
    start = stamps[0]
    requests = tuple(
        TraceRequest((stamp - start).total_seconds(), inp, out) for stamp, (inp, out) in zip(stamps, lengths)
    )
    return Trace(str(path), requests)


def _terciles(values: list[int]) -> list[tuple[int, tuple[int, int]]]:
    """(median, (low, high)) of each third of ``values``, split at the 1/3 and 2/3 quantiles."""
    ordered = sorted(values)
    if len(ordered) < 3:
        return [(ordered[len(ordered) // 2], (ordered[0], ordered[-1]))] * 3
    cut1, cut2 = statistics.quantiles(ordered, n=3, method="inclusive")
    parts = (
        [v for v in ordered if v <= cut1],
        [v for v in ordered if cut1 < v <= cut2],
        [v for v in ordered if v > cut2],
    )
    out = []
    for part in parts:
        # Heavy ties (many requests of one length) can empty a third; it then borrows the
        # nearest cut so that S <= M <= L still holds.
        part = part or [round(cut2)]
        out.append((round(statistics.median(part)), (part[0], part[-1])))
    return out


def derive_buckets(trace: Trace) -> tuple[Bucket, Bucket, Bucket]:
    """S, M and L from the terciles of input and of output lengths, each its median."""
    inputs = _terciles([r.input_tokens for r in trace.requests])
    outputs = _terciles([r.output_tokens for r in trace.requests])
    small, medium, large = (
        Bucket(name, inp[0], out[0], inp[1], out[1]) for name, inp, out in zip("SML", inputs, outputs)
    )
    return small, medium, large
