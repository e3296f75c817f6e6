"""The knob matrix: every combination of TP, batch, power limit, clock, workload and load,
minus the invalid ones.

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
from typing import Any, Literal, TypeAlias, TypeVar

from pytest_greenllm.arrivals import CLOSED_LOOP, TRACE, Load
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
    """One point of the sweep: the model and one value of every axis of ``AXES``."""

    model: str
    tp: int
    batch: int
    workload: Workload
    freq_mhz: int | None  # locked SM clock; None leaves the clocks alone. Units: MHz.
    # Last, with a default: reports written before the axis existed have no such key.
    power_limit_w: int | None = None  # GPU power limit; None leaves it alone. Units: W.
    load: Load = CLOSED_LOOP  # how the requests arrive

    @property
    def engine(self) -> EngineConfig:
        return EngineConfig(self.model, self.tp, self.batch)

    @property
    def freq_label(self) -> str:
        return freq_label(self.freq_mhz)

    def value(self, axis: Axis) -> object:
        """This point's value on ``axis``."""
        return getattr(self, axis.field)

    @property
    def id(self) -> str:
        """The test id, e.g. ``L-poisson2rps-tp2-b16-1410MHz-pl300W``: each axis's fragment, in
        ``ID_ORDER``; an axis at a value that adds nothing (the power limit left alone, the
        closed loop) is left out, so that the ids of sweeps without it stay as they were."""
        fragments = (axis.fragment(self.value(axis)) for axis in ID_ORDER)
        return "-".join(fragment for fragment in fragments if fragment)


def freq_label(mhz: int | None) -> str:
    """'1410MHz', or 'default' where the clocks are left alone."""
    return "default" if mhz is None else f"{mhz}MHz"


def power_limit_label(watts: int | None) -> str:
    """'300W', or 'default' where the power limit is left alone."""
    return "default" if watts is None else f"{watts}W"


def power_limit_fragment(watts: int | None) -> str:
    """'pl300W', or nothing where the power limit is left alone."""
    return "" if watts is None else f"pl{watts}W"


@dataclass(frozen=True)
class Axis:
    """One knob of the matrix. Adding an axis is a row here (and its place in ``ID_ORDER``),
    a ``KnobPoint`` field of the same name (in ``EngineConfig`` too if it rebuilds the
    engine), its values in ``expand``, its option in options.py with a ``Settings`` field
    and parser in config.py, and, where it acts on hardware, its device action (as the
    clock's is ``Sweep.lock_clocks``)."""

    field: str  # the KnobPoint field, and the key under a report point's "config"
    option: str  # its options.OPTIONS entry, which names its flag and ini key
    settings: str  # the Settings field holding the values asked for (config.parse_<...>)
    header: str  # its column in `greenllm knobs` and in `greenllm export --format csv`
    fragment: Callable[[Any], str]  # the value's part of a point id; '' adds none
    rebuilds_engine: bool  # a new value needs a new engine (else it acts on device or load)
    label: Callable[[Any], object] = lambda value: value  # the value as tables show it


# In sweep order: a new engine costs far more than a clock change, and a clock change may
# wait for the GPU to cool, so engine axes are outermost and the workload and its load
# innermost. The power limit caps the clock, so each limit's clocks run together.
AXES: tuple[Axis, ...] = (
    Axis("tp", "tp", "tps", "tp", lambda tp: f"tp{tp}", True),
    Axis("batch", "batch", "batches", "batch", lambda batch: f"b{batch}", True),
    Axis(
        "power_limit_w",
        "power-limits",
        "power_limits_w",
        "power limit",
        power_limit_fragment,
        False,
        power_limit_label,
    ),
    Axis("freq_mhz", "freqs", "freqs", "clock", freq_label, False, freq_label),
    Axis("workload", "workloads", "workloads", "workload", lambda w: w.name, False, lambda w: w.name),
    Axis("load", "rates", "loads", "load", lambda load: load.fragment, False, lambda load: load.label),
)
AXES_BY_FIELD = {axis.field: axis for axis in AXES}
ID_ORDER = tuple(AXES_BY_FIELD[f] for f in ("workload", "load", "tp", "batch", "freq_mhz", "power_limit_w"))


@dataclass(frozen=True)
class FreqAxis:
    """The clocks to sweep after snapping, and what was changed on the way."""

    freqs: tuple[int | None, ...]
    notes: tuple[str, ...]
    unsupported: dict[int, str]  # requested clock -> why no point can use it


@dataclass(frozen=True)
class PowerLimitAxis:
    """The power limits to sweep, and what was changed on the way."""

    limits_w: tuple[int | None, ...]  # Units: W.
    notes: tuple[str, ...]
    unsupported: dict[int, str]  # requested limit -> why no point can use it


