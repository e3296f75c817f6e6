"""vLLM's OpenAI-compatible server as a subprocess: one per engine configuration.

The server is started in a process group of its own: vLLM's API server spawns an
EngineCore process (and a worker per rank for TP>1), and only a signal to the whole group
reaches them all, so that stopping a server leaves no process behind holding memory or
cores. The server is also out of the terminal's reach (a Ctrl-C goes to our group only), so
every live server is stopped on SIGINT, SIGTERM and at interpreter exit, the way
``devices.guard.ClockGuard`` puts clocks back.

vLLM is never imported here: the server's command line is built from the same
``engine.engine_kwargs`` that the offline engine gets.
"""

from __future__ import annotations

import atexit
import http.client
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import psutil

from pytest_greenllm.driver import EngineFailed, EngineSpec
from pytest_greenllm.engine import engine_kwargs

HOST = "127.0.0.1"
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
HEALTH_TIMEOUT_S = 600.0
# One try of GET /health. A server that accepted the connection answers at once; a longer
# wait would only delay noticing that the process died.
HEALTH_TRY_TIMEOUT_S = 2.0
# On SIGTERM vLLM aborts what is in flight and stops its EngineCore and workers within a
# second or two; a server still there after this is stuck, and its group is killed.
STOP_TIMEOUT_S = 30.0
# After SIGKILL the kernel tears processes down within milliseconds; this only bounds a wait
# that should never be reached.
KILL_WAIT_S = 10.0
LOG_TAIL_LINES = 20
# vLLM logs every request; the tail never needs more than the end of the file.
LOG_TAIL_BYTES = 256 * 1024
ADDRESS_IN_USE = "address already in use"

# vLLM's plain store_true flags: no --no-<flag> form exists, and False is their default,
# so False is left out rather than written as a flag vLLM would reject.
FLAGS_WITHOUT_NO_FORM = frozenset(
    {
        "disable_log_stats",
        "headless",
        "grpc",
        "data_parallel_multi_port_external_lb",
        "aggregate_engine_logging",
    }
)

# Ports free_port handed out: one just handed out may be picked again by the kernel before
# its server binds it (vLLM binds only after seconds of imports).
_handed_out: set[int] = set()
_FREE_PORT_TRIES = 100


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on, not handed out before by this process."""
    for _ in range(_FREE_PORT_TRIES):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise OSError(f"no free TCP port on {HOST} after {_FREE_PORT_TRIES} tries")


def engine_flags(kwargs: Mapping[str, Any]) -> list[str]:
    """vLLM command-line flags for engine arguments: ``max_num_seqs=4`` becomes
    ``--max-num-seqs 4``, True a bare flag, False its ``--no-`` form, None nothing."""
    flags: list[str] = []
    for key, value in kwargs.items():
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            if value:
                flags.append(flag)
            elif key not in FLAGS_WITHOUT_NO_FORM:
                flags.append("--no-" + flag[2:])
        elif isinstance(value, list | tuple):
            if not value:
                raise EngineFailed(f"engine argument {key}=[]: vLLM's server takes no empty list")
            # vLLM parses list arguments as one word per element (argparse nargs="+").
            flags += [flag, *(_word(v) for v in value)]
        else:
            flags += [flag, _word(value)]
    return flags


def _word(value: Any) -> str:
    # Strings go as they are (a JSON-quoted model name would not be found); dicts and
    # config objects are JSON, which vLLM parses.
    return value if isinstance(value, str) else json.dumps(value)


def server_command(spec: EngineSpec, port: int, cpu: bool) -> list[str]:
    """The command that serves ``spec`` on ``port``, with the engine arguments that the
    offline engine gets (``engine.engine_kwargs``)."""
    kwargs = engine_kwargs(spec, cpu)
    model = kwargs.pop("model")
    served = [sys.executable, "-m", SERVER_MODULE, "--host", HOST, "--port", str(port)]
    return [*served, "--model", str(model), *engine_flags(kwargs)]


def _group_pids(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that still run (zombies, dead already, are left out)."""
    pids = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                pids.append(proc.pid)
        except (OSError, psutil.Error):
            continue  # gone meanwhile
    return pids


