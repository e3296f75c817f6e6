"""The hook-facing state of a pytest session with ``--greenllm`` on: test generation,
collection order, the header and the terminal summary. Registered only when the plugin is
on; the sweep itself (device, matrix, meter, results) is a ``sweep.Sweep``."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path

import pytest

from pytest_greenllm.bench import benchmark_state, header_line
from pytest_greenllm.devices.backend import NO_METER, TRY_FAKE
from pytest_greenllm.devices.errors import DeviceError
from pytest_greenllm.driver import Driver, EngineSpec
from pytest_greenllm.gate import INCONCLUSIVE
from pytest_greenllm.hints import render
from pytest_greenllm.knobs import EngineConfig, KnobPoint, count_of, group_by_engine
from pytest_greenllm.options import ENABLE_FLAG, POINT_FIXTURE, PYTEST_PREFIX
from pytest_greenllm.point_slos import slo_header
from pytest_greenllm.progress import Progress
from pytest_greenllm.record import PointRecord
from pytest_greenllm.slo_verdicts import INCONCLUSIVE as SLO_INCONCLUSIVE
from pytest_greenllm.sweep import Sweep
from pytest_greenllm.tables import summary_table

MARKER = "greenllm"
BUILTIN_SWEEP = Path(__file__).with_name("builtin_sweep.py")
BUILTIN_NODEID = "greenllm"
SKIP_REASON = f"greenllm benchmark: pass {ENABLE_FLAG} to run the knob sweep"
NO_POINTS_REASON = "greenllm: every knob point was removed; the session header says why"


def point_of(item: pytest.Item) -> KnobPoint | None:
    """The knob point a generated test item measures, if it is one."""
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    point = callspec.params.get(POINT_FIXTURE)
    return point if isinstance(point, KnobPoint) else None


def _names_tests(config: pytest.Config) -> bool:
    """Whether the command line names test files or node ids: then the user asked for those
    tests, and a sweep of hours beside them would not be what they meant."""
    base = config.invocation_params.dir
    return any("::" in arg or (base / arg).is_file() for arg in config.args)


def xdist_group(engine: EngineConfig) -> str:
    """The pytest-xdist group of an engine configuration's points."""
    return f"greenllm-{engine.model}-tp{engine.tp}-b{engine.max_num_seqs}"


def _engine_key(item: pytest.Item) -> Hashable | None:
    point = point_of(item)
    return None if point is None else point.engine


