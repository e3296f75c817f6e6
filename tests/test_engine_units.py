"""The engine layer without an engine: CPU settings, engine arguments, arrivals, the engine
cache with fake builds and scripted memory readings, and the energy figures of a run."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import pytest_greenllm.engine as engine_module
from pytest_greenllm.arrivals import poisson_arrivals
from pytest_greenllm.driver import EngineFailed, EngineSpec
from pytest_greenllm.engine import (
    EngineCache,
    MemoryCheck,
    cpu_environment,
    cpu_thread_binding,
    engine_kwargs,
)
from pytest_greenllm.knobs import EngineConfig, KnobPoint
from pytest_greenllm.meter import DeviceWindow, WindowResult
from pytest_greenllm.metrics import RequestRecord, run_metrics
from pytest_greenllm.model_info import resolve_model
from pytest_greenllm.record import PointRecord, PointResult, RepeatResult, Verdicts
from pytest_greenllm.runner import energy_figures, result_properties
from pytest_greenllm.slo_verdicts import Samples, judge_percentile
from pytest_greenllm.verdicts import Goodput, Regression, Violation
from pytest_greenllm.workloads import Workload

EMBEDDED = resolve_model("embedded")
HUB = resolve_model("org/some-model")
BIND = "VLLM_CPU_OMP_THREADS_BIND"
KV = "VLLM_CPU_KVCACHE_SPACE"


def spec(tp: int = 1, batch: int = 8, **extra: Any) -> EngineSpec:
    return EngineSpec(EngineConfig("embedded", tp, batch), EMBEDDED, **extra)


@pytest.mark.parametrize(
    ("tp", "cores", "expected"),
    [
        (1, [0, 1], "0,1"),
        (2, [0, 1], "0|1"),
        (2, [0, 1, 2, 3], "0,1|2,3"),
        (3, [4, 5, 6, 7, 8, 9], "4,5|6,7|8,9"),
    ],
)
def test_cpu_thread_binding(tp: int, cores: list[int], expected: str) -> None:
    assert cpu_thread_binding(tp, cores) == expected


@given(st.data())
def test_cpu_thread_binding_gives_each_rank_its_own_cores(data: st.DataObject) -> None:
    cores = data.draw(st.lists(st.integers(0, 255), min_size=1, max_size=32, unique=True))
    tp = data.draw(st.integers(1, len(cores)))
    groups = [group.split(",") for group in cpu_thread_binding(tp, cores).split("|")]
    assert len(groups) == tp
    used = [int(core) for group in groups for core in group]
    # Two ranks on one core would halve both; every rank needs at least one.
    assert len(used) == len(set(used)) and set(used) <= set(cores)
    assert {len(group) for group in groups} == {len(cores) // tp}


def test_cpu_thread_binding_needs_a_core_per_rank() -> None:
    # One core short is the edge: an empty group would bind a rank to no core at all.
    with pytest.raises(EngineFailed, match="tp3 needs 3 CPU cores, 2 available"):
        cpu_thread_binding(3, [0, 1])


def test_engine_kwargs_embedded_model_on_cpu() -> None:
    kwargs = engine_kwargs(spec(tp=2, batch=16), cpu=True)
    assert kwargs["model"] == EMBEDDED.path
    assert kwargs["tensor_parallel_size"] == 2 and kwargs["max_num_seqs"] == 16
    assert kwargs["load_format"] == "dummy" and kwargs["skip_tokenizer_init"] is True
    assert kwargs["dtype"] == "bfloat16" and kwargs["enforce_eager"] is True
    assert kwargs["enable_prefix_caching"] is False
    assert "max_model_len" not in kwargs


def test_engine_kwargs_hub_model_on_gpu_has_no_cpu_or_embedded_settings() -> None:
    hub = EngineSpec(EngineConfig(HUB.name, 4, 32), HUB, max_model_len=4096)
    assert engine_kwargs(hub, cpu=False) == {
        "model": "org/some-model",
        "tensor_parallel_size": 4,
        "max_num_seqs": 32,
        "enable_prefix_caching": False,
        "seed": 0,
        "max_model_len": 4096,
    }


def test_user_engine_args_override_the_defaults() -> None:
    user = (("enforce_eager", False), ("max_num_seqs", 3), ("swap_space", 1))
    kwargs = engine_kwargs(spec(batch=16, engine_args=user), cpu=True)
    assert (kwargs["enforce_eager"], kwargs["max_num_seqs"], kwargs["swap_space"]) == (False, 3, 1)
    assert kwargs["load_format"] == "dummy"


@pytest.fixture
def four_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    # The machine's own affinity would make the binding depend on where the test runs.
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3, 1, 0, 2})
    monkeypatch.delenv(KV, raising=False)
    monkeypatch.delenv(BIND, raising=False)


@pytest.mark.usefixtures("four_cores")
def test_cpu_environment_defaults() -> None:
    assert cpu_environment(1) == {KV: "2"}
    assert cpu_environment(2) == {KV: "2", BIND: "0,1|2,3"}


@pytest.mark.usefixtures("four_cores")
def test_cpu_environment_keeps_what_the_user_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KV, "8")
    monkeypatch.setenv(BIND, "0-1|2-3")
    # build_llm applies the result with os.environ.update: that must leave both as set.
    os.environ.update(cpu_environment(2))
    assert (os.environ[KV], os.environ[BIND]) == ("8", "0-1|2-3")


def test_poisson_arrivals() -> None:
    arrivals = poisson_arrivals(20_000, 4.0, seed=7)
    assert arrivals == poisson_arrivals(20_000, 4.0, seed=7)
    assert arrivals[:10] != poisson_arrivals(10, 4.0, seed=8)
    assert len(arrivals) == 20_000 and arrivals[0] == 0.0
    assert all(a <= b for a, b in zip(arrivals, arrivals[1:]))
    assert arrivals[-1] / (len(arrivals) - 1) == pytest.approx(1 / 4.0, rel=0.05)
    assert poisson_arrivals(0, 4.0, seed=7) == []


FAILING_BATCH = 13


class Rig:
    """An EngineCache on fake build/shutdown, the order of every call, scripted memory."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, rss: list[int]) -> None:
        self.log: list[str] = []
        readings: Iterator[int] = iter(rss)

        def read_rss() -> int:
            self.log.append("rss")
            return next(readings)

        monkeypatch.setattr(engine_module, "process_tree_rss_bytes", read_rss)
        self.cache = EngineCache(build=self.build, shutdown=self.shutdown)

    def build(self, s: EngineSpec) -> str:
        self.log.append(f"build b{s.config.max_num_seqs}")
        if s.config.max_num_seqs == FAILING_BATCH:
            raise EngineFailed("out of memory")
        return f"llm-b{s.config.max_num_seqs}"

    def shutdown(self, llm: str) -> None:
        self.log.append(f"shutdown {llm}")


