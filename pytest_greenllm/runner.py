"""Measure one knob point: the driver's run inside an energy window, repeated, as results.

It gets what it needs (settings, driver, meter, the point's sources), never the session.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import replace

from pytest_greenllm.arrivals import arrival_offsets
from pytest_greenllm.config import Settings
from pytest_greenllm.devices.base import EnergySource
from pytest_greenllm.driver import Driver, EngineSpec, ServesMetrics
from pytest_greenllm.knobs import KnobPoint
from pytest_greenllm.meter import (
    OTHER_KIND,
    SHORT_WINDOW_KIND,
    SUB_WINDOW_MIN_PERIODS,
    EnergyMeter,
    WindowHandle,
    WindowResult,
)
from pytest_greenllm.metrics import RequestRecord, RunMetrics, energy_between_j, run_metrics
from pytest_greenllm.phases import CounterLog, counter_energy_j, split_phases, update_period_s
from pytest_greenllm.record import (
    SUMMARY_METRICS,
    EnergyFigures,
    PointRecord,
    PointResult,
    RepeatResult,
)
from pytest_greenllm.scrape import Scraper
from pytest_greenllm.workloads import RequestSpec, build_requests, request_count

# A point's requests run again back to back until the window is long enough, at most this
# often: a pass of a few milliseconds would otherwise pile up thousands of records.
MAX_PASSES = 1000


def energy_figures(
    window: WindowResult, metrics: RunMetrics, run_start_s: float, log: CounterLog | None = None
) -> EnergyFigures:
    """Per-token and per-request energy, and the figures other tools report; the steady
    state and the prefill/decode split from the counter reads of ``log`` where it has
    them (else the steady state from the power timeline). A steady state too short for the
    counter's updates has no energy, and says so; a window whose counter went backwards
    (its energy NaN) has none of the figures drawn from it."""
    kinds = window.warning_kinds + (OTHER_KIND,) * (len(window.warnings) - len(window.warning_kinds))
    warnings = list(zip(window.warnings, kinds))
    energy_j = window.energy_j
    measured = math.isfinite(energy_j)
    steady_j = None
    steady_from = None
    steady = metrics.steady
    if measured and steady is not None and steady.output_tokens > 0:
        joules = None
        too_short = False
        if log is not None and log.reads:
            period_s = update_period_s(log.reads)
            lasted_s = steady.end_s - steady.start_s
            too_short = period_s is None or lasted_s < SUB_WINDOW_MIN_PERIODS * period_s
            if too_short:
                updates = "no update" if period_s is None else f"updates every {period_s * 1000:.0f} ms"
                warnings.append(
                    (
                        f"no steady-state energy per token: the steady state lasted "
                        f"{lasted_s * 1000:.0f} ms and the energy counter's reads saw {updates}; "
                        f"it needs {SUB_WINDOW_MIN_PERIODS} updates to be within "
                        f"{1 / SUB_WINDOW_MIN_PERIODS:.0%} (longer outputs lengthen it)",
                        SHORT_WINDOW_KIND,
                    )
                )
            else:
                joules = counter_energy_j(log.reads, run_start_s + steady.start_s, run_start_s + steady.end_s)
                steady_from = "counter"
        if joules is None and not too_short:
            offset = run_start_s - window.started_s
            joules = energy_between_j(window.timeline, offset + steady.start_s, offset + steady.end_s)
            steady_from = "timeline"
        if joules is not None:
            steady_j = joules / steady.output_tokens
        else:
            steady_from = None
    tokens = metrics.prompt_tokens + metrics.output_tokens
    static_share = None
    above_j = window.energy_above_idle_j
    if above_j is not None and energy_j > 0:
        static_share = (energy_j - above_j) / energy_j
    phases = None
    if measured and log is not None and log.reads:
        phases = split_phases(log.steps, log.reads, log.reads[0][0])
    return EnergyFigures(
        method=window.method,
        energy_j=energy_j,
        j_per_output_token=energy_j / metrics.output_tokens if metrics.output_tokens else math.nan,
        j_per_request=energy_j / metrics.requests,
        avg_power_w=window.avg_power_w,
        peak_power_w=window.peak_power_w,
        steady_j_per_token=steady_j,
        energy_above_idle_j=above_j,
        per_device_j=tuple((d.label, d.energy_j) for d in window.devices),
        imbalance=window.imbalance,
        sm_clock_mhz=tuple((d.label, d.sm_clock_mhz_mean) for d in window.devices),
        clock_strayed=any(d.clock_strayed for d in window.devices),
        short_window=window.short,
        warnings=tuple(text for text, _ in warnings),
        timeline_power=window.power_kind,
        steady_from=steady_from,
        j_per_total_token=energy_j / tokens if tokens else None,
        static_share=static_share,
        edp_js=energy_j * window.duration_s,
        event_reasons=tuple((d.label, d.event_reasons) for d in window.devices),
        phases=phases,
        warning_kinds=tuple(kind for _, kind in warnings),
    )


def run_passes(
    driver: Driver,
    spec: EngineSpec,
    requests: Sequence[RequestSpec],
    arrivals_s: Sequence[float],
    tag: str,
    log: CounterLog | None,
    min_window_s: float,
    clock: Callable[[], float] = time.monotonic,
    min_passes: int = 1,
) -> list[list[RequestRecord]]:
    """Run the requests, and again back to back, until ``min_window_s`` has passed: the
    energy counter updates every 20-100 ms, so a short window cannot be measured well
    (MLPerf Power sets minimum run lengths for the same reason); at least ``min_passes``
    times (requests enough to judge an SLO). One list per pass."""
    started = clock()
    passes: list[list[RequestRecord]] = []
    while True:
        if log is not None:
            log.start()
        pass_tag = f"{tag}-p{len(passes)}" if passes else tag
        passes.append(driver.run(spec, requests, arrivals_s, pass_tag, observer=log))
        enough = clock() - started >= min_window_s and len(passes) >= min_passes
        if enough or len(passes) >= MAX_PASSES:
            return passes


def unforced_lengths(passes: Sequence[Sequence[RequestRecord]], requests: Sequence[RequestSpec]) -> int:
    """Completed requests whose output was not of the length forced: a server that ignores
    ``ignore_eos`` or ``min_tokens`` (they are per-token figures of other work)."""
    return sum(
        record.error is None and record.output_tokens != spec.output_tokens
        for records in passes
        for record, spec in zip(records, requests)
    )


# Runs ``target`` ``rounds`` times with ``setup`` before each (outside any timing): plainly, or
# through pytest-benchmark (bench.py).
Rounds = Callable[[Callable[[], object], Callable[[], object], int], None]


def plain_rounds(target: Callable[[], object], setup: Callable[[], object], rounds: int) -> None:
    """``rounds`` runs of ``target``, each after ``setup``."""
    for _ in range(rounds):
        setup()
        target()


class PointRun:
    """One knob point's measurement, a repeat at a time: each repeat runs the point's
    workload inside an energy window over ``sources`` (every source of ``meter`` if None);
    no window without a meter. A window shorter than the meter's minimum runs the requests
    again until it is long enough, and every repeat runs them at least ``min_passes`` times.
    ``sources_note`` says why the sources are more than the point's own, into each repeat's
    energy warnings."""

    def __init__(
        self,
        settings: Settings,
        driver: Driver,
        meter: EnergyMeter | None,
        sources: Sequence[EnergySource] | None,
        spec: EngineSpec,
        point: KnobPoint,
        locked_clock_mhz: int | None,
        min_passes: int = 1,
        sources_note: str | None = None,
    ) -> None:
        self._settings = settings
        self._driver = driver
        self._meter = meter
        self._sources = sources
        self._spec = spec
        self.point = point
        self._locked_clock_mhz = locked_clock_mhz
        self._sources_note = sources_note
        self._min_passes = min_passes
        count = request_count(point.batch, settings.requests)
        self._requests = build_requests(point.workload, count, settings.seed, settings.trace)
        self._arrivals = arrival_offsets(point.load, [r.arrival_s for r in self._requests], settings.seed)
        self.repeats: list[RepeatResult] = []

    def warm_up(self) -> None:
        """One unmeasured run, so that the first repeat does not pay for compilation."""
        self._driver.warm_up(self._spec, f"{self.point.id}-warm")

    def cool_down(self) -> None:
        """Wait for the GPUs to cool (at most the settings' cool-down) before a repeat."""
        if self._meter is not None and self._settings.cooldown_s > 0:
            self._meter.cool_down(self._settings.cooldown_s, sources=self._sources)

    def repeat(self) -> RepeatResult:
        """Run the workload once inside an energy window, and keep the repeat."""
        meter, sources, spec = self._meter, self._sources, self._spec
        log = None
        min_window_s = 0.0
        if meter is not None:
            log = CounterLog(list(meter.sources if sources is None else sources), meter.clock)
            min_window_s = meter.min_window_s
        clock_mhz = self._locked_clock_mhz
        window = meter.window(clock_mhz, sources) if meter is not None else nullcontext(WindowHandle())
        url = self._driver.metrics_url(spec) if isinstance(self._driver, ServesMetrics) else None
        clock = meter.clock if meter is not None else time.monotonic
        scraper = Scraper(url, clock()) if url is not None else None
        tag = f"{self.point.id}-r{len(self.repeats)}"
        with window as handle, scraper if scraper is not None else nullcontext():
            passes = run_passes(
                self._driver,
                spec,
                self._requests,
                self._arrivals,
                tag,
                log,
                min_window_s,
                min_passes=self._min_passes,
            )
        records = [r for records in passes for r in records]
        # Over every pass: the steady state is the first pass's, as the later ones start
        # only after it has drained.
        metrics = run_metrics(records, self.point.batch)
        energy = None
        if handle.result is not None:
            energy = energy_figures(handle.result, metrics, min(r.send_s for r in records), log)
            if self._sources_note is not None:
                energy = replace(
                    energy,
                    warnings=(*energy.warnings, self._sources_note),
                    warning_kinds=(*energy.warning_kinds, "other"),
                )
        server = scraper.view() if scraper is not None else None
        repeat = RepeatResult(metrics, energy, len(passes), server, unforced_lengths(passes, self._requests))
        self.repeats.append(repeat)
        return repeat

    def result(self) -> PointResult:
        """The repeats so far."""
        return PointResult(self.point, self._locked_clock_mhz, tuple(self.repeats))


def measure(
    run: PointRun,
    settings: Settings,
    settled: Callable[[PointResult], bool],
    rounds: Rounds = plain_rounds,
) -> PointResult:
    """Warm up, then the settings' repeats; with ``auto_repeats``, one more at a time until
    ``settled`` (the energy verdict is no longer inconclusive) or the most allowed."""
    run.warm_up()
    rounds(run.repeat, run.cool_down, settings.repeats)
    if settings.auto_repeats:
        while len(run.repeats) < settings.max_repeats and not settled(run.result()):
            rounds(run.repeat, run.cool_down, 1)
    return run.result()


def result_properties(record: PointRecord) -> list[tuple[str, object]]:
    """Key figures as (name, value) pairs for ``user_properties``: means over repeats, and
    the verdicts."""
    properties: list[tuple[str, object]] = [
        ("greenllm_point", record.id),
        ("greenllm_clock_mhz", record.locked_clock_mhz),
        ("greenllm_power_limit_w", record.power_limit_w),
        ("greenllm_repeats", len(record.repeats)),
    ]
    for metric in SUMMARY_METRICS:
        value = metric.of(record.summary)
        if value is not None:
            properties.append((f"greenllm_{metric.key}", round(value, 6)))
    energy = record.repeats[-1].energy
    if energy is not None:
        properties.append(("greenllm_meter_method", energy.method))
        properties.append(("greenllm_passes", record.repeats[-1].passes))
    if record.unforced:
        properties.append(("greenllm_unforced_lengths", record.unforced))
    properties.append(("greenllm_slo_met", record.slo_met))
    if record.slo is not None:
        properties.append(("greenllm_slo", record.slo))
    for slo in record.verdicts.slos if record.verdicts is not None else ():
        # The verdict, its confidence bound beside the estimate, and the error it holds at.
        properties.append((f"greenllm_slo_{slo.metric}", slo.verdict))
        for name, value in (("estimate", slo.estimate), ("bound", slo.high if slo.quantile else slo.low)):
            if value is not None:
                properties.append((f"greenllm_slo_{slo.metric}_{name}", round(value, 6)))
        properties.append((f"greenllm_slo_{slo.metric}_confidence", slo.confidence))
    if record.verdicts is not None:
        properties.append(("greenllm_goodput_share", round(record.verdicts.goodput.share, 4)))
        if record.verdicts.regressions:
            properties.append(("greenllm_energy_regressed", record.regressed))
    return properties
