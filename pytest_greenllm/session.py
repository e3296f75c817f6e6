"""Run-wide state of a pytest session: device, matrix, meter, test generation and header."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import contextmanager
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from tabulate import tabulate

from pytest_greenllm.config import Settings
from pytest_greenllm.devices.backend import NO_METER, Backend, open_backend
from pytest_greenllm.devices.base import Capabilities, EnergySource
from pytest_greenllm.devices.errors import DeviceError, NoPermission, NotSupported
from pytest_greenllm.knobs import KnobPoint, Matrix, count_of, expand, group_by_engine
from pytest_greenllm.engine import EngineCache, EngineSpec, cpu_build_installed
from pytest_greenllm.meter import EnergyMeter
from pytest_greenllm.reporting import ReportContext
from pytest_greenllm.results import Results
from pytest_greenllm.options import ENABLE_FLAG, POINT_FIXTURE

MARKER = "greenllm"
SKIP_REASON = f"greenllm benchmark: pass {ENABLE_FLAG} to run the knob sweep"
NO_POINTS_REASON = "greenllm: every knob point was removed; the session header says why"


def open_device(settings: Settings, device_flag: str) -> Backend:
    """Open the settings' device; any failure is a usage error naming ``device_flag``."""
    try:
        backend = open_backend(settings.device)
    except DeviceError as e:
        raise pytest.UsageError(f"{device_flag}={settings.device}: {e}") from None
    if settings.power_limit_mw is not None:
        if backend.guard is None:
            backend.close()
            raise pytest.UsageError(
                f"the power limit needs a GPU device; device={backend.kind} has none"
            )
        try:
            backend.guard.install()
            backend.guard.set_power_limit(backend.gpus, settings.power_limit_mw)
        except DeviceError as e:
            backend.close()
            raise pytest.UsageError(f"setting the power limit: {e}") from None
    return backend


def build_matrix(
    settings: Settings,
    caps: Capabilities,
    extra_problems: Callable[[KnobPoint], Iterable[str]] = lambda point: (),
) -> Matrix:
    """Expand the settings against the device's capabilities, and against the CPU cores
    where vLLM's CPU build runs the engine (whatever device measures)."""
    if cpu_build_installed() and caps.unit_name != "CPU cores":
        cores = len(os.sched_getaffinity(0))
        caps = replace(
            caps,
            parallel_units=min(caps.parallel_units, cores),
            unit_name="CPU cores (vLLM's CPU build runs the engine)" if cores < caps.parallel_units else caps.unit_name,
        )
    return expand(
        model=settings.model,
        tps=settings.tps,
        batches=settings.batches,
        workloads=settings.workloads,
        freqs=settings.freqs,
        caps=caps,
        extra_problems=extra_problems,
    )


def _point_of(item: pytest.Item) -> KnobPoint | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    point = callspec.params.get(POINT_FIXTURE)
    return point if isinstance(point, KnobPoint) else None


def _engine_key(item: pytest.Item) -> Hashable | None:
    point = _point_of(item)
    return None if point is None else point.engine