@pytest.fixture(autouse=True)
def stub_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    # The cache imports vllm only for its side effect on memory; the real import takes
    # seconds here, and the engine tests elsewhere pay it.
    monkeypatch.setitem(sys.modules, "vllm", ModuleType("vllm"))


def test_cache_reuses_the_engine_of_the_same_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    rig = Rig(monkeypatch, [100, 500])
    rig.cache.close()  # nothing to shut down, no memory to record
    assert rig.cache.get(spec(batch=8)) == "llm-b8"
    assert rig.cache.get(spec(batch=8)) == "llm-b8"
    assert rig.cache.builds == 1
    assert rig.log == ["rss", "build b8", "rss"] and rig.cache.memory == []


def test_cache_shuts_the_old_engine_down_first(monkeypatch: pytest.MonkeyPatch) -> None:
    rig = Rig(monkeypatch, [100, 500, 130, 130, 600, 140])
    rig.cache.get(spec(batch=8))
    assert rig.cache.get(spec(batch=16)) == "llm-b16"
    assert rig.cache.builds == 2
    # The old engine's memory is read after its shutdown and before the new build.
    assert rig.log == ["rss", "build b8", "rss", "shutdown llm-b8", "rss", "rss", "build b16", "rss"]
    rig.cache.close()
    rig.cache.close()
    assert rig.log.count("shutdown llm-b16") == 1
    assert rig.cache.memory == [
        MemoryCheck(EngineConfig("embedded", 1, 8), 100, 500, 130, first=True),
        MemoryCheck(EngineConfig("embedded", 1, 16), 130, 600, 140, first=False),
    ]


