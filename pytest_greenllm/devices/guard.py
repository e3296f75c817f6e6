"""The clock guard: whatever happens, locked clocks and changed power limits are put back.

Locked clocks outlive the process that set them, until reset, reboot or driver reload. So
before touching a GPU the guard writes a state file (which GPUs, what was set, by which
pid), and removes it once everything is reset: on teardown, on an exception, on SIGINT and
SIGTERM, at interpreter exit. A SIGKILL leaves the file behind; the next run, or
``greenllm reset-clocks``, finds it and resets those GPUs first.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from pytest_greenllm.devices.base import Gpu, nearest_clock
from pytest_greenllm.devices.errors import DeviceError, NotSupported
from pytest_greenllm.hints import LEAVE_CLOCKS_ONLY

STATE_ENV = "GREENLLM_STATE_FILE"
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


# pytest-xdist names each worker (gw0, gw1, ...) and the run they belong to in these.
WORKER_ENV = "PYTEST_XDIST_WORKER"
RUN_ENV = "PYTEST_XDIST_TESTRUNUID"


def state_files(state_path: Path) -> list[Path]:
    """Every state file of ``state_path``: its own, and one per pytest-xdist worker."""
    workers = sorted(state_path.parent.glob(f"{state_path.name}.gw*")) if state_path.parent.is_dir() else []
    return [p for p in (state_path, *workers) if p.exists() and not p.name.endswith(".tmp")]


def default_state_path() -> Path:
    """``$GREENLLM_STATE_FILE``, else the XDG state directory: clocks are machine-wide."""
    if os.environ.get(STATE_ENV):
        return Path(os.environ[STATE_ENV])
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "greenllm" / "locked-clocks.json"


class GpuLookup(Protocol):
    """Finds a GPU by UUID (an NvmlSession)."""

    def by_uuid(self, uuid: str) -> Gpu: ...


@dataclass
class Change:
    """What the guard changed on one GPU, as the state file records it."""

    index: int
    clock_mhz: int | None = None  # locked SM clock. Units: MHz.
    original_power_limit_mw: int | None = None  # set when the limit was changed. Units: mW.


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ClockGuard:
    """Locks clocks and power limits on GPUs, and always puts them back."""

    def __init__(self, lookup: GpuLookup, state_path: Path) -> None:
        self._lookup = lookup
        self.state_path = state_path
        # Parallel workers change their own GPUs: each records them in a file of its own.
        worker = os.environ.get(WORKER_ENV)
        self._own_path = state_path.with_name(f"{state_path.name}.{worker}") if worker else state_path
        self._run = os.environ.get(RUN_ENV)
        self._changes: dict[str, Change] = {}
        self._lock = threading.RLock()
        self._previous: dict[int, Any] = {}
        self._installed = False
        # A forked child inherits atexit and signal handlers; only the owner may restore.
        self._owner_pid = os.getpid()

    # --- the state file ------------------------------------------------------------------
    def _write_state(self) -> None:
        path = self._own_path
        if not self._changes:
            path.unlink(missing_ok=True)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        state: dict[str, Any] = {"pid": os.getpid()}
        if self._run is not None:
            state["run"] = self._run  # the parallel run this worker belongs to
        state["devices"] = {u: asdict(c) for u, c in self._changes.items()}
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, path)

    def recover_stale(self, force: bool = False) -> list[str]:
        """Reset the GPUs a killed run left changed; returns what was done, to print.

        A state file of a live process means another run is using the GPUs: that is an
        error unless ``force``. The other workers of this same run (pytest-xdist) change
        GPUs they leased, and are left alone.
        """
        done: list[str] = []
        for path in state_files(self.state_path):
            done.extend(self._recover(path, force))
        return done

    def _recover(self, path: Path, force: bool) -> list[str]:
        try:
            state = json.loads(path.read_text())
            pid = int(state["pid"])
            stale = {u: Change(**c) for u, c in state["devices"].items()}
        except FileNotFoundError:
            return []  # its worker finished meanwhile
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DeviceError(
                f"{path}: unreadable clock state file ({e}); check the GPUs with "
                "nvidia-smi, reset them with `greenllm reset-clocks --all`, then delete it"
            ) from e
        if pid == os.getpid():
            return []
        if pid_alive(pid) and not force:
            if self._run is not None and state.get("run") == self._run:
                return []
            raise DeviceError(
                f"another run (pid {pid}) holds locked clocks on {len(stale)} GPU(s) "
                f"({path}); wait for it, or stop it and run `greenllm reset-clocks`"
            )
        undone = [self._undo(uuid, change) for uuid, change in stale.items()]
        path.unlink(missing_ok=True)
        return [f"reset what a killed run (pid {pid}) left changed: {', '.join(undone)}"]

    def _undo(self, uuid: str, change: Change) -> str:
        gpu = self._lookup.by_uuid(uuid)
        if change.clock_mhz is not None:
            gpu.reset_clocks()
        if change.original_power_limit_mw is not None:
            gpu.set_power_limit_mw(change.original_power_limit_mw)
        return f"gpu{gpu.index}"

    # --- changing GPUs -------------------------------------------------------------------
    def lock_clocks(self, gpus: Sequence[Gpu], mhz: int) -> tuple[int, list[str]]:
        """Lock every GPU at the supported clock nearest ``mhz``; returns it and notes."""
        notes: list[str] = []
        snapped = mhz
        with self._lock:
            for gpu in gpus:
                supported = gpu.info.supported_clocks_mhz
                if not supported:
                    raise NotSupported(
                        f"GPU {gpu.index} ({gpu.info.name}) lists no supported clocks",
                        hint=LEAVE_CLOCKS_ONLY,
                    )
                snapped = nearest_clock(supported, mhz)
                if snapped != mhz:
                    notes.append(f"gpu{gpu.index}: {mhz} MHz snapped to {snapped} MHz")
                with self._recorded(gpu, "clock_mhz", snapped):
                    gpu.lock_clocks(snapped)
        return snapped, notes

    @contextmanager
    def _recorded(self, gpu: Gpu, field: str, value: int) -> Iterator[None]:
        """Record a change in the state file before making it: a kill between the two must
        leave a record. A change that fails is taken back out; an earlier one stays."""
        change = self._changes.setdefault(gpu.info.uuid, Change(gpu.index))
        previous = getattr(change, field)
        setattr(change, field, value)
        self._write_state()
        try:
            yield
        except DeviceError:
            setattr(change, field, previous)
            self._forget_unchanged(gpu.info.uuid)
            raise

    def set_power_limit(self, gpus: Sequence[Gpu], limit_mw: int) -> None:
        """Set the power limit of every GPU; NotSupported where it is outside a GPU's
        allowed range. Units: mW."""
        with self._lock:
            for gpu in gpus:
                low, high = gpu.info.power_limit_range_mw
                if not low <= limit_mw <= high:
                    raise NotSupported(
                        f"GPU {gpu.index}: a power limit of {limit_mw / 1000:g} W is outside "
                        f"its {low / 1000:g}-{high / 1000:g} W range"
                    )
                change = self._changes.get(gpu.info.uuid)
                original = change.original_power_limit_mw if change is not None else None
                # The first change's original is the one to put back, however many follow.
                if original is None:
                    original = gpu.power_limit_mw()
                with self._recorded(gpu, "original_power_limit_mw", original):
                    gpu.set_power_limit_mw(limit_mw)

    def _forget_unchanged(self, uuid: str) -> None:
        change = self._changes[uuid]
        if change.clock_mhz is None and change.original_power_limit_mw is None:
            del self._changes[uuid]
        self._write_state()

    def restore(self, clocks_only: bool = False) -> list[str]:
        """Reset every change (or only locked clocks, leaving power limits as they are);
        idempotent. Returns the GPUs reset."""
        with self._lock:
            done: list[str] = []
            failures: list[str] = []
            for uuid, change in list(self._changes.items()):
                if clocks_only:
                    if change.clock_mhz is None:
                        continue
                    change = Change(change.index, change.clock_mhz)
                try:
                    done.append(self._undo(uuid, change))
                except DeviceError as e:
                    failures.append(str(e))
                    continue
                if clocks_only:
                    self._changes[uuid].clock_mhz = None
                    self._forget_unchanged(uuid)
                else:
                    del self._changes[uuid]
            self._write_state()
            if failures:
                raise DeviceError(
                    "could not put back: "
                    + "; ".join(failures)
                    + f" (the record stays in {self._own_path}; run `greenllm reset-clocks`)"
                )
            return done

    @property
    def changed(self) -> bool:
        return bool(self._changes)

    # --- exit paths ----------------------------------------------------------------------
    def install(self) -> None:
        """Restore at interpreter exit and on SIGINT/SIGTERM, then let the signal act."""
        if self._installed:
            return
        atexit.register(self._restore_quietly)
        if threading.current_thread() is threading.main_thread():
            for signum in _SIGNALS:
                # An ignored signal (SIGINT in a job a shell started with `&`) ends nothing:
                # the run goes on, and so must its locked clocks.
                if signal.getsignal(signum) != signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._on_signal)
        self._installed = True

    def uninstall(self) -> None:
        """Undo :meth:`install` (after a final :meth:`restore`)."""
        if not self._installed:
            return
        atexit.unregister(self._restore_quietly)
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
        self._installed = False

    def _restore_quietly(self) -> None:
        if os.getpid() != self._owner_pid:
            return
        try:
            self.restore()
        except DeviceError as e:
            # At exit or in a signal handler there is nobody to raise to.
            os.write(2, f"greenllm: {e}\n".encode())

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._restore_quietly()
        previous: Callable[[int, FrameType | None], Any] | int | None = self._previous.get(signum)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