def _listens_on(pgid: int, port: int) -> bool:
    """Whether a process of group ``pgid`` listens on ``port``."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.Error:
        return True  # cannot tell: trust the health check
    for conn in connections:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr[1] == port and conn.pid:
            try:
                if os.getpgid(conn.pid) == pgid:
                    return True
            except OSError:
                continue
    return False


class ServerProcess:
    """One server subprocess: started until healthy, stopped with every process it spawned.

    ``env`` is added to this process's environment. The server's output is appended to
    ``log_path``; failures quote its tail.
    """

    def __init__(
        self,
        command: list[str],
        port: int,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        health_timeout_s: float = HEALTH_TIMEOUT_S,
        poll_s: float = 0.5,
        stop_timeout_s: float = STOP_TIMEOUT_S,
    ) -> None:
        self.command = list(command)
        self.port = port
        self.url = f"http://{HOST}:{port}"
        self.log_path = log_path
        self.env = dict(env or {})
        self.health_timeout_s = health_timeout_s
        self.poll_s = poll_s
        self.stop_timeout_s = stop_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._returncode: int | None = None
        self._log_offset = 0  # where this start's output begins in the appended log
        # A forked child inherits this object and the exit handlers; only the process that
        # started the server may stop it from those.
        self._owner_pid = os.getpid()

    def __repr__(self) -> str:
        return f"ServerProcess({self.url}, pid={self.pid})"

    @property
    def pid(self) -> int | None:
        """The server's pid, also its process group's id; None when not started."""
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """How the last started server ended (negative: killed by that signal); None while
        it runs or before it started."""
        if self._proc is not None:
            return self._proc.poll()
        return self._returncode

    def start(self) -> None:
        """Start the server and wait until ``GET /health`` answers 200; EngineFailed, with
        the log's tail, if it exits first or is not healthy within ``health_timeout_s``.
        Nothing to do while it runs."""
        if self.alive():
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env}
        # A block-buffered stdout would lose the last lines of a server that is killed.
        env.setdefault("PYTHONUNBUFFERED", "1")
        with self.log_path.open("ab") as log:
            # Several starts share a log: mark where this one begins, and tail from there.
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"--- greenllm {stamp}: {shlex.join(self.command)}\n".encode())
            log.flush()
            self._log_offset = log.tell()
            self._owner_pid = os.getpid()
            _install()
            # A signal between Popen and the registration would find no server to stop and
            # leave this one running: its handler waits until the server is registered.
            with _signals_deferred(), _lock:
                self._proc = subprocess.Popen(
                    self.command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
                _servers.add(self)
        try:
            self._wait_until_healthy()
        except BaseException:
            self.stop()
            raise

    def _wait_until_healthy(self) -> None:
        proc = self._proc
        if proc is None:
            raise EngineFailed("the vLLM server was stopped while it started")
        deadline = time.monotonic() + self.health_timeout_s
        while True:
            code = proc.poll()
            if code is not None:
                raise self._failure(f"{self._ended(code)} before it was healthy")
            if self._healthy() and _listens_on(proc.pid, self.port):
                # Another server on a taken port answers /health too; ours must be the one
                # listening, or it is still starting (and will fail to bind).
                return
            if time.monotonic() >= deadline:
                raise self._failure(f"the vLLM server was not healthy after {self.health_timeout_s:g} s")
            time.sleep(self.poll_s)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=HEALTH_TRY_TIMEOUT_S) as response:
                return bool(response.status == 200)
        except (OSError, http.client.HTTPException):
            return False  # not listening yet, not ready (503), or not speaking HTTP

    @staticmethod
    def _ended(code: int) -> str:
        if code < 0:
            try:
                return f"the vLLM server was killed by {signal.Signals(-code).name}"
            except ValueError:
                pass
        return f"the vLLM server exited with code {code}"

    def _failure(self, cause: str) -> EngineFailed:
        tail = self.log_tail(LOG_TAIL_LINES)
        if ADDRESS_IN_USE in tail.lower():
            cause += f": port {self.port} is already in use ({ADDRESS_IN_USE})"
        self.stop()
        return EngineFailed(f"{cause}; the last lines of {self.log_path}:\n{tail}")

    def alive(self) -> bool:
        """Whether the server process runs."""
        return self._proc is not None and self._proc.poll() is None

    def serving(self, within_s: float) -> bool:
        """Whether the server runs and answers ``/health``, waiting up to ``within_s`` for
        the answer: a server whose engine died drops its connections before its process has
        exited."""
        deadline = time.monotonic() + within_s
        while self.alive():
            if self._healthy():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(self.poll_s)
        return False

    def stop(self) -> None:
        """Stop the server and every process it spawned: SIGTERM to its group, SIGKILL after
        ``stop_timeout_s``. Idempotent."""
        proc = self._proc
        if proc is None:
            return
        # Safe to run again from a signal handler that interrupted it: every step is.
        try:
            _signal_group(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + self.stop_timeout_s
            try:
                proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                pass
            # The EngineCore may outlive the API server by a moment: give it the same grace.
            while _group_pids(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
            kill_deadline = time.monotonic() + KILL_WAIT_S
            while _group_pids(proc.pid) and time.monotonic() < kill_deadline:
                time.sleep(0.05)
        finally:
            if self._proc is proc and proc.returncode is not None:
                self._returncode = proc.returncode
                self._proc = None
                with _lock:
                    _servers.discard(self)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines the server wrote since its last start."""
        try:
            with self.log_path.open("rb") as log:
                end = log.seek(0, os.SEEK_END)
                log.seek(max(self._log_offset, end - LOG_TAIL_BYTES))
                data = log.read()
        except OSError as e:
            return f"(cannot read {self.log_path}: {e.strerror})"
        text = data.decode("utf-8", errors="replace").rstrip("\n")
        return "\n".join(text.splitlines()[-lines:]) if lines > 0 else ""

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass  # the whole group is gone already
    except PermissionError:
        # Only a group whose members all died and whose id a process of another user took
        # again; nothing of ours is left in it.
        pass