def test_a_failed_build_leaves_the_cache_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    rig = Rig(monkeypatch, [100, 500, 130, 130, 130, 600])
    rig.cache.get(spec(batch=8))
    with pytest.raises(EngineFailed, match="out of memory"):
        rig.cache.get(spec(batch=FAILING_BATCH))
    # The b8 engine was shut down for b13: asking for b8 again must build, not reuse it.
    assert rig.cache.get(spec(batch=8)) == "llm-b8"
    assert rig.cache.builds == 3
    assert rig.log.count("build b8") == 2 and rig.log.count("shutdown llm-b8") == 1
    assert len(rig.cache.memory) == 1


def test_a_failed_shutdown_still_empties_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    rig = Rig(monkeypatch, [100, 500, 400, 400, 600])

    def broken(llm: str) -> None:
        raise RuntimeError("engine core died")

    rig.cache.shutdown = broken
    rig.cache.get(spec(batch=8))
    with pytest.raises(RuntimeError, match="engine core died"):
        rig.cache.close()
    assert [m.after_bytes for m in rig.cache.memory] == [400]
    rig.cache.get(spec(batch=8))
    assert rig.cache.builds == 2


@pytest.mark.parametrize(
    ("first", "before", "live", "after", "ok"),
    [
        # The first build is judged against its own size: 10% of live may stay behind.
        (True, 100, 1000, 200, True),
        (True, 100, 1000, 201, False),
        (True, 100, 1000, 50, True),
        # Later builds: back within 10% of what was there before.
        (False, 1000, 5000, 1100, True),
        (False, 1000, 5000, 1101, False),
        (False, 1000, 5000, 200, True),
    ],
)
def test_memory_check_returned(first: bool, before: int, live: int, after: int, ok: bool) -> None:
    check = MemoryCheck(EngineConfig("embedded", 1, 8), before, live, after, first)
    assert check.returned is ok


def device(label: str, joules: float, method: str, clock: float | None, strayed: bool) -> DeviceWindow:
    return DeviceWindow(
        label, joules, method, None, None, 100.0, 150.0, 20, 0, clock, None, None, (), strayed, "instant"
    )


def window(devices: tuple[DeviceWindow, ...], started_s: float = 99.0) -> WindowResult:
    # 100 W per second into the window: a ramp, so a misaligned interval reads other joules.
    timeline = ((0.0, 0.0), (2.0, 200.0))
    return WindowResult(
        started_s, 2.0, 300.0, devices, 150.0, 200.0, timeline, 0.4, 60.0, 180.0, 1410, False, ("w",)
    )


# Sent at 100.0 s on the meter's clock, 1 s into the window opened at 99.0 s.
RECORDS = (
    RequestRecord(100.0, (100.1, 100.15, 100.25), 10),
    RequestRecord(100.05, (100.3,), 20),
    RequestRecord(100.1, (100.2, 100.4), 5),
)
DEVICES = (
    device("gpu0", 180.0, "counter", 1410.0, False),
    device("gpu1", 120.0, "sampled", None, True),
)


def test_energy_figures() -> None:
    metrics = run_metrics(RECORDS, batch=1)
    assert metrics.steady is not None and metrics.steady.output_tokens == 3
    e = energy_figures(window(DEVICES), metrics, run_start_s=100.0)
    assert (e.energy_j, e.j_per_output_token, e.j_per_request) == pytest.approx((300, 50, 100))
    # Steady from 100.1 to 100.25 s, i.e. 1.1 to 1.25 s into the window: 50 (1.25^2 - 1.1^2) J.
    assert e.steady_j_per_token == pytest.approx(50 * (1.25**2 - 1.1**2) / 3)
    assert (e.method, e.avg_power_w, e.peak_power_w) == ("mixed", 150, 200)
    assert e.energy_above_idle_j == 180
    assert e.per_device_j == (("gpu0", 180.0), ("gpu1", 120.0))
    assert e.sm_clock_mhz == (("gpu0", 1410.0), ("gpu1", None))
    assert e.clock_strayed and e.imbalance == 0.4 and not e.short_window and e.warnings == ("w",)
    # Without counter reads (no log): the steady state from the timeline, no phase split.
    assert (e.steady_from, e.phases, e.timeline_power) == ("timeline", None, "instant")
    assert e.j_per_total_token == pytest.approx(300 / 41)
    # 60 W idle over the 2 s window is 120 J of the 300 J.
    assert e.static_share == pytest.approx(0.4) and e.edp_js == 600.0


