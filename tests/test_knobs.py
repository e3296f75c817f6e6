"""The knob matrix: its size, why points are removed, clock snapping, power limits and engine
grouping."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_greenllm.devices.base import Capabilities
from pytest_greenllm.devices.fake_nvml import GPU_NAME as FAKE_GPU_NAME
from pytest_greenllm.devices.fake_nvml import GRAPHICS_CLOCKS_MHZ, POWER_LIMIT_RANGE_MW
from pytest_greenllm.knobs import (
    ALL_CLOCKS,
    FreqRequest,
    KnobPoint,
    Matrix,
    expand,
    group_by_engine,
    resolve_freqs,
    resolve_power_limits,
)
from pytest_greenllm.model_info import ModelInfo
from pytest_greenllm.workloads import DEFAULT_BUCKETS, Workload, custom_workload

FAKE_CLOCKS_MHZ = tuple(sorted(GRAPHICS_CLOCKS_MHZ))
S, M, L = (Workload(name, *DEFAULT_BUCKETS[name]) for name in "SML")


def model(heads: int | None = None, kv: int | None = None, ctx: int | None = None) -> ModelInfo:
    return ModelInfo("m", "m", False, heads, kv, ctx, None)


def caps(
    units: int = 8,
    clocks: tuple[int, ...] = FAKE_CLOCKS_MHZ,
    power_range_mw: tuple[int, int] | None = POWER_LIMIT_RANGE_MW,
) -> Capabilities:
    return Capabilities("fake", FAKE_GPU_NAME, units, "GPUs", clocks, power_range_mw)


def matrix(
    *,
    tps: Sequence[int] = (1,),
    batches: Sequence[int] = (1,),
    workloads: Sequence[Workload] = (S,),
    freqs: FreqRequest = (None,),
    power_limits: Sequence[int | None] = (None,),
    info: ModelInfo | None = None,
    device: Capabilities | None = None,
) -> Matrix:
    return expand(
        model=info or model(),
        tps=tps,
        batches=batches,
        workloads=workloads,
        freqs=freqs,
        power_limits_w=power_limits,
        caps=device or caps(),
    )


def removed_reasons(m: Matrix) -> dict[str, str]:
    return {point.id: reason for point, reason in m.removed}


def is_grouped(keys: Sequence[Hashable]) -> bool:
    """Whether equal keys form one run each: a key never comes back after another one."""
    runs = [k for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k]
    return len(runs) == len(set(runs))


clocks_st = st.lists(st.integers(100, 3000), max_size=10, unique=True).map(lambda c: tuple(sorted(c)))
freqs_st: st.SearchStrategy[FreqRequest] = st.one_of(
    st.just(ALL_CLOCKS), st.lists(st.none() | st.integers(1, 4000), max_size=5).map(tuple)
)
power_limits_st = st.lists(st.none() | st.integers(1, 1000), min_size=1, max_size=4, unique=True)
power_range_st = st.none() | st.tuples(st.integers(1, 500), st.integers(500, 1000)).map(
    lambda watts: (watts[0] * 1000, watts[1] * 1000)
)
optional_int = st.none() | st.integers(1, 64)
# The settings layer drops duplicate knob values, so expand() only ever sees unique ones.
tps_st = st.lists(st.integers(1, 16), min_size=1, max_size=4, unique=True)
batches_st = st.lists(st.integers(1, 256), min_size=1, max_size=3, unique=True)
workloads_st = st.lists(
    st.builds(custom_workload, st.integers(1, 8192), st.integers(1, 2048)),
    min_size=1,
    max_size=3,
    unique=True,
)


@given(
    clocks_st,
    freqs_st,
    power_limits_st,
    power_range_st,
    tps_st,
    batches_st,
    workloads_st,
    st.integers(1, 8),
    st.builds(model, optional_int, optional_int, st.none() | st.integers(1, 10_000)),
    st.integers(1, 4),
)
def test_every_combination_is_kept_or_removed_exactly_once(
    clocks: tuple[int, ...],
    freqs: FreqRequest,
    power_limits: list[int | None],
    power_range_mw: tuple[int, int] | None,
    tps: list[int],
    batches: list[int],
    workloads: list[Workload],
    units: int,
    info: ModelInfo,
    reject_modulus: int,
) -> None:
    device = caps(units, clocks, power_range_mw)

    def reject(point: KnobPoint) -> list[str]:
        return [f"batch {point.batch} rejected"] if point.batch % reject_modulus == 0 else []

    m = expand(
        model=info,
        tps=tps,
        batches=batches,
        workloads=workloads,
        freqs=freqs,
        power_limits_w=power_limits,
        caps=device,
        extra_problems=reject,
    )
    axis = resolve_freqs(freqs, device)
    limits = resolve_power_limits(power_limits, device)
    removed = [point for point, _ in m.removed]
    combinations = len(axis.freqs) * len(limits.limits_w) * len(tps) * len(batches) * len(workloads)
    assert len(m.points) + len(m.removed) == combinations
    assert all(reason for _, reason in m.removed)
    assert len(set(m.points)) == len(m.points)
    assert not set(m.points) & set(removed)
    assert all(point.batch % reject_modulus for point in m.points)
    for point, reason in m.removed:
        assert (f"batch {point.batch} rejected" in reason) == (point.batch % reject_modulus == 0)
    # Building an engine is the slow step: each engine config must be built once, not again later.
    assert is_grouped([point.engine for point in m.points])
    assert len(m.engine_configs) == len({point.engine for point in m.points})


@pytest.mark.parametrize(
    ("build", "point_id", "reason"),
    [
        (
            lambda: matrix(tps=(1, 2, 4), device=caps(units=2)),
            "S-tp4-b1-default",
            "tp4 needs 4 GPUs, 2 visible",
        ),
        (
            lambda: matrix(tps=(4, 8), info=model(heads=12)),
            "S-tp8-b1-default",
            "tp8 does not divide the model's 12 attention heads",
        ),
        (
            lambda: matrix(tps=(2, 4), info=model(heads=24, kv=6)),
            "S-tp4-b1-default",
            "tp4 and the model's 6 KV heads do not divide",
        ),
        (
            lambda: matrix(workloads=(S, L), info=model(ctx=2048)),
            "L-tp1-b1-default",
            "workload L needs 4608 tokens of context, the model allows 2048",
        ),
        (
            lambda: matrix(freqs=(100, 1410)),
            "S-tp1-b1-100MHz",
            f"100 MHz is outside the 210-1980 MHz the {FAKE_GPU_NAME} supports",
        ),
        (
            lambda: matrix(power_limits=(150, 300, None)),
            "S-tp1-b1-default-pl150W",
            f"150 W is outside the 200-700 W power limits the {FAKE_GPU_NAME} accepts",
        ),
        (
            lambda: matrix(power_limits=(700, 701)),
            "S-tp1-b1-default-pl701W",
            f"701 W is outside the 200-700 W power limits the {FAKE_GPU_NAME} accepts",
        ),
    ],
    ids=[
        "tp-over-units",
        "tp-vs-heads",
        "tp-vs-kv-heads",
        "context",
        "clock-out-of-range",
        "power-limit-below-range",
        "power-limit-above-range",
    ],
)
def test_invalid_point_is_removed_with_its_reason(
    build: Callable[[], Matrix], point_id: str, reason: str
) -> None:
    m = build()
    assert removed_reasons(m) == {point_id: reason}
    assert point_id not in {point.id for point in m.points}


def test_tp_that_is_a_multiple_of_the_kv_heads_is_kept() -> None:
    # GQA models replicate KV heads once TP exceeds their count, so tp16 over 8 KV heads is fine.
    m = matrix(tps=(16,), info=model(heads=32, kv=8), device=caps(units=16))
    assert m.removed == () and [p.id for p in m.points] == ["S-tp16-b1-default"]


def test_workload_filling_the_context_exactly_is_kept() -> None:
    fits, too_long = custom_workload(1024, 1024), custom_workload(1024, 1025)
    m = matrix(workloads=(fits, too_long), info=model(ctx=2048))
    assert [p.workload for p in m.points] == [fits]
    assert list(removed_reasons(m)) == ["1024x1025-tp1-b1-default"]


def test_extra_problems_are_joined_to_the_builtin_ones() -> None:
    m = expand(
        model=model(),
        tps=(1, 2),
        batches=(1, 16),
        workloads=(S,),
        freqs=(None,),
        power_limits_w=(None,),
        caps=caps(units=1),
        extra_problems=lambda p: ["no engine for b16", "really"] if p.batch == 16 else [],
    )
    assert removed_reasons(m) == {
        "S-tp1-b16-default": "no engine for b16; really",
        "S-tp2-b1-default": "tp2 needs 2 GPUs, 1 visible",
        "S-tp2-b16-default": "tp2 needs 2 GPUs, 1 visible; no engine for b16; really",
    }


@given(freqs_st)
def test_device_without_clocks_collapses_the_axis_to_default(freqs: FreqRequest) -> None:
    axis = resolve_freqs(freqs, caps(clocks=()))
    assert axis.freqs == (None,) and axis.unsupported == {}
    asked_for_clocks = freqs is ALL_CLOCKS or any(f is not None for f in freqs)
    # A silent collapse would hide that the sweep the user asked for did not happen.
    assert len(axis.notes) == asked_for_clocks
    assert all("cannot lock clocks" in note for note in axis.notes)


@given(
    st.lists(st.integers(100, 3000), min_size=1, max_size=10, unique=True),
    st.lists(st.none() | st.integers(1, 4000), max_size=6),
)
def test_resolved_clocks_are_supported_nearest_and_unique(
    clock_list: list[int], freqs: list[int | None]
) -> None:
    clocks = tuple(sorted(clock_list))
    axis = resolve_freqs(tuple(freqs), caps(clocks=clocks))
    assert len(set(axis.freqs)) == len(axis.freqs)
    out_of_range = {f for f in freqs if f is not None and not clocks[0] <= f <= clocks[-1]}
    assert set(axis.unsupported) == out_of_range
    for f in axis.freqs:
        assert f is None or f in clocks or f in out_of_range
    for f in set(freqs) - out_of_range - {None}:
        assert f is not None
        nearest = min(abs(c - f) for c in clocks)
        assert [r for r in axis.freqs if r in clocks and abs(r - f) == nearest]
    assert (None in axis.freqs) == (None in freqs)


def test_snapping_merges_duplicates_and_says_so() -> None:
    axis = resolve_freqs((1408, None, 1410, 1412, 1980), caps())
    assert axis.freqs == (1410, None, 1980)
    assert axis.notes == (
        "1408 MHz snapped to 1410 MHz, the nearest supported clock",
        "1412 MHz snapped to 1410 MHz, the nearest supported clock",
    )


def test_snapping_tie_goes_to_the_lower_clock() -> None:
    assert resolve_freqs((1010,), caps(clocks=(1000, 1020))).freqs == (1000,)


def test_all_sweeps_every_supported_clock() -> None:
    axis = resolve_freqs(ALL_CLOCKS, caps())
    assert axis.freqs == FAKE_CLOCKS_MHZ and axis.notes == () and axis.unsupported == {}


@given(st.lists(st.none() | st.sampled_from("abcd"), max_size=30))
def test_group_by_engine_makes_groups_contiguous_and_keeps_order(keys: list[str | None]) -> None:
    items = list(enumerate(keys))  # the index makes every item distinct and records its order
    out = group_by_engine(items, key=lambda item: item[1])
    assert sorted(out, key=lambda item: item[0]) == items
    assert is_grouped([k if k is not None else ("none", i) for i, k in out])
    for key in set(keys):
        indices = [i for i, k in out if k == key]
        assert indices == sorted(indices)
    # Each group sits where its first member was, so a run keeps the user's order of first use.
    first = {k: keys.index(k) for k in keys if k is not None}
    places = [i if k is None else first[k] for i, k in out]
    assert places == sorted(places)


def test_group_by_engine_example() -> None:
    items = ["a1", "b1", None, "a2", "c1", "b2"]
    out = group_by_engine(items, key=lambda s: None if s is None else s[0])
    assert out == ["a1", "a2", "b1", "b2", None, "c1"]


@pytest.mark.parametrize(
    ("point", "expected"),
    [
        (KnobPoint("m", 2, 16, L, 1410), "L-tp2-b16-1410MHz"),
        (KnobPoint("m", 1, 1, S, None), "S-tp1-b1-default"),
        (KnobPoint("m", 8, 256, custom_workload(512, 128), 210), "512x128-tp8-b256-210MHz"),
        # The power limit comes last, and only where it is set: ids without it are unchanged.
        (KnobPoint("m", 1, 8, S, 1410, None), "S-tp1-b8-1410MHz"),
        (KnobPoint("m", 1, 8, S, 1410, 300), "S-tp1-b8-1410MHz-pl300W"),
        (KnobPoint("m", 2, 16, L, None, 450), "L-tp2-b16-default-pl450W"),
    ],
)
def test_point_id(point: KnobPoint, expected: str) -> None:
    assert point.id == expected


def test_header_lines_summarise_the_matrix() -> None:
    m = matrix(tps=(1, 2, 4, 16), batches=(16,), workloads=(S, M, L), freqs=(1408, 1980))
    assert len(m.engine_configs) == 3
    assert m.header_lines() == [
        f"greenllm: 18 points, 3 engine builds, device=fake ({FAKE_GPU_NAME})",
        "greenllm: 1408 MHz snapped to 1410 MHz, the nearest supported clock",
        "greenllm: removed 6 points: tp16 needs 16 GPUs, 8 visible",
    ]
    single = matrix(workloads=(S, L), info=model(ctx=2048))
    assert single.header_lines() == [
        f"greenllm: 1 point, 1 engine build, device=fake ({FAKE_GPU_NAME})",
        "greenllm: removed 1 point: workload L needs 4608 tokens of context, the model allows 2048",
    ]


def test_power_limits_sweep_outside_the_clock_and_keep_the_engine_grouping() -> None:
    m = matrix(tps=(1, 2), freqs=(1410, 1980), power_limits=(300, 500), workloads=(S, L))
    assert [p.id for p in m.points][:8] == [
        "S-tp1-b1-1410MHz-pl300W",
        "L-tp1-b1-1410MHz-pl300W",
        "S-tp1-b1-1980MHz-pl300W",
        "L-tp1-b1-1980MHz-pl300W",
        "S-tp1-b1-1410MHz-pl500W",
        "L-tp1-b1-1410MHz-pl500W",
        "S-tp1-b1-1980MHz-pl500W",
        "L-tp1-b1-1980MHz-pl500W",
    ]
    assert len(m.points) == 16 and len(m.engine_configs) == 2
    assert {p.power_limit_w for p in m.points} == {300, 500}


def test_power_limits_at_the_range_edges_are_kept() -> None:
    m = matrix(power_limits=(200, 700, None))
    assert m.removed == ()
    assert [p.id for p in m.points] == [
        "S-tp1-b1-default-pl200W",
        "S-tp1-b1-default-pl700W",
        "S-tp1-b1-default",
    ]


@given(power_limits_st)
def test_device_without_power_limits_collapses_the_axis_to_default(limits: list[int | None]) -> None:
    axis = resolve_power_limits(limits, caps(power_range_mw=None))
    assert axis.limits_w == (None,) and axis.unsupported == {}
    asked = any(watts is not None for watts in limits)
    # A silent collapse would hide that the sweep the user asked for did not happen.
    assert axis.notes == (
        (
            "device=fake cannot set power limits: the power-limit axis is 'default' "
            "(use an NVML device to sweep power limits)",
        )
        if asked
        else ()
    )


def test_a_collapsed_power_limit_axis_is_said_in_the_header() -> None:
    m = matrix(freqs=(1410,), power_limits=(300, 500), device=caps(clocks=(), power_range_mw=None))
    assert [p.id for p in m.points] == ["S-tp1-b1-default"]
    assert m.header_lines()[1:] == [
        "greenllm: device=fake cannot lock clocks: the frequency axis is 'default' "
        "(use an NVML device to sweep clocks)",
        "greenllm: device=fake cannot set power limits: the power-limit axis is 'default' "
        "(use an NVML device to sweep power limits)",
    ]
