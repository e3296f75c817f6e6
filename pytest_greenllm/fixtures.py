"""The fixtures that benchmark tests are written with."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, NoReturn, TypeVar

import pytest

from pytest_greenllm.bench import benchmark_rounds
from pytest_greenllm.config import Settings, settings_key
from pytest_greenllm.devices.base import Gpu
from pytest_greenllm.driver import EngineFailed
from pytest_greenllm.knobs import KnobPoint
from pytest_greenllm.meter import EnergyMeter
from pytest_greenllm.options import POINT_FIXTURE, PYTEST_PREFIX
from pytest_greenllm.record import PointRecord, PointResult
from pytest_greenllm.runner import PointRun, measure, plain_rounds, result_properties
from pytest_greenllm.session import (
    SKIP_REASON,
    GreenLLMSession,
    build_time_key,
    point_record_key,
    session_key,
    verdict_failures_key,
)
from pytest_greenllm.sweep import PointSkipped, Sweep
from pytest_greenllm.warning_types import DroppedRepeatWarning, InconclusiveWarning, category

T = TypeVar("T")


@pytest.fixture
def greenllm_point(request: pytest.FixtureRequest) -> KnobPoint:
    """The knob point of this test item; one item is generated per point of the matrix.
    Its engine's GPUs are leased first, so that no other run or worker uses them."""
    point: KnobPoint = request.param
    session = request.config.stash.get(session_key, None)
    if session is not None:
        session.lease_for(point, lambda message: _tell(request.config, message))
    return point


def _tell(config: pytest.Config, message: str) -> None:
    """Say ``message`` on the terminal now, past pytest's capture of the test's output."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"greenllm: {message}")


@pytest.fixture(scope="session")
def greenllm_settings(pytestconfig: pytest.Config) -> Settings:
    """The validated knob settings of this session."""
    return pytestconfig.stash[settings_key]


@pytest.fixture(scope="session")
def greenllm_session(pytestconfig: pytest.Config) -> GreenLLMSession:
    """The run-wide state: the sweep (device, matrix, meter, results) and the driver."""
    session = pytestconfig.stash.get(session_key, None)
    if session is None:
        pytest.skip(SKIP_REASON)
    return session


def _warn(record: PointRecord, inconclusive: str) -> None:
    """Each measurement warning of the point's repeats, each repeat the gate left out, and
    (with ``inconclusive`` 'warn') each unsettled verdict, as a warning of its category
    (warning_types.py), so that ``-W error::pytest_greenllm.ShortWindowWarning`` and the
    like can fail a run on it."""
    seen: set[tuple[str, str]] = set()
    for repeat in record.repeats:
        if repeat.energy is None:
            continue
        kinds = repeat.energy.warning_kinds
        for index, text in enumerate(repeat.energy.warnings):
            kind = kinds[index] if index < len(kinds) else "other"
            if (kind, text) not in seen:
                seen.add((kind, text))
                warnings.warn(category(kind)(f"{record.id}: {text}"), stacklevel=2)
    if record.verdicts is None:
        return
    for regression in record.verdicts.regressions:
        if any(regression.dropped):
            base, head = regression.dropped
            warnings.warn(
                DroppedRepeatWarning(
                    f"{record.id}: {regression.metric}: {base} baseline and {head} repeats measured no "
                    "energy (0 J: a window shorter than the counter's updates) and were left out"
                ),
                stacklevel=2,
            )
    if inconclusive == "warn":
        for line in record.verdicts.unsure(record.id):
            warnings.warn(InconclusiveWarning(line), stacklevel=2)


def _skip(e: PointSkipped) -> NoReturn:
    pytest.skip(e.render(PYTEST_PREFIX))


@pytest.fixture(scope="session")
def gpu_devices(greenllm_session: GreenLLMSession) -> Sequence[Gpu]:
    """The GPUs this session measures (those CUDA_VISIBLE_DEVICES leaves visible)."""
    backend = greenllm_session.sweep.backend
    if not backend.gpus:
        pytest.skip(f"no GPUs: device={backend.kind}")
    return backend.gpus


@pytest.fixture(scope="session")
def energy_meter(greenllm_session: GreenLLMSession) -> EnergyMeter:
    """The session's energy meter; skips where there is none. Idle power as found is measured
    once, and each clock or power-limit state's when the meter is next asked for in it."""
    try:
        return greenllm_session.sweep.meter()
    except PointSkipped as e:
        _skip(e)


def _asked(request: pytest.FixtureRequest, field: str) -> tuple[Any, int | None]:
    """The value a device fixture is asked to set and on how many GPUs (None: all): the
    parameter of an indirect parametrization, else the knob point's ``field`` on its ``tp``
    GPUs, else None (leave the device alone)."""
    if hasattr(request, "param"):
        return request.param, None
    if POINT_FIXTURE in request.fixturenames:
        point: KnobPoint = request.getfixturevalue(POINT_FIXTURE)
        return getattr(point, field), point.tp
    return None, None


@contextmanager
def _changed(sweep: Sweep, change: Callable[[], T]) -> Iterator[T]:
    """Make a device change for one test (skipped, with what to do, where it cannot be
    made), and put the device back however the test ends; None: nothing was changed."""
    try:
        value = change()
    except PointSkipped as e:
        _skip(e)
    try:
        yield value
    finally:
        if value is not None:
            sweep.restore()