def test_energy_figures_without_a_measurable_steady_state() -> None:
    no_steady = run_metrics(RECORDS, batch=3)
    assert no_steady.steady is None
    assert energy_figures(window(DEVICES), no_steady, 100.0).steady_j_per_token is None
    # A window opened after the run began does not cover its steady state.
    late = energy_figures(window(DEVICES, started_s=100.12), run_metrics(RECORDS, 1), 100.0)
    assert late.steady_j_per_token is None and late.j_per_output_token == 50
    one = window(DEVICES[:1])
    assert energy_figures(one, no_steady, 100.0).method == "counter"
    assert not energy_figures(one, no_steady, 100.0).clock_strayed


def test_result_properties() -> None:
    point = KnobPoint("embedded", 1, 1, Workload("S", 128, 64), 1410)
    metrics = run_metrics(RECORDS, batch=1)
    # The first repeat is A alone, unmetered: p99 TTFT 100 ms, ITL 99.5, TPOT 75, E2EL 250.
    earlier = RepeatResult(run_metrics(RECORDS[:1], batch=1), None)
    energy = energy_figures(window(DEVICES), metrics, 100.0)
    result = PointResult(point, 1410, (earlier, RepeatResult(metrics, energy)))
    # An SLO missed, an energy regression, and 2 of 3 requests good.
    regressed = Regression(
        "j_per_output_token", 40.0, 50.0, 0.25, None, None, 0.05, True, "threshold (single repeat)"
    )
    verdicts = Verdicts((Violation("tbt_p99", 148.75, 100.0, "ms"),), (regressed,), Goodput(2, 3, 2.0, None))
    props = dict(result_properties(PointRecord.of(result, verdicts)))
    # Latencies and throughputs are means over both repeats; energy over the metered one only.
    assert props == {
        "greenllm_point": "S-tp1-b1-1410MHz",
        "greenllm_clock_mhz": 1410,
        "greenllm_power_limit_w": None,
        "greenllm_repeats": 2,
        "greenllm_ttft_p99_ms": pytest.approx((100 + 247) / 2),
        "greenllm_itl_p99_ms": pytest.approx((99.5 + 198) / 2),
        "greenllm_tpot_p99_ms": pytest.approx((75 + 198.75) / 2),
        "greenllm_e2el_p99_ms": pytest.approx((250 + 299) / 2),
        "greenllm_output_throughput": pytest.approx((3 / 0.25 + 6 / 0.4) / 2),
        "greenllm_request_throughput": pytest.approx((1 / 0.25 + 3 / 0.4) / 2),
        "greenllm_j_per_output_token": 50.0,
        "greenllm_avg_power_w": 150.0,
        # 300 J over 35 prompt and 6 output tokens; a 2 s window.
        "greenllm_j_per_total_token": pytest.approx(300 / 41),
        "greenllm_energy_above_idle_j": 180.0,
        "greenllm_edp_js": 600.0,
        "greenllm_meter_method": "mixed",
        "greenllm_passes": 1,
        "greenllm_slo_met": False,
        "greenllm_slo": "violated",
        "greenllm_goodput_share": 0.6667,
        "greenllm_energy_regressed": True,
    }
    # An SLO judged over the pooled requests: its verdict, estimate, bound and confidence.
    ttft = judge_percentile("ttft_p99", Samples.of([10.0] * 299), 100.0, 0.99, 0.95)
    judged = dict(
        result_properties(PointRecord.of(result, Verdicts((), (), Goodput(3, 3, 2.0, None), (ttft,))))
    )
    assert {k: v for k, v in judged.items() if k.startswith("greenllm_slo")} == {
        "greenllm_slo_met": True,
        "greenllm_slo": "met",
        "greenllm_slo_ttft_p99": "met",
        "greenllm_slo_ttft_p99_estimate": 10.0,
        "greenllm_slo_ttft_p99_bound": 10.0,
        "greenllm_slo_ttft_p99_confidence": 0.95,
    }
    unmetered = PointResult(point, None, (earlier,))
    quiet = Verdicts((), (), Goodput(1, 1, 4.0, None))
    names = [name for name, _ in result_properties(PointRecord.of(unmetered, quiet))]
    # No meter: no energy figures; no baseline: no regression verdict to report.
    assert names == [
        f"greenllm_{name}"
        for name in (
            "point",
            "clock_mhz",
            "power_limit_w",
            "repeats",
            "ttft_p99_ms",
            "itl_p99_ms",
            "tpot_p99_ms",
            "e2el_p99_ms",
            "output_throughput",
            "request_throughput",
            "slo_met",
            "goodput_share",
        )
    ]
