"""Notice an engine that died or stalled during a run, and end the run with the cause.

When vLLM's EngineCore process dies (the OOM killer, a GPU Xid error, a segfault), its
client marks the engine dead and shuts down, but ``LLM.llm_engine.step()`` stays blocked on
an output queue that nothing fills any more: a sweep would hang until CI's job timeout. A
watchdog thread checks the engine's processes and the time since the last output; when one
died, or no output came for longer than the pace so far allows, it puts the cause into that
queue, so the blocked step raises and the point fails with the cause.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

STALL_FLOOR_S = 120.0  # no step of a healthy engine is slower than this
STALL_PACE_FACTOR = 20.0  # nor twenty times slower than its slowest step so far
POLL_S = 0.5


class EngineDied(RuntimeError):
    """What the watchdog puts into the engine's output queue; the message is the cause."""


@dataclass
class Pace:
    """How long one engine's steps take: a slow step is not a stalled one."""

    stall_timeout_s: float | None = None  # the option; None: from the pace
    slowest_step_s: float = 0.0

    def limit_s(self) -> float:
        """How long a step may take before the engine counts as stalled. Units: s."""
        if self.stall_timeout_s is not None:
            return self.stall_timeout_s
        return max(STALL_FLOOR_S, STALL_PACE_FACTOR * self.slowest_step_s)

    def step(self, seconds: float) -> None:
        self.slowest_step_s = max(self.slowest_step_s, seconds)


def exit_text(code: int) -> str:
    """'was killed by SIGKILL (the OOM killer, or a kill)', 'exited with code 1'."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        why = " (the OOM killer, or a kill)" if -code == signal.SIGKILL else ""
        return f"was killed by {name}{why}"
    return f"exited with code {code}"


def dead_process(llm: Any) -> str | None:
    """Which of the engine's processes has exited, and how; None while all live."""
    client = llm.llm_engine.engine_core
    manager = getattr(getattr(client, "resources", None), "engine_manager", None)
    for process in getattr(manager, "processes", None) or ():
        code = process.exitcode
        if code is not None:
            return f"the engine process {process.name} (pid {process.pid}) {exit_text(code)}"
    return None


class Watchdog:
    """Watches one run of ``llm``; ``cause`` says why it ended the run, if it did."""

    def __init__(self, llm: Any, pace: Pace, poll_s: float = POLL_S) -> None:
        self._llm = llm
        self._pace = pace
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._last = time.monotonic()
        self._idle = False
        self._queue: Any = getattr(llm.llm_engine.engine_core, "outputs_queue", None)
        self._thread = threading.Thread(target=self._watch, name="greenllm-watchdog", daemon=True)
        self.cause: str | None = None

    def progress(self, step_s: float) -> None:
        """A step returned after ``step_s`` seconds."""
        self._last = time.monotonic()
        self._pace.step(step_s)

    @contextmanager
    def idle(self) -> Iterator[None]:
        """The run waits for its next arrival: no output is due, so no stall can be."""
        self._idle = True
        try:
            yield
        finally:
            self._idle = False
            self._last = time.monotonic()

    def _watch(self) -> None:
        while not self._stop.wait(self._poll_s):
            cause = dead_process(self._llm)
            waited = time.monotonic() - self._last
            limit = self._pace.limit_s()
            if cause is None and not self._idle and waited > limit:
                cause = (
                    f"no output for {waited:.0f} s, beyond the stall timeout of {limit:.0f} s "
                    "(the stall-timeout option sets it)"
                )
            if cause is not None:
                self.cause = cause
                self._queue.put_nowait(EngineDied(cause))
                return

    def __enter__(self) -> Watchdog:
        # Without vLLM's output queue (an in-process client) a blocked step cannot be woken:
        # the engine then runs unwatched, as before.
        if self._queue is not None:
            self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
