"""pytest-benchmark's view of a knob point: each measured repeat is one round of
``benchmark.pedantic``, timed as the repeat's makespan (the cool-down before it runs in
pedantic's untimed ``setup``). Its users' habits then work on a sweep: ``--benchmark-json``,
``--benchmark-autosave``, ``--benchmark-compare``, ``pytest-benchmark compare`` and
github-action-benchmark's ``tool: 'pytest'``, each point's energy and latency figures in
``extra_info``.

greenllm asks for the ``benchmark`` fixture itself, at run time, rather than naming it in
the sweep's signature: a named fixture would let ``--benchmark-skip`` skip every point, and
with it the energy measurement. A test of your own that names ``benchmark`` keeps it for its
own use (pytest-benchmark allows one use a test): greenllm then only adds the point's
figures to its ``extra_info``. What pytest-benchmark's switches do:

- ``--benchmark-skip``: every point still runs and measures energy; pytest-benchmark records
  none of them (a test of your own that names ``benchmark`` is skipped by pytest-benchmark).
- ``--benchmark-disable``, and ``-n N`` (pytest-benchmark turns itself off under xdist):
  every point runs and measures energy, its repeats timed by greenllm alone;
  ``--benchmark-json`` gets no point.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

ON = "on"
DISABLED = "disabled"
SKIPPED = "skipped"
ABSENT = "absent"


def benchmark_state(config: pytest.Config) -> str:
    """ON, DISABLED, SKIPPED, or ABSENT where pytest-benchmark is not loaded (``-p no:benchmark``)."""
    # pytest-benchmark keeps its switches, as it resolved them (xdist included), on the
    # config; it offers no public accessor.
    session = getattr(config, "_benchmarksession", None)
    if session is None:
        return ABSENT
    if session.skip:
        return SKIPPED
    return DISABLED if session.disabled else ON


def header_line(state: str) -> str | None:
    """What the session header says about pytest-benchmark, where it does not record points."""
    if state == SKIPPED:
        return (
            "--benchmark-skip: every point still runs and measures energy; pytest-benchmark "
            "records none of them"
        )
    if state == DISABLED:
        return (
            "pytest-benchmark is disabled (--benchmark-disable, or -n): every point still runs "
            "and measures energy; --benchmark-json and --benchmark-autosave get no point"
        )
    return None


class BenchmarkRounds:
    """``runner.Rounds`` through this test's pytest-benchmark fixture: the first call is
    ``benchmark.pedantic`` (which may be called once per test); a sequential run's later
    repeats are added to the same statistics, timed with the same timer. The fixture is
    asked for at the first round, not before: one asked for by a point that failed before
    measuring would warn that it was never used."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self._request = request
        self.fixture: Any = None

    def __call__(self, target: Callable[[], object], setup: Callable[[], object], rounds: int) -> None:
        if self.fixture is None:
            self.fixture = self._request.getfixturevalue("benchmark")

            def untimed() -> None:
                # pedantic reads a value setup returns as the target's arguments.
                setup()

            self.fixture.pedantic(target, setup=untimed, rounds=rounds)
            return
        # The timer pedantic used (--benchmark-timer); the fixture keeps it as _timer.
        timer = getattr(self.fixture, "_timer", time.perf_counter)
        for _ in range(rounds):
            setup()
            start = timer()
            target()
            self.fixture.stats.stats.update(timer() - start)


def benchmark_rounds(request: pytest.FixtureRequest) -> BenchmarkRounds | None:
    """The rounds of this test's ``benchmark`` fixture; None where pytest-benchmark records
    nothing (see ``benchmark_state``), or where the test names ``benchmark`` itself: the
    fixture can be used once a test, and that test means to use it."""
    if benchmark_state(request.config) != ON or "benchmark" in request.fixturenames:
        return None
    return BenchmarkRounds(request)
