"""``pytest --greenllm -n N``: points on disjoint GPUs measured side by side (pytest-xdist).

Whole engine configurations go to a worker (a ``LoadScopeScheduling`` whose scope is the
point's engine configuration), so an engine is built once, as in a serial run. Each worker leases the GPUs
of its engine before building it (``devices/leases.py``) and changes and measures only
those. Idle power as found is measured once, by the controller, before any worker starts,
and handed to every worker: a worker measuring it itself would see its neighbours' load. The
idle of a clock or power limit a worker sets is measured by that worker, at rest, on its own
leased GPUs.

Only the controller writes the journal and the report. A worker attaches each finished
point's record to its test report, which xdist sends to the controller as soon as the test
ends; the controller journals it at once, so a kill of any process loses no finished point.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from pytest_greenllm.meter import IdleState
from pytest_greenllm.progress import Progress
from pytest_greenllm.record import PointRecord
from pytest_greenllm.session import GreenLLMSession, point_record_key, xdist_group

# Where a finished point's record travels from a worker to the controller.
RECORD_ATTR = "greenllm_record"
# The controller's idle measurement, in every worker's workerinput.
IDLE_KEY = "greenllm_idle"


def is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def distributes(config: pytest.Config) -> bool:
    """Whether this is the controller of a pytest-xdist run (``-n N`` with N > 0)."""
    return not is_worker(config) and config.getoption("dist", "no") != "no"


def engine_scope(nodeid: str, groups: dict[str, str]) -> str:
    """The scope of a test: its point's engine configuration (``groups``: point id to
    configuration), found in its parametrization id; a test of no point is its own."""
    start, end = nodeid.find("["), nodeid.rfind("]")
    if start < 0 or end < start:
        return nodeid
    params = nodeid[start + 1 : end]
    # The point id may share the brackets with the test's own parameters ('S-tp1-...-x').
    found = [point for point in groups if f"-{point}-" in f"-{params}-"]
    return groups[max(found, key=len)] if found else nodeid


def idle_from(config: pytest.Config) -> IdleState | None:
    """The idle power a worker was handed by its controller, if any."""
    data: dict[str, Any] | None = getattr(config, "workerinput", {}).get(IDLE_KEY)
    if data is None:
        return None
    return IdleState(dict(data["power_w"]), {k: int(v) for k, v in data["temperature_c"].items()})


class ParallelController:
    """The controller's hooks: idle power out to the workers, finished points in."""

    def __init__(self, session: GreenLLMSession, config: pytest.Config) -> None:
        self.session = session
        self.config = config
        # The controller collects nothing: its plan is the matrix, less what was resumed.
        sweep = session.sweep
        session.progress = Progress(
            [p.engine for p in sweep.matrix.points if p.id not in sweep.results.resumed]
        )

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        """xdist's scope scheduling, the scope an engine configuration. (Its ``loadgroup``
        would do, but it renames items through an attribute pytest 9 no longer reads.)"""
        from xdist.scheduler import LoadScopeScheduling

        groups = {p.id: xdist_group(p.engine) for p in self.session.sweep.matrix.points}

        class EngineScheduling(LoadScopeScheduling):  # type: ignore[misc]
            def _split_scope(self, nodeid: str) -> str:
                return engine_scope(nodeid, groups)

        return EngineScheduling(config, log)

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        sweep = self.session.sweep
        meter = sweep.meter_or_none()  # measures idle power once, before any worker runs
        if meter is not None and meter.idle is not None:
            idle = meter.idle
            node.workerinput[IDLE_KEY] = {"power_w": idle.power_w, "temperature_c": idle.temperature_c}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = getattr(report, RECORD_ATTR, None)
        if data is None:
            return
        gateway = getattr(getattr(report, "node", None), "gateway", None)
        line = self.session.received(PointRecord.from_json(data), getattr(gateway, "id", "a worker"))
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        verbosity = self.config.get_verbosity()
        if reporter is not None and verbosity >= 0:
            # xdist's progress dot for this test is just written, with no line ended after
            # it (-v writes whole lines).
            reporter.write(("" if verbosity > 0 else "\n") + f"greenllm: {line}\n")


class ParallelWorker:
    """A worker's hook: each finished point's record rides on its test's report."""

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        record = item.stash.get(point_record_key, None)
        if record is not None and report.when == "call":
            setattr(report, RECORD_ATTR, record.to_json())
        return report