class GreenLLMSession:
    """Registered in ``pytest_configure`` when the plugin is on; its methods are hooks."""

    def __init__(
        self, sweep: Sweep, driver: Driver, builtin_sweep: bool = True, role: str | None = None
    ) -> None:
        self.sweep = sweep
        self.driver = driver
        self.builtin_sweep = builtin_sweep
        # 'controller' or 'worker' of a parallel run (pytest -n): the controller measures
        # nothing and writes the reports, its workers measure and write none.
        self.role = role
        self.progress = Progress([])
        self._point_items: dict[str, pytest.Item] = {}
        self._started: dict[str, float] = {}
        self._live_engine: EngineConfig | None = None
        self._leased_engine: EngineConfig | None = None
        self._workers: dict[str, str] = {}  # point id -> the worker that measured it
        self.written: list[Path] = []
        self.write_failures: list[tuple[Path, str]] = []
        self.close_error: str | None = None

    def close(self) -> None:
        """Shut the engine down, stop the meter, give the device back with clocks reset.

        Idempotent. A device that cannot be put back is remembered in ``close_error``.
        """
        try:
            self.driver.close()
        except Exception as e:  # any driver's; the reports must still be written
            self.close_error = f"shutting the engine down failed: {e}"
        finally:
            try:
                self.sweep.close()
            except DeviceError as e:
                self.close_error = e.render(PYTEST_PREFIX)

    # --- hooks ---------------------------------------------------------------------------
    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        sweep = self.sweep
        s = sweep.settings
        requests = "auto" if s.requests is None else str(s.requests)
        lines = [*sweep.matrix.header_lines()]
        lines.extend(f"greenllm: {note}" for note in [*sweep.backend.notes, *sweep.notes])
        if not sweep.backend.sources and s.endpoint is None:  # an endpoint's notes say why
            lines.append(f"greenllm: {render(NO_METER, TRY_FAKE, PYTEST_PREFIX)}")
        repeats = f"auto ({s.repeats} to {s.max_repeats})" if s.auto_repeats else str(s.repeats)
        lines.append(f"greenllm: model={s.model.name}, repeats={repeats}, requests={requests}, seed={s.seed}")
        benchmark = header_line(benchmark_state(config))
        if benchmark is not None:
            lines.append(f"greenllm: {benchmark}")
        if s.auto_repeats and s.baseline_path is None:
            lines.append(
                f"greenllm: --greenllm-repeats=auto without a baseline: every point runs {s.repeats} "
                "repeats, enough for this report to serve as a baseline"
            )
        lines.append(f"greenllm: {slo_header(s, sweep.results.default_slos_apply)}")
        return lines

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        # Here, not at unconfigure: the summary then has the last engine's memory check,
        # and a device that could not be put back can still fail the run.
        sweep = self.sweep
        meter_method = sweep.meter_method()
        self.close()
        points = sweep.results.all_points([p.id for p in sweep.matrix.points])
        # A shard left with no point still reports, so that merging sees it ran.
        if (points or sweep.settings.shard is not None) and self.role != "worker":
            self.written, self.write_failures = sweep.report_context.write(points, meter_method)
        failed = self.close_error is not None or self.write_failures
        if failed and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        sweep = self.sweep
        terminalreporter.section("greenllm")
        if self.close_error is not None:
            terminalreporter.write_line(f"greenllm: {self.close_error}", red=True)
        order = [p.id for p in sweep.matrix.points]
        points = sweep.results.all_points(order)
        if points:
            terminalreporter.write_line(summary_table(points))
        unforced = [p.id for p in points if p.unforced]
        if unforced:
            terminalreporter.write_line(
                f"greenllm: outputs not of the forced length at {', '.join(unforced)}: the server ignores "
                "ignore_eos or min_tokens, and their per-token figures count the tokens it sent",
                yellow=True,
            )
        unsure_slo = [p.id for p in points if p.slo == SLO_INCONCLUSIVE]
        if unsure_slo and sweep.settings.inconclusive != "pass":
            terminalreporter.write_line(
                f"greenllm: SLO verdict inconclusive at {', '.join(unsure_slo)}: too few requests to "
                f"certify or refute a p99 at {sweep.settings.slo_confidence:.0%} confidence; "
                "--greenllm-requests=auto takes enough (docs/slo.md)",
                yellow=True,
            )
        unsettled = [p.id for p in points if p.verdicts is not None and p.verdicts.energy == INCONCLUSIVE]
        if unsettled and sweep.settings.inconclusive != "pass":
            most = sweep.settings.max_repeats
            more = (
                f"at most {most} repeats could not settle it (raise --greenllm-max-repeats)"
                if sweep.settings.auto_repeats
                else "more repeats, or --greenllm-repeats=auto, would settle it"
            )
            terminalreporter.write_line(
                f"greenllm: energy verdict inconclusive at {', '.join(unsettled)}: the repeats are too "
                f"few for their noise; {more} (docs/gate.md)",
                yellow=True,
            )
        new, gone = sweep.results.baseline_coverage(order)
        if new:
            terminalreporter.write_line(f"greenllm: not in the baseline, not compared: {', '.join(new)}")
        if gone:
            terminalreporter.write_line(f"greenllm: in the baseline, not measured now: {', '.join(gone)}")
        if self.role == "controller":
            workers = len(set(self._workers.values()))
            terminalreporter.write_line(
                f"greenllm: {count_of(len(self._workers), 'point')} measured by "
                f"{count_of(workers, 'pytest-xdist worker')}, each engine configuration on one"
            )
        else:  # the controller's driver built nothing: its workers' did
            for line in self.driver.summary_lines(len(sweep.matrix.engine_configs)):
                terminalreporter.write_line(f"greenllm: {line}")
        for path in self.written:
            terminalreporter.write_line(f"greenllm: report written: {path}")
        for path, why in self.write_failures:
            kept = ", ".join(str(p) for p in [sweep.results.journal.path, *self.written])
            terminalreporter.write_line(
                f"greenllm: could not write {path} ({why}); every point is kept in {kept}", red=True
            )
        if sweep.results.journal.path.exists():
            terminalreporter.write_line(f"greenllm: journal: {sweep.results.journal.path}")

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Iterator[None]:
        yield
        failures = item.stash.get(verdict_failures_key, [])
        if failures:
            pytest.fail("\n".join(failures), pytrace=False)

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if POINT_FIXTURE not in metafunc.fixturenames:
            return
        points = self.sweep.matrix.points
        if not points:
            skipped = pytest.param(None, marks=pytest.mark.skip(reason=NO_POINTS_REASON))
            metafunc.parametrize(POINT_FIXTURE, [skipped], ids=["no-points"], indirect=True)
            return
        metafunc.parametrize(POINT_FIXTURE, points, ids=[p.id for p in points], indirect=True)

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(self, session: pytest.Session, items: list[pytest.Item]) -> None:
        if self.builtin_sweep and not _names_tests(session.config):
            # The sweep ships in the package: collected here, it runs in any folder, even
            # one without tests of its own, and -k, -m and the grouping below see it.
            module = pytest.Module.from_parent(session, path=BUILTIN_SWEEP, nodeid=BUILTIN_NODEID)
            items.extend(i for i in session.genitems(module) if isinstance(i, pytest.Item))
        results = self.sweep.results
        for item in items:
            point = point_of(item)
            if point is not None and point.id in results.resumed:
                item.add_marker(
                    pytest.mark.skip(reason=f"greenllm: measured before, kept from {results.journal.path}")
                )
        items[:] = group_by_engine(items, _engine_key)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        planned = [i for i in session.items if point_of(i) is not None and not i.get_closest_marker("skip")]
        self._point_items = {i.nodeid: i for i in planned}
        self.progress = Progress([_engine_key(i) for i in planned])

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        if nodeid in self._point_items:
            self._started[nodeid] = time.monotonic()

    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        item = self._point_items.get(nodeid)
        if item is None or nodeid not in self._started:
            return
        progress = self.progress
        had_estimate = progress.remaining_s() is not None
        duration = time.monotonic() - self._started.pop(nodeid)
        progress.finished(_engine_key(item), duration, item.stash.get(build_time_key, None))
        reporter = item.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None or item.config.get_verbosity() < 0:
            return
        if not had_estimate and (estimate := progress.estimate_line()) is not None:
            reporter.write_line(f"greenllm: {estimate}")
        record = item.stash.get(point_record_key, None)
        line = progress.point_line(record) if record is not None else progress.failed_line(nodeid)
        reporter.write_line(f"greenllm: {line}")

    def received(self, record: PointRecord, worker: str) -> str:
        """A point a parallel worker finished: journaled at once; returns its progress line."""
        self.sweep.results.keep(record)
        self._workers[record.id] = worker
        self.progress.finished(record.point.engine, 0.0, None)
        return f"{self.progress.point_line(record)} ({worker})"

    def lease_for(self, point: KnobPoint, on_wait: Callable[[str], None] = lambda message: None) -> None:
        """Hold the GPUs of the point's engine configuration, where the sweep leases GPUs:
        the engine of the lease before is shut down first, as it runs on those GPUs.
        ``on_wait`` hears, once, why a lease has to wait."""
        if self.sweep.leases is None or point.engine == self._leased_engine:
            return
        self._live_engine = None
        self.driver.close()
        self._leased_engine = None
        self.sweep.lease(point.tp, on_wait)
        self._leased_engine = point.engine

    def engine_for(self, spec: EngineSpec) -> tuple[object, float | None]:
        """The driver's engine for ``spec``, and the seconds it took to build (None: reused)."""
        start = time.monotonic()
        engine = self.driver.engine(spec)
        built = spec.config != self._live_engine
        self._live_engine = spec.config
        return engine, (time.monotonic() - start) if built else None

    def engine_failed(self) -> None:
        """Close the failed engine; the next point builds a fresh one."""
        self._live_engine = None
        self.driver.close()


session_key = pytest.StashKey[GreenLLMSession]()
# A point's SLO and regression findings, failed after the test body in pytest_runtest_call.
verdict_failures_key = pytest.StashKey[list[str]]()
# What a point item measured, and how long its engine took to build, for the progress line.
point_record_key = pytest.StashKey[PointRecord]()
build_time_key = pytest.StashKey[float | None]()
