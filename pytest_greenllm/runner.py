"""Measure one knob point: the engine run inside an energy window, repeated, as results."""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from pytest_greenllm.engine import EngineCache, EngineFailed, EngineSpec, poisson_arrivals, run_requests, warm_up
from pytest_greenllm.knobs import KnobPoint
from pytest_greenllm.meter import WindowHandle, WindowResult
from pytest_greenllm.metrics import RunMetrics, energy_between_j, run_metrics
from pytest_greenllm.workloads import build_requests, request_count


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


@dataclass(frozen=True)
class RepeatResult:
    """One run of a point."""

    metrics: RunMetrics
    energy: EnergyFigures | None  # None where no meter measures


@dataclass(frozen=True)
class PointResult:
    """Every repeat of a point, with the clock it ran at."""

    point: KnobPoint
    locked_clock_mhz: int | None
    repeats: tuple[RepeatResult, ...]


def energy_figures(window: WindowResult, metrics: RunMetrics, run_start_s: float) -> EnergyFigures:
    """Per-token and per-request energy; the steady state from the power timeline."""
    steady_j = None
    if metrics.steady is not None and metrics.steady.output_tokens > 0:
        offset = run_start_s - window.started_s
        joules = energy_between_j(
            window.timeline, offset + metrics.steady.start_s, offset + metrics.steady.end_s
        )
        if joules is not None:
            steady_j = joules / metrics.steady.output_tokens
    return EnergyFigures(
        method=window.method,
        energy_j=window.energy_j,
        j_per_output_token=window.energy_j / metrics.output_tokens if metrics.output_tokens else math.nan,
        j_per_request=window.energy_j / metrics.requests,
        avg_power_w=window.avg_power_w,
        peak_power_w=window.peak_power_w,
        steady_j_per_token=steady_j,
        energy_above_idle_j=window.energy_above_idle_j,
        per_device_j=tuple((d.label, d.energy_j) for d in window.devices),
        imbalance=window.imbalance,
        sm_clock_mhz=tuple((d.label, d.sm_clock_mhz_mean) for d in window.devices),
        clock_strayed=any(d.clock_strayed for d in window.devices),
        short_window=window.short,
        warnings=window.warnings,
    )


def measure_point(
    session: Any,
    cache: EngineCache,
    spec: EngineSpec,
    point: KnobPoint,
    locked_clock_mhz: int | None,
) -> PointResult:
    """Warm up, then run the point's workload ``repeats`` times, each in an energy window."""
    settings = session.settings
    llm = cache.get(spec)
    warm_up(llm, f"{point.id}-warm")
    count = request_count(point.batch, settings.requests)
    requests = build_requests(point.workload, count, settings.seed, settings.trace)
    if point.workload.replay:
        arrivals = [r.arrival_s for r in requests]
    elif settings.rate is None:
        arrivals = [0.0] * count
    else:
        arrivals = poisson_arrivals(count, settings.rate, settings.seed)
    meter = session.meter_or_none()
    sources = session.point_sources(point) if meter is not None else None
    repeats = []
    for index in range(settings.repeats):
        if meter is not None and settings.cooldown_s > 0:
            meter.cool_down(settings.cooldown_s)
        window = meter.window(locked_clock_mhz, sources) if meter is not None else nullcontext(WindowHandle())
        with window as handle:
            records = run_requests(llm, requests, arrivals, f"{point.id}-r{index}")
        metrics = run_metrics(records, point.batch)
        if any(r.output_tokens != spec_r.output_tokens for r, spec_r in zip(records, requests)):
            raise EngineFailed("the engine returned other output lengths than forced")
        energy = None
        if handle.result is not None:
            energy = energy_figures(handle.result, metrics, min(r.send_s for r in records))
        repeats.append(RepeatResult(metrics, energy))
    return PointResult(point, locked_clock_mhz, tuple(repeats))


def result_properties(result: PointResult, record: dict[str, Any]) -> list[tuple[str, object]]:
    """Key figures as (name, value) pairs for ``user_properties``: means over repeats, and
    the verdicts."""
    summary, verdicts = record["summary"], record["verdicts"]
    properties: list[tuple[str, object]] = [
        ("greenllm_point", result.point.id),
        ("greenllm_clock_mhz", result.locked_clock_mhz),
        ("greenllm_repeats", len(result.repeats)),
    ]
    for key in (
        "ttft_p99_ms", "itl_p99_ms", "tpot_p99_ms", "e2el_p99_ms", "output_throughput",
        "request_throughput", "j_per_output_token", "avg_power_w",
    ):
        if summary.get(key) is not None:
            properties.append((f"greenllm_{key}", round(summary[key], 6)))
    energy = result.repeats[-1].energy
    if energy is not None:
        properties.append(("greenllm_meter_method", energy.method))
    properties.append(("greenllm_slo_met", verdicts["slo_met"]))
    properties.append(("greenllm_goodput_share", round(verdicts["goodput"]["share"], 4)))
    if verdicts["regressions"]:
        properties.append(("greenllm_energy_regressed", verdicts["regressed"]))
    return properties