# --- every live server is stopped however this process ends -------------------------------
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_lock = threading.RLock()  # re-entered by a signal handler that interrupts its holder
_servers: set[ServerProcess] = set()
_previous: dict[int, Any] = {}
_atexit_installed = False
_deferring = False  # the main thread is between Popen and the registration
_deferred: list[int] = []  # signals that arrived meanwhile


def live_servers() -> list[ServerProcess]:
    """The servers this process started and has not stopped yet."""
    with _lock:
        # A forked child inherits the registry; its parent's servers are not its own.
        return [s for s in _servers if s._owner_pid == os.getpid()]


def stop_all() -> None:
    """Stop every live server this process started."""
    for server in live_servers():
        server.stop()


def _in_main_thread() -> bool:
    # Only the main thread may set signal handlers, and only it runs them.
    return threading.current_thread() is threading.main_thread()


def _install() -> None:
    """Stop every live server at interpreter exit and on SIGINT/SIGTERM, then let the signal
    act. atexit once; the signal handlers on every start in the main thread where they are
    not ours any more (a start elsewhere has atexit only)."""
    global _atexit_installed
    with _lock:
        if not _atexit_installed:
            atexit.register(_stop_all_quietly)
            _atexit_installed = True
        if _in_main_thread():
            for signum in _SIGNALS:
                # Again where another handler took over since (the clock guard putting its
                # own previous one back): it becomes the one to chain to. Not where the
                # signal is ignored (SIGINT in a job started with `&`): the run goes on.
                current = signal.getsignal(signum)
                if current is not _on_signal and current != signal.SIG_IGN:
                    _previous[signum] = signal.signal(signum, _on_signal)


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Defer our SIGINT/SIGTERM handling to the end of the block.

    Only the main thread runs signal handlers: a start in another thread holds ``_lock``,
    which the handler waits for. Blocking the signals instead (pthread_sigmask) would not
    do: the server would inherit the mask and ignore our SIGTERM.
    """
    global _deferring
    if not _in_main_thread() or _deferring:
        yield
        return
    _deferring = True
    try:
        yield
    finally:
        _deferring = False
        while _deferred:
            _on_signal(_deferred.pop(0), None)


def _stop_all_quietly() -> None:
    for server in live_servers():
        try:
            server.stop()
        except Exception as e:
            # At exit or in a signal handler there is nobody to raise to.
            os.write(2, f"greenllm: stopping the vLLM server {server.url} failed: {e}\n".encode())


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _deferring:
        _deferred.append(signum)
        return
    _stop_all_quietly()
    previous: Callable[[int, FrameType | None], Any] | int | None = _previous.get(signum)
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
