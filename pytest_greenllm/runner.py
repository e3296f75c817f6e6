"""Measure one knob point: the driver's run inside an energy window, repeated, as results.

It gets what it needs (settings, driver, meter, the point's sources), never the session.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import replace

from pytest_greenllm.config import Settings
from pytest_greenllm.devices.base import EnergySource
from pytest_greenllm.driver import Driver, EngineFailed, EngineSpec
from pytest_greenllm.knobs import KnobPoint
from pytest_greenllm.meter import EnergyMeter, WindowHandle, WindowResult
from pytest_greenllm.metrics import RunMetrics, energy_between_j, run_metrics
from pytest_greenllm.record import (
    SUMMARY_METRICS,
    EnergyFigures,
    PointRecord,
    PointResult,
    RepeatResult,
)
from pytest_greenllm.workloads import build_requests, poisson_arrivals, request_count


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
    settings: Settings,
    driver: Driver,
    meter: EnergyMeter | None,
    sources: Sequence[EnergySource] | None,
    spec: EngineSpec,
    point: KnobPoint,
    locked_clock_mhz: int | None,
    sources_note: str | None = None,
) -> PointResult:
    """Warm up, then run the point's workload ``repeats`` times, each inside an energy window
    over ``sources`` (every source of ``meter`` if None); no window without a meter.
    ``sources_note`` says why the sources are more than the point's own, into each repeat's
    energy warnings."""
    driver.warm_up(spec, f"{point.id}-warm")
    count = request_count(point.batch, settings.requests)
    requests = build_requests(point.workload, count, settings.seed, settings.trace)
    if point.workload.replay:
        arrivals = [r.arrival_s for r in requests]
    elif settings.rate is None:
        arrivals = [0.0] * count
    else:
        arrivals = poisson_arrivals(count, settings.rate, settings.seed)
    repeats = []
    for index in range(settings.repeats):
        if meter is not None and settings.cooldown_s > 0:
            meter.cool_down(settings.cooldown_s)
        window = meter.window(locked_clock_mhz, sources) if meter is not None else nullcontext(WindowHandle())
        with window as handle:
            records = driver.run(spec, requests, arrivals, f"{point.id}-r{index}")
        metrics = run_metrics(records, point.batch)
        if any(r.output_tokens != spec_r.output_tokens for r, spec_r in zip(records, requests)):
            raise EngineFailed("the engine returned other output lengths than forced")
        energy = None
        if handle.result is not None:
            energy = energy_figures(handle.result, metrics, min(r.send_s for r in records))
            if sources_note is not None:
                energy = replace(energy, warnings=(*energy.warnings, sources_note))
        repeats.append(RepeatResult(metrics, energy))
    return PointResult(point, locked_clock_mhz, tuple(repeats))


def result_properties(record: PointRecord) -> list[tuple[str, object]]:
    """Key figures as (name, value) pairs for ``user_properties``: means over repeats, and
    the verdicts."""
    properties: list[tuple[str, object]] = [
        ("greenllm_point", record.id),
        ("greenllm_clock_mhz", record.locked_clock_mhz),
        ("greenllm_repeats", len(record.repeats)),
    ]
    for metric in SUMMARY_METRICS:
        value = metric.of(record.summary)
        if value is not None:
            properties.append((f"greenllm_{metric.key}", round(value, 6)))
    energy = record.repeats[-1].energy
    if energy is not None:
        properties.append(("greenllm_meter_method", energy.method))
    properties.append(("greenllm_slo_met", record.slo_met))
    if record.verdicts is not None:
        properties.append(("greenllm_goodput_share", round(record.verdicts.goodput.share, 4)))
        if record.verdicts.regressions:
            properties.append(("greenllm_energy_regressed", record.regressed))
    return properties