@dataclass(frozen=True)
class Matrix:
    """The expanded sweep: the points to run, the points removed and why."""

    points: tuple[KnobPoint, ...]
    removed: tuple[tuple[KnobPoint, str], ...]
    notes: tuple[str, ...]
    capabilities: Capabilities
    endpoint: str | None = None  # a running server measured: no engine is built
    planned: tuple[str, ...] | None = None  # ids of the whole sweep, where a shard runs part

    @property
    def sweep_ids(self) -> tuple[str, ...]:
        """The ids of the whole sweep: more than these points where a shard runs part."""
        return self.planned if self.planned is not None else tuple(p.id for p in self.points)

    @property
    def engine_configs(self) -> tuple[EngineConfig, ...]:
        """Distinct engine configurations, in run order: one engine build each."""
        return tuple(dict.fromkeys(p.engine for p in self.points))

    def header_lines(self) -> list[str]:
        """What the session header and ``greenllm knobs`` say about the matrix."""
        engines = (
            count_of(len(self.engine_configs), "engine build")
            if self.endpoint is None
            else f"no engine build (endpoint {self.endpoint})"
        )
        lines = [
            f"greenllm: {count_of(len(self.points), 'point')}, {engines}, "
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


def resolve_power_limits(requested: Sequence[int | None], caps: Capabilities) -> PowerLimitAxis:
    """The requested power limits, those outside the range of the GPUs marked; collapsed to
    'default' where the device cannot set a power limit."""
    if caps.power_limit_range_mw is None:
        note = (
            f"device={caps.kind} cannot set power limits: the power-limit axis is 'default' "
            "(use an NVML device to sweep power limits)"
        )
        asked = any(watts is not None for watts in requested)
        return PowerLimitAxis((None,), (note,) if asked else (), {})
    low_mw, high_mw = caps.power_limit_range_mw
    unsupported = {
        watts: (
            f"{watts} W is outside the {low_mw / 1000:g}-{high_mw / 1000:g} W power limits the "
            f"{caps.accelerator} accepts"
        )
        for watts in requested
        if watts is not None and not low_mw <= watts * 1000 <= high_mw
    }
    return PowerLimitAxis(tuple(requested), (), unsupported)


def point_problems(point: KnobPoint, caps: Capabilities, model: ModelInfo) -> list[str]:
    """Why ``point`` cannot run on this device and model; empty when it can."""
    problems = []
    if point.tp > caps.parallel_units:
        problems.append(f"tp{point.tp} needs {point.tp} {caps.unit_name}, {caps.parallel_units} visible")
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
    power_limits_w: Sequence[int | None],
    caps: Capabilities,
    loads: Sequence[Load] = (CLOSED_LOOP,),
    trace_time_scale: float = 1.0,
    extra_problems: Callable[[KnobPoint], Iterable[str]] = lambda point: (),
) -> Matrix:
    """The cartesian product of the knobs, grouped by engine, invalid points set aside. A
    trace workload replays its own arrivals (at ``trace_time_scale``) whatever ``loads``."""
    clocks = resolve_freqs(freqs, caps)
    limits = resolve_power_limits(power_limits_w, caps)
    notes = clocks.notes + limits.notes
    if len(loads) > 1 and any(w.replay for w in workloads):
        notes += (
            "the trace workload replays its own arrivals: one point per configuration, whatever the rates",
        )
    points: dict[KnobPoint, None] = {}
    removed: dict[tuple[KnobPoint, str], None] = {}
    values: dict[str, Sequence[Any]] = {
        "tp": tps,
        "batch": batches,
        "power_limit_w": limits.limits_w,
        "freq_mhz": clocks.freqs,
        "workload": workloads,
        "load": loads,
    }
    for combination in itertools.product(*(values[a.field] for a in AXES)):
        fields: dict[str, Any] = dict(zip((a.field for a in AXES), combination))
        if fields["workload"].replay:
            fields["load"] = Load(TRACE, time_scale=trace_time_scale)
        point = KnobPoint(model.name, **fields)
        problems = point_problems(point, caps, model)
        if point.freq_mhz in clocks.unsupported:
            problems.append(clocks.unsupported[point.freq_mhz])
        if point.power_limit_w in limits.unsupported:
            problems.append(limits.unsupported[point.power_limit_w])
        problems.extend(extra_problems(point))
        # dicts, not lists: the trace's points repeat once per load.
        if problems:
            removed[point, "; ".join(problems)] = None
        else:
            points[point] = None
    return Matrix(tuple(points), tuple(removed), notes, caps)


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
