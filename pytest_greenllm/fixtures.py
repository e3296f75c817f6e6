"""The fixtures that benchmark tests are written with."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pytest_greenllm.config import Settings, settings_key
from pytest_greenllm.devices.nvml import NvmlGpu
from pytest_greenllm.engine import EngineFailed
from pytest_greenllm.knobs import KnobPoint
from pytest_greenllm.meter import EnergyMeter
from pytest_greenllm.options import POINT_FIXTURE
from pytest_greenllm.runner import PointResult, measure_point, result_properties
from pytest_greenllm.session import (
    SKIP_REASON,
    GreenLLMSession,
    session_key,
    verdict_failures_key,
)


@pytest.fixture
def greenllm_point(request: pytest.FixtureRequest) -> KnobPoint:
    """The knob point of this test item; one item is generated per point of the matrix."""
    point: KnobPoint = request.param
    return point


@pytest.fixture(scope="session")
def greenllm_settings(pytestconfig: pytest.Config) -> Settings:
    """The validated knob settings of this session."""
    return pytestconfig.stash[settings_key]


@pytest.fixture(scope="session")
def greenllm_session(pytestconfig: pytest.Config) -> GreenLLMSession:
    """The run-wide state: device, matrix, meter."""
    return pytestconfig.stash[session_key]


@pytest.fixture(scope="session")
def gpu_devices(greenllm_session: GreenLLMSession) -> list[NvmlGpu]:
    """The GPUs this session measures (those CUDA_VISIBLE_DEVICES leaves visible)."""
    backend = greenllm_session.require_backend()
    if not backend.gpus:
        pytest.skip(f"no GPUs: device={backend.kind}")
    return backend.gpus


@pytest.fixture(scope="session")
def energy_meter(greenllm_session: GreenLLMSession) -> EnergyMeter:
    """The session's energy meter (idle power measured once); skips where there is none."""
    return greenllm_session.meter()


@pytest.fixture
def locked_clocks(request: pytest.FixtureRequest, greenllm_session: GreenLLMSession) -> Iterator[int | None]:
    """Lock the SM clock of every GPU for one test and reset it after, however it ends.

    The clock is the knob point's (``greenllm_point``, on its ``tp`` GPUs), or the parameter of an indirect
    parametrization (``@pytest.mark.parametrize("locked_clocks", [1410], indirect=True)``);
    None leaves the clocks alone. Yields the clock actually locked (snapped to a supported
    one). Skips, with what to do, where clocks cannot be locked.
    """
    mhz: int | None = None
    tp: int | None = None
    if hasattr(request, "param"):
        mhz = request.param
    elif POINT_FIXTURE in request.fixturenames:
        point: KnobPoint = request.getfixturevalue(POINT_FIXTURE)
        mhz, tp = point.freq_mhz, point.tp
    with greenllm_session.point_clocks(mhz, tp) as locked:
        yield locked


@pytest.fixture
def greenllm_engine(greenllm_point: KnobPoint, greenllm_session: GreenLLMSession) -> Any:
    """The ``vllm.LLM`` for this point's engine configuration, shared by points that have it."""
    try:
        return greenllm_session.engines.get(greenllm_session.engine_spec(greenllm_point))
    except EngineFailed as e:
        failure = str(e)
    greenllm_session.engines.close()
    pytest.fail(failure, pytrace=False)


@pytest.fixture
def greenllm_result(
    request: pytest.FixtureRequest,
    greenllm_point: KnobPoint,
    greenllm_session: GreenLLMSession,
    locked_clocks: int | None,
) -> PointResult:
    """Measure this point: warm-up, then every repeat inside an energy window, then judge it.

    The result goes to the journal at once and to the report at the end, its key figures
    into the test's ``user_properties`` (and so into ``--junitxml``) and, when the test
    uses pytest-benchmark's ``benchmark`` fixture, into ``benchmark.extra_info``. A missed
    SLO or an energy regression fails the test (after its body ran) with one line per
    finding. An engine failure
    fails this point with vLLM's message; the next point gets a fresh engine.
    """
    __tracebackhide__ = True
    session = greenllm_session
    results = session.results
    if results is None:
        pytest.skip(SKIP_REASON)
    failure: str | None = None
    try:
        result = measure_point(
            session, session.engines, session.engine_spec(greenllm_point), greenllm_point, locked_clocks
        )
    except EngineFailed as e:
        failure = f"{greenllm_point.id}: {e}"
    if failure is not None:
        # A fresh engine for the next point; the failure is reported outside the except
        # block so that it reads as vLLM's message, not as a chain of three.
        session.engines.close()
        pytest.fail(failure, pytrace=False)
    record, verdict = results.record(result)
    properties = result_properties(result, record)
    request.node.user_properties.extend(properties)
    if "benchmark" in request.fixturenames:
        request.getfixturevalue("benchmark").extra_info.update(dict(properties))
    # Judged when the test body has run, so that a verdict fails the test, not its setup.
    request.node.stash[verdict_failures_key] = verdict.failures(greenllm_point.id)
    return result
