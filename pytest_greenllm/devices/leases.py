"""GPU leases: no GPU serves two engines at once, whichever process builds them.

Points on disjoint GPUs can be measured at the same time (an energy counter is per GPU),
so parallel workers (``pytest -n``) and separate runs on one box (two CI jobs) share a
node. Each takes a lease on the GPUs of an engine before building it: an exclusive OS
file lock per GPU (``flock``), which the kernel releases when its holder dies, so a killed
run never leaves a GPU taken. A lease is all or nothing: a worker that cannot have every
GPU it needs holds none while it waits, so two workers never wait on each other.

Every lease and release is appended to ``leases.log`` beside the locks (JSON lines), so
that who held which GPU, and when, can be read afterwards.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

LOCK_DIR_ENV = "GREENLLM_LOCK_DIR"
LOG_NAME = "leases.log"
# How often a waiting worker tries again. Units: s.
POLL_S = 0.2


def default_lock_dir() -> Path:
    """``$GREENLLM_LOCK_DIR``, else one folder per machine in the temporary directory:
    every run on the box must see the same locks."""
    given = os.environ.get(LOCK_DIR_ENV)
    return Path(given) if given else Path(tempfile.gettempdir()) / "greenllm-gpu-locks"


class GpuLeases:
    """Leases on GPUs known by their UUIDs, in CUDA's order; one lease held at a time."""

    def __init__(
        self,
        uuids: Sequence[str],
        directory: Path | None = None,
        who: str = "",
        poll_s: float = POLL_S,
        on_wait: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.uuids = list(uuids)
        self.directory = directory or default_lock_dir()
        self.who = who or f"pid {os.getpid()}"  # in the log and in the wait message
        self.poll_s = poll_s
        self.on_wait = on_wait  # told once per lease that had to wait, with who holds what
        self._held: dict[int, IO[str]] = {}

    @property
    def held(self) -> list[int]:
        """The indices (into ``uuids``) of the GPUs leased now, ascending."""
        return sorted(self._held)

    def acquire(self, count: int) -> list[int]:
        """Lease ``count`` GPUs (the first free ones), waiting until that many are free;
        the lease held before is released first. Returns their indices."""
        if count > len(self.uuids):
            raise ValueError(f"{count} GPUs asked for, {len(self.uuids)} exist")
        self.release()
        self.directory.mkdir(parents=True, exist_ok=True)
        told = False
        while True:
            for index in range(len(self.uuids)):
                if len(self._held) == count:
                    break
                handle = self._try_lock(index)
                if handle is not None:
                    self._held[index] = handle
            if len(self._held) == count:
                self._log("lease")
                return self.held
            # All or nothing: holding some while waiting for more could deadlock two workers.
            self._unlock_all()
            if not told:
                told = True
                self.on_wait(f"{self.who} waits for {count} free GPU(s): {self._holders()}")
            time.sleep(self.poll_s)

    def release(self) -> None:
        """Give the lease back (nothing if none is held)."""
        if self._held:
            self._log("release")
            self._unlock_all()

    def _lock_path(self, index: int) -> Path:
        return self.directory / f"{self.uuids[index]}.lock"

    def _try_lock(self, index: int) -> IO[str] | None:
        handle = self._lock_path(index).open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        # Who holds it, for the message of a run that waits.
        handle.seek(0)
        handle.truncate()
        handle.write(self.who)
        handle.flush()
        return handle

    def _unlock_all(self) -> None:
        for handle in self._held.values():
            handle.seek(0)
            handle.truncate()  # no holder named for a free GPU
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
        self._held.clear()

    def _holders(self) -> str:
        holders = []
        for index in range(len(self.uuids)):
            path = self._lock_path(index)
            try:
                holder = path.read_text(encoding="utf-8").strip()
            except OSError:
                holder = ""
            holders.append(f"gpu{index}: {holder or 'free'}")
        return ", ".join(holders)

    def _log(self, event: str) -> None:
        line = {
            "t": time.time(),
            "event": event,
            "who": self.who,
            "pid": os.getpid(),
            "gpus": self.held,
            "uuids": [self.uuids[i] for i in self.held],
        }
        # One short line in one write: appends of whole lines do not interleave.
        with (self.directory / LOG_NAME).open("a", encoding="utf-8") as log:
            log.write(json.dumps(line) + "\n")

    def close(self) -> None:
        self.release()
