"""The knob matrix: every combination of clock, TP, batch and workload, minus the invalid ones.

Points are ordered so that all points sharing an engine configuration (model, TP, batch
limit) are adjacent: building a vLLM engine costs far more than changing the clock or the
workload, so those vary inside a group.
"""

from __future__ import annotations

import enum
import itertools
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias, TypeVar

from pytest_greenllm.devices.base import Capabilities, nearest_clock
from pytest_greenllm.model_info import ModelInfo
from pytest_greenllm.workloads import Workload

T = TypeVar("T")


class _Clocks(enum.Enum):
    ALL = "all"


ALL_CLOCKS: Literal[_Clocks.ALL] = _Clocks.ALL
# The requested clocks: MHz values and None (leave the clocks alone), or every supported one.
FreqRequest: TypeAlias = tuple[int | None, ...] | Literal[_Clocks.ALL]


def count_of(n: int, noun: str) -> str:
    """'1 point', '2 points'."""
    return f"{n} {noun}{'s' * (n != 1)}"


@dataclass(frozen=True)
class EngineConfig:
    """What a vLLM engine is built for; points sharing one reuse the engine."""

    model: str
    tp: int
    max_num_seqs: int


@dataclass(frozen=True)
class KnobPoint:
    """One point of the sweep."""

    model: str
    tp: int
    batch: int
    workload: Workload
    freq_mhz: int | None  # locked SM clock; None leaves the clocks alone. Units: MHz.

    @property
    def engine(self) -> EngineConfig:
        return EngineConfig(self.model, self.tp, self.batch)

    @property
    def freq_label(self) -> str:
        return "default" if self.freq_mhz is None else f"{self.freq_mhz}MHz"

    @property
    def id(self) -> str:
        """The test id, e.g. ``L-tp2-b16-1410MHz``."""
        return f"{self.workload.name}-tp{self.tp}-b{self.batch}-{self.freq_label}"


@dataclass(frozen=True)
class FreqAxis:
    """The clocks to sweep after snapping, and what was changed on the way."""

    freqs: tuple[int | None, ...]
    notes: tuple[str, ...]
    unsupported: dict[int, str]  # requested clock -> why no point can use it


@dataclass(frozen=True)
class Matrix:
    """The expanded sweep: the points to run, the points removed and why."""

    points: tuple[KnobPoint, ...]
    removed: tuple[tuple[KnobPoint, str], ...]
    notes: tuple[str, ...]
    capabilities: Capabilities

    @property
    def engine_configs(self) -> tuple[EngineConfig, ...]:
        """Distinct engine configurations, in run order: one engine build each."""
        return tuple(dict.fromkeys(p.engine for p in self.points))

    def header_lines(self) -> list[str]:
        """What the session header and ``greenllm knobs`` say about the matrix."""
        lines = [
            f"greenllm: {count_of(len(self.points), 'point')}, "
            f"{count_of(len(self.engine_configs), 'engine build')}, "
            f"device={self.capabilities.kind} ({self.capabilities.accelerator})"
        ]
        lines.extend(f"greenllm: {note}" for note in self.notes)
        for reason, count in Counter(reason for _, reason in self.removed).items():
            lines.append(f"greenllm: removed {count_of(count, 'point')}: {reason}")
        return lines


def resolve_freqs(requested: FreqRequest, caps: Capabilities) -> FreqAxis:
    """Turn the requested clocks into lockable ones: snap, drop duplicates, or collapse."""
    if not caps.can_lock_clocks:
        if requested is ALL_CLOCKS or any(f is not None for f in requested):
            note = (
                f"device={caps.kind} cannot lock clocks: the frequency axis is 'default' "
                "(use an NVML device to sweep clocks)"
            )
            return FreqAxis((None,), (note,), {})
        return FreqAxis((None,), (), {})
    if requested is ALL_CLOCKS:
        return FreqAxis(caps.clocks_mhz, (), {})
    lowest, highest = caps.clocks_mhz[0], caps.clocks_mhz[-1]
    freqs: list[int | None] = []
    notes: list[str] = []
    unsupported: dict[int, str] = {}
    for freq in requested:
        if freq is None:
            freqs.append(None)
            continue
        if not lowest <= freq <= highest:
            unsupported[freq] = (
                f"{freq} MHz is outside the {lowest}-{highest} MHz the {caps.accelerator} supports"
            )
            freqs.append(freq)
            continue
        snapped = nearest_clock(caps.clocks_mhz, freq)
        if snapped != freq:
            notes.append(f"{freq} MHz snapped to {snapped} MHz, the nearest supported clock")
        freqs.append(snapped)
    return FreqAxis(tuple(dict.fromkeys(freqs)), tuple(notes), unsupported)


def point_problems(point: KnobPoint, caps: Capabilities, model: ModelInfo) -> list[str]:
    """Why ``point`` cannot run on this device and model; empty when it can."""
    problems = []
    if point.tp > caps.parallel_units:
        problems.append(
            f"tp{point.tp} needs {point.tp} {caps.unit_name}, {caps.parallel_units} visible"
        )
    heads, kv_heads = model.attention_heads, model.kv_heads
    if heads is not None and heads % point.tp:
        problems.append(f"tp{point.tp} does not divide the model's {heads} attention heads")
    elif kv_heads is not None and kv_heads % point.tp and point.tp % kv_heads:
        problems.append(f"tp{point.tp} and the model's {kv_heads} KV heads do not divide")
    limit = model.max_context_tokens
    if limit is not None and point.workload.context_tokens > limit:
        problems.append(
            f"workload {point.workload.name} needs {point.workload.context_tokens} tokens of "
            f"context, the model allows {limit}"
        )
    return problems


def expand(
    *,
    model: ModelInfo,
    tps: Sequence[int],
    batches: Sequence[int],
    workloads: Sequence[Workload],
    freqs: FreqRequest,
    caps: Capabilities,
    extra_problems: Callable[[KnobPoint], Iterable[str]] = lambda point: (),
) -> Matrix:
    """The cartesian product of the knobs, grouped by engine, invalid points set aside."""
    axis = resolve_freqs(freqs, caps)
    points: list[KnobPoint] = []
    removed: list[tuple[KnobPoint, str]] = []
    # Engine knobs outermost, the clock next (each change may wait for the GPU to cool),
    # the workload innermost.
    for tp, batch, freq, workload in itertools.product(tps, batches, axis.freqs, workloads):
        point = KnobPoint(model.name, tp, batch, workload, freq)
        problems = point_problems(point, caps, model)
        if freq in axis.unsupported:
            problems.append(axis.unsupported[freq])
        problems.extend(extra_problems(point))
        if problems:
            removed.append((point, "; ".join(problems)))
        else:
            points.append(point)
    return Matrix(tuple(points), tuple(removed), axis.notes, caps)


def group_by_engine(items: Sequence[T], key: Callable[[T], Hashable | None]) -> list[T]:
    """Reorder ``items`` so equal keys are adjacent, each group where its first member was.

    Items whose key is None keep their own place; order inside a group is kept.
    """
    first_seen: dict[Hashable, int] = {}
    ranks = []
    for index, item in enumerate(items):
        k = key(item)
        ranks.append(index if k is None else first_seen.setdefault(k, index))
    order = sorted(range(len(items)), key=lambda i: ranks[i])
    return [items[i] for i in order]