class GreenLLMSession:
    """Registered in ``pytest_configure``; its methods are hook implementations."""

    def __init__(
        self,
        settings: Settings,
        backend: Backend | None,
        matrix: Matrix | None,
        results: Results | None = None,
        report_context: ReportContext | None = None,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.matrix = matrix
        self.results = results
        self.report_context = report_context
        self.engines = EngineCache()
        self.notes: list[str] = []  # printed in the header
        self.written: list[Path] = []
        self._meter: EnergyMeter | None = None
        self.close_error: str | None = None

    def close(self) -> None:
        """Shut the engine down, stop the meter, give the device back with clocks reset.

        Idempotent. A device that cannot be put back is remembered in ``close_error``.
        """
        try:
            self.engines.close()
        finally:
            if self._meter is not None:
                self._meter.close()
            if self.backend is not None:
                backend, self.backend = self.backend, None
                try:
                    backend.close()
                except DeviceError as e:
                    self.close_error = str(e)

    def engine_spec(self, point: KnobPoint) -> EngineSpec:
        """What the point's engine is built from."""
        return EngineSpec(point.engine, self.settings.model, self.settings.engine_args)

    def meter_or_none(self) -> EnergyMeter | None:
        """The meter where the device has one; latency is measured either way."""
        backend = self.require_backend()
        return self.meter() if backend.sources else None

    # --- what fixtures use ---------------------------------------------------------------
    def require_backend(self) -> Backend:
        if self.backend is None:
            pytest.skip(SKIP_REASON)
        return self.backend

    def meter(self) -> EnergyMeter:
        """The session's energy meter; idle power is measured the first time."""
        backend = self.require_backend()
        if not backend.sources:
            pytest.skip(f"energy not measured: {NO_METER}")
        if self._meter is None:
            s = self.settings
            self._meter = EnergyMeter(
                backend.sources, sample_hz=s.sample_hz, min_window_s=s.min_window_s
            )
            self._meter.measure_idle(max(s.min_window_s, 1.0))
        return self._meter

    def point_sources(self, point: KnobPoint) -> list[EnergySource]:
        """What to measure for a point: the GPUs its engine uses (CUDA's first ``tp``)."""
        backend = self.require_backend()
        if backend.gpus:
            return list(backend.gpus[: point.tp])
        return list(backend.sources)

    @contextmanager
    def point_clocks(self, mhz: int | None, tp: int | None = None) -> Iterator[int | None]:
        """Lock the clock of the first ``tp`` GPUs (None: all) for one point, cool down,
        and restore after, however the block ends. ``mhz`` None leaves the clocks alone."""
        backend = self.require_backend()
        guard = backend.guard
        locked = None
        if mhz is not None:
            if guard is None:
                pytest.skip(
                    f"device={backend.kind} cannot lock clocks; pass --greenllm-freqs=default"
                )
            guard.install()
            try:
                locked, _ = guard.lock_clocks(backend.gpus[:tp], mhz)
            except (NoPermission, NotSupported) as e:
                pytest.skip(f"clocks not locked: {e}")
        try:
            if backend.sources and self.settings.cooldown_s > 0:
                self.meter().cool_down(self.settings.cooldown_s)
            yield locked
        finally:
            if locked is not None and guard is not None:
                guard.restore(clocks_only=True)

    # --- hooks ---------------------------------------------------------------------------
    def pytest_report_header(self) -> list[str]:
        if self.matrix is None or self.backend is None:
            return [f"greenllm: off (pass {ENABLE_FLAG} to run the knob sweep)"]
        s = self.settings
        requests = "auto" if s.requests is None else str(s.requests)
        lines = [*self.matrix.header_lines()]
        lines.extend(f"greenllm: {note}" for note in [*self.backend.notes, *self.notes])
        if not self.backend.sources:
            lines.append(f"greenllm: {NO_METER}")
        lines.append(
            f"greenllm: model={s.model.name}, repeats={s.repeats}, requests={requests}, "
            f"seed={s.seed}"
        )
        return lines

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        # Here, not at unconfigure: the summary then has the last engine's memory check,
        # and a device that could not be put back can still fail the run.
        meter_method = self._meter_method()
        self.close()
        if self.results is not None and self.report_context is not None and self.matrix is not None:
            points = self.results.all_points([p.id for p in self.matrix.points])
            if points:
                self.written = self.report_context.write(points, meter_method)
        if self.close_error is not None and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _meter_method(self) -> str | None:
        methods = {
            r["energy"]["method"]
            for record in (self.results.records if self.results else [])
            for r in record["repeats"]
            if r["energy"] is not None
        }
        return methods.pop() if len(methods) == 1 else ("mixed" if methods else None)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.matrix is None or self.results is None:
            return
        terminalreporter.section("greenllm")
        if self.close_error is not None:
            terminalreporter.write_line(f"greenllm: {self.close_error}", red=True)
        order = [p.id for p in self.matrix.points]
        points = self.results.all_points(order)
        if points:
            terminalreporter.write_line(summary_table(points))
        new, gone = self.results.baseline_coverage(order)
        if new:
            terminalreporter.write_line(f"greenllm: not in the baseline, not compared: {', '.join(new)}")
        if gone:
            terminalreporter.write_line(f"greenllm: in the baseline, not measured now: {', '.join(gone)}")
        configs = len(self.engines.configs)
        terminalreporter.write_line(
            f"greenllm: {count_of(self.engines.builds, 'engine build')} for "
            f"{count_of(configs, 'engine configuration')} measured "
            f"({len(self.matrix.engine_configs)} planned)"
        )
        for check in self.engines.memory:
            verdict = "returned" if check.returned else "NOT returned"
            terminalreporter.write_line(
                f"greenllm: engine tp{check.config.tp}-b{check.config.max_num_seqs}: memory "
                f"{check.before_bytes / 2**20:.0f} MiB before, {check.live_bytes / 2**20:.0f} MiB "
                f"live, {check.after_bytes / 2**20:.0f} MiB after shutdown: {verdict}"
            )
        for path in self.written:
            terminalreporter.write_line(f"greenllm: report written: {path}")
        if self.results.journal.path.exists():
            terminalreporter.write_line(f"greenllm: journal: {self.results.journal.path}")

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Iterator[None]:
        yield
        failures = item.stash.get(verdict_failures_key, [])
        if failures:
            pytest.fail("\n".join(failures), pytrace=False)

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if POINT_FIXTURE not in metafunc.fixturenames or self.matrix is None:
            return
        points = self.matrix.points
        if not points:
            skipped = pytest.param(None, marks=pytest.mark.skip(reason=NO_POINTS_REASON))
            metafunc.parametrize(POINT_FIXTURE, [skipped], ids=["no-points"], indirect=True)
            return
        metafunc.parametrize(POINT_FIXTURE, points, ids=[p.id for p in points], indirect=True)

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        resumed = self.results.resumed if self.results is not None else {}
        for item in items:
            if POINT_FIXTURE in getattr(item, "fixturenames", ()):
                item.add_marker(MARKER)
            if self.matrix is None and item.get_closest_marker(MARKER) is not None:
                item.add_marker(pytest.mark.skip(reason=SKIP_REASON))
            point = _point_of(item)
            if point is not None and point.id in resumed and self.results is not None:
                item.add_marker(
                    pytest.mark.skip(
                        reason=f"greenllm: measured before, kept from {self.results.journal.path}"
                    )
                )
        items[:] = group_by_engine(items, _engine_key)


def summary_table(points: list[dict[str, Any]]) -> str:
    """Points x key figures; the best point per objective among those meeting the SLOs is
    marked: E least energy per token, P least average power, T most throughput."""
    marks: dict[str, str] = {p["id"]: "" for p in points}
    passing = [p for p in points if p["verdicts"].get("slo_met", True)]
    for mark, key, pick in (
        ("E", "j_per_output_token", min),
        ("P", "avg_power_w", min),
        ("T", "output_throughput", max),
    ):
        candidates = [p for p in passing if p["summary"].get(key) is not None]
        if candidates:
            marks[pick(candidates, key=lambda p: p["summary"][key])["id"]] += mark
    rows = []
    for p in points:
        s, v = p["summary"], p["verdicts"]
        rows.append(
            (
                p["id"],
                len(p["repeats"]),
                s["ttft_p99_ms"],
                s["itl_p99_ms"],
                s["output_throughput"],
                s["j_per_output_token"],
                s["avg_power_w"],
                "ok" if v.get("slo_met", True) else "MISSED",
                "REGRESSED" if v.get("regressed") else ("ok" if v.get("regressions") else "-"),
                marks[p["id"]],
            )
        )
    headers = (
        "point", "reps", "TTFT p99 ms", "TBT p99 ms", "out tok/s", "J/tok", "avg W", "SLO",
        "energy", "best",
    )
    return tabulate(rows, headers=headers, floatfmt=".4g", missingval="-")


session_key = pytest.StashKey[GreenLLMSession]()
# A point's SLO and regression findings, failed after the test body in pytest_runtest_call.
verdict_failures_key = pytest.StashKey[list[str]]()