@pytest.fixture
def locked_clocks(request: pytest.FixtureRequest, greenllm_session: GreenLLMSession) -> Iterator[int | None]:
    """Lock the SM clock of every GPU for one test and reset it after, however it ends.

    The clock is the knob point's (``greenllm_point``, on its ``tp`` GPUs), or the parameter of an indirect
    parametrization (``@pytest.mark.parametrize("locked_clocks", [1410], indirect=True)``);
    None leaves the clocks alone. Yields the clock actually locked (snapped to a supported
    one). Skips, with what to do, where clocks cannot be locked.
    """
    mhz, tp = _asked(request, "freq_mhz")
    sweep = greenllm_session.sweep
    with _changed(sweep, lambda: sweep.lock_clocks(mhz, tp)) as locked:
        sweep.cool_down(tp)
        yield locked


@pytest.fixture
def power_limit(request: pytest.FixtureRequest, greenllm_session: GreenLLMSession) -> Iterator[float | None]:
    """Set the power limit of every GPU for one test and put it back after, however it ends.

    The limit, in whole W, is the knob point's (``greenllm_point``, on its ``tp`` GPUs), or
    the parameter of an indirect parametrization
    (``@pytest.mark.parametrize("power_limit", [300], indirect=True)``); None leaves it
    alone. Yields the limit the GPUs report once it is set, in W (None: left alone).
    Skips, with what to do, where the limit cannot be set.
    """
    watts, tp = _asked(request, "power_limit_w")
    sweep = greenllm_session.sweep
    with _changed(sweep, lambda: sweep.set_power_limit(watts, tp)) as limit_w:
        yield limit_w


@pytest.fixture
def greenllm_engine(
    request: pytest.FixtureRequest, greenllm_point: KnobPoint, greenllm_session: GreenLLMSession
) -> object:
    """The engine of this point's configuration (a ``vllm.LLM`` for the offline driver),
    shared by the points that have it."""
    try:
        engine, build_s = greenllm_session.engine_for(greenllm_session.sweep.engine_spec(greenllm_point))
    except EngineFailed as e:
        failure = str(e)
    else:
        if build_s is not None:
            request.node.stash[build_time_key] = build_s
        return engine
    greenllm_session.engine_failed()
    pytest.fail(failure, pytrace=False)


@pytest.fixture
def greenllm_result(
    request: pytest.FixtureRequest,
    greenllm_point: KnobPoint,
    greenllm_session: GreenLLMSession,
    locked_clocks: int | None,
    power_limit: float | None,
) -> PointResult:
    """Measure this point, at its clock and power limit: warm-up, then every repeat inside an
    energy window, then judge it.

    Each repeat is a round of pytest-benchmark's ``benchmark.pedantic`` (bench.py), where
    pytest-benchmark records and the test does not name ``benchmark`` itself; with
    ``--greenllm-repeats=auto``, repeats are added until the energy verdict against the
    baseline is settled. The result goes to the journal at once and to the report at the
    end, its key figures into the test's ``user_properties`` (and so into ``--junitxml``)
    and ``benchmark.extra_info``. A missed SLO or an energy regression (or an inconclusive
    one, with ``--greenllm-inconclusive=fail``) fails the test (after its body ran) with one
    line per finding. An engine failure fails this point with the engine's message; the
    next point gets a fresh engine.
    """
    __tracebackhide__ = True
    sweep, driver = greenllm_session.sweep, greenllm_session.driver
    meter = sweep.meter_or_none()
    sources, note = sweep.point_sources(greenllm_point) if meter is not None else (None, None)
    failure: str | None = None
    try:
        spec = sweep.engine_spec(greenllm_point)
        # Built here, not inside the first measured call, so that the progress line can tell
        # the engine's build time from the point's.
        _, build_s = greenllm_session.engine_for(spec)
        if build_s is not None:
            request.node.stash[build_time_key] = build_s
        passes = sweep.results.passes_for(greenllm_point)
        run = PointRun(
            sweep.settings, driver, meter, sources, spec, greenllm_point, locked_clocks, passes, note
        )
        bench = benchmark_rounds(request)
        result = measure(run, sweep.settings, sweep.results.settled, bench or plain_rounds)
    except EngineFailed as e:
        failure = f"{greenllm_point.id}: {e}"
    if failure is not None:
        # A fresh engine for the next point; the failure is reported outside the except
        # block so that it reads as the engine's message, not as a chain of three.
        greenllm_session.engine_failed()
        pytest.fail(failure, pytrace=False)
    result = replace(result, power_limit_w=power_limit)
    record = sweep.results.record(result)
    request.node.stash[point_record_key] = record
    properties = result_properties(record)
    if sweep.settings.junit_properties != "suite":  # else junit.py puts them at suite level
        request.node.user_properties.extend(properties)
    if bench is not None and bench.fixture is not None:
        bench.fixture.extra_info.update(dict(properties))
    elif "benchmark" in request.fixturenames:
        request.getfixturevalue("benchmark").extra_info.update(dict(properties))
    _warn(record, sweep.settings.inconclusive)
    # Judged when the test body has run, so that a verdict fails the test, not its setup.
    if record.verdicts is not None:
        request.node.stash[verdict_failures_key] = record.verdicts.failures(
            record.id, sweep.settings.inconclusive
        )
    return result
