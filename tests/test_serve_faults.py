"""Serve mode's failures, end to end through the plugin: a sweep whose servers are
``fake_openai_server.py`` (an OpenAI-compatible stand-in that fails on demand), started by
the real ``VllmServeDriver``. Each failure fails only its point, with the cause, and every
finished point stays in the journal and the report.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

FAKE = Path(__file__).resolve().with_name("fake_openai_server.py")
# The fake's --mode per server start, comma-separated; the last one goes on for later starts.
MODES_ENV = "GREENLLM_TEST_SERVE_MODES"
# A port the first start is given (one the test holds); later starts get free ones.
BUSY_PORT_ENV = "GREENLLM_TEST_BUSY_PORT"
HEALTH_TIMEOUT_ENV = "GREENLLM_TEST_HEALTH_TIMEOUT_S"
REQUEST_TIMEOUT_ENV = "GREENLLM_TEST_REQUEST_TIMEOUT_S"
# Seconds between streamed tokens: 8 requests of 4 tokens, 4 at a time, take 0.2 s, a window
# longer than the fake energy counter's 100 ms update (a shorter one may read 0 J).
TOKEN_S = "0.025"

CONFTEST = f"""
import os
import sys

import pytest

from pytest_greenllm import serve_driver

FAKE = {str(FAKE)!r}
modes_started = []
_patch = pytest.MonkeyPatch()


def command(spec, port, cpu):
    modes = os.environ.get({MODES_ENV!r}, "ok").split(",")
    mode = modes[min(len(modes_started), len(modes) - 1)]
    modes_started.append(mode)
    model = ["--model", spec.model.path]
    return [sys.executable, FAKE, "--port", str(port), *model, "--mode", mode, "--token-s", {TOKEN_S!r}]


def pytest_configure(config):
    busy = os.environ.get({BUSY_PORT_ENV!r})
    if busy:
        ports = [int(busy)]
        real = serve_driver.free_port
        _patch.setattr(serve_driver, "free_port", lambda: ports.pop() if ports else real())
    # Whether vLLM is its CPU build: importing vLLM to tell takes seconds, and the fake
    # server needs none of the CPU settings.
    _patch.setattr(serve_driver, "cpu_build", lambda: False)


def pytest_unconfigure(config):
    _patch.undo()


def pytest_greenllm_make_driver(config, settings):
    return serve_driver.VllmServeDriver(
        log_dir=settings.json_path.parent.resolve(),
        command=command,
        health_timeout_s=float(os.environ.get({HEALTH_TIMEOUT_ENV!r}, "20")),
        request_timeout_s=float(os.environ.get({REQUEST_TIMEOUT_ENV!r}, "20")),
    )
"""

SWEEP = (
    "--greenllm",
    "--greenllm-mode=serve",
    "--greenllm-device=fake",
    "--greenllm-cooldown=0",
    "--greenllm-min-window=0",
    "--greenllm-tp=1",
    "--greenllm-freqs=1410",
    "--greenllm-slo=ttft_p99=none,tbt_p99=none",
    "--greenllm-json=out/report.json",
    "-p",
    "no:cacheprovider",
)
REQUESTS = 8  # per point: auto, twice the batch and at least 8, for batches 2 and 4


def fake_servers() -> list[int]:
    """Pids of fake OpenAI servers running on this machine."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            cmdline = process.info["cmdline"] or ()
        except psutil.Error:
            continue
        if any(FAKE.name in part for part in cmdline) and process.status() != psutil.STATUS_ZOMBIE:
            found.append(process.pid)
    return found


@pytest.fixture
def serve(pytester: pytest.Pytester, isolated_device: pytest.MonkeyPatch) -> Iterator[pytest.Pytester]:
    """A pytester directory whose serve-mode runs start fake OpenAI servers; none is left
    running afterwards."""
    monkeypatch = isolated_device
    for name in (
        MODES_ENV,
        BUSY_PORT_ENV,
        HEALTH_TIMEOUT_ENV,
        REQUEST_TIMEOUT_ENV,
    ):
        monkeypatch.delenv(name, raising=False)
    pytester.makeconftest(CONFTEST)
    before = set(fake_servers())
    yield pytester
    left = set(fake_servers()) - before
    for pid in left:  # not to disturb the next test; the assertion says it happened
        psutil.Process(pid).kill()
    assert not left, f"fake servers left running: {sorted(left)}"


def sweep(pytester: pytest.Pytester, *options: str) -> tuple[pytest.RunResult, float]:
    start = time.monotonic()
    result = pytester.runpytest(*SWEEP, *options)
    return result, time.monotonic() - start


def report(pytester: pytest.Pytester) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((pytester.path / "out" / "report.json").read_text())
    return loaded


def journal(pytester: pytest.Pytester) -> list[str]:
    """The ids of the points in the journal (its first line is a header)."""
    path = pytester.path / "out" / "report.json.journal.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [line["id"] for line in lines if "id" in line]


def point_ids(pytester: pytest.Pytester) -> list[str]:
    return [point["id"] for point in report(pytester)["points"]]


def server_logs(pytester: pytest.Pytester) -> list[Path]:
    return sorted((pytester.path / "out").glob("server-*.log"))


def only_repeat(point: dict[str, Any]) -> dict[str, Any]:
    [repeat] = point["repeats"]
    assert isinstance(repeat, dict)
    return repeat


def assert_measured(point: dict[str, Any], output_tokens: int) -> None:
    """A point whose every request completed with its forced length."""
    metrics = only_repeat(point)["metrics"]
    assert metrics["failed"] == 0, metrics["errors"]
    assert metrics["requests"] == REQUESTS
    assert metrics["output_tokens"] == REQUESTS * output_tokens
    assert metrics["ttft_ms"]["p99"] > 0 and metrics["output_throughput"] > 0


def test_happy_sweep_over_two_configurations(serve: pytest.Pytester) -> None:
    result, _ = sweep(serve, "--greenllm-workloads=8:4", "--greenllm-batch=2,4")
    result.assert_outcomes(passed=2)
    assert "greenllm: 2 vLLM server starts for 2 engine configurations measured (2 planned)" in (
        result.stdout.str()
    )
    points = report(serve)["points"]
    assert journal(serve) == [point["id"] for point in points] == ["8x4-tp1-b2-1410MHz", "8x4-tp1-b4-1410MHz"]
    for point in points:
        assert_measured(point, 4)
    logs = server_logs(serve)
    assert len(logs) == 2, logs
    assert all("listening on" in log.read_text() for log in logs)


def test_taken_port_fails_its_point_and_the_next_configuration_passes(
    serve: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        monkeypatch.setenv(BUSY_PORT_ENV, str(port))
        result, _ = sweep(serve, "--greenllm-workloads=8:4", "--greenllm-batch=2,4")
    out = result.stdout.str()
    # The engine fails in the point's setup (the greenllm_result fixture): an error.
    result.assert_outcomes(passed=1, errors=1)
    assert "the vLLM server exited with code 1 before it was healthy" in out
    assert f"port {port} is already in use" in out
    assert "error while attempting to bind on address" in out  # the log's tail
    [point] = report(serve)["points"]
    assert point["id"] == "8x4-tp1-b4-1410MHz"
    assert_measured(point, 4)
    assert journal(serve) == [point["id"]]
    assert len(server_logs(serve)) == 2


def test_server_dying_mid_run_fails_its_point_and_the_next_gets_a_fresh_server(
    serve: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Warm-up (2 requests) and 3 of the point's: the 6th request kills the first server.
    monkeypatch.setenv(MODES_ENV, "die-after=5,ok")
    result, _ = sweep(serve, "--greenllm-workloads=8:4,8:6", "--greenllm-batch=2")
    out = result.stdout.str()
    # The engine fails in the point's setup (the greenllm_result fixture): an error.
    result.assert_outcomes(passed=1, errors=1)
    assert "the vLLM server died during the run" in out
    assert "dying at request 6" in out  # the log's tail
    assert "greenllm: 2 vLLM server starts for 1 engine configuration measured (1 planned)" in out
    [point] = report(serve)["points"]
    assert point["id"] == "8x6-tp1-b2-1410MHz"
    assert_measured(point, 6)
    assert journal(serve) == [point["id"]]
    assert len(server_logs(serve)) == 2


def test_server_dying_slowly_mid_run_fails_its_point_and_the_next_gets_a_fresh_server(
    serve: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As above, but the dying server stops listening and drops its connections a second
    # before its process exits.
    monkeypatch.setenv(MODES_ENV, "die-slowly-after=5,ok")
    result, _ = sweep(serve, "--greenllm-workloads=8:4,8:6", "--greenllm-batch=2")
    out = result.stdout.str()
    assert "the vLLM server died during the run" in out
    result.assert_outcomes(passed=1, errors=1)
    [point] = report(serve)["points"]
    assert point["id"] == "8x6-tp1-b2-1410MHz"
    assert_measured(point, 6)


def test_server_errors_are_failed_requests_of_a_recorded_point(
    serve: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MODES_ENV, "errors")
    result, _ = sweep(serve, "--greenllm-workloads=8:4", "--greenllm-batch=2")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert f"{REQUESTS} of {REQUESTS} requests failed: HTTP 500: fake engine error" in out
    [point] = report(serve)["points"]
    repeat = only_repeat(point)
    metrics = repeat["metrics"]
    assert metrics["failed"] == metrics["requests"] == REQUESTS
    assert any("HTTP 500" in error for error in metrics["errors"]), metrics["errors"]
    assert point["verdicts"]["goodput"]["good_requests"] == 0
    assert point["verdicts"]["goodput"]["share"] == 0
    assert journal(serve) == [point["id"]]


def test_hung_server_times_requests_out_and_the_run_ends(
    serve: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MODES_ENV, "hang")
    monkeypatch.setenv(REQUEST_TIMEOUT_ENV, "1")
    result, took_s = sweep(serve, "--greenllm-workloads=8:4", "--greenllm-batch=2")
    result.assert_outcomes(failed=1)
    assert "requests failed: timed out after 1 s" in result.stdout.str()
    [point] = report(serve)["points"]
    metrics = only_repeat(point)["metrics"]
    assert metrics["failed"] == metrics["requests"] == REQUESTS
    assert metrics["errors"] == ["timed out after 1 s"]
    assert journal(serve) == [point["id"]]
    # Warm-up and 8 requests, 2 at a time, each cut at 1 s: about 5 s.
    assert took_s < 15, took_s


def test_server_never_healthy_fails_with_its_log(
    serve: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MODES_ENV, "no-health")
    monkeypatch.setenv(HEALTH_TIMEOUT_ENV, "1.5")
    result, took_s = sweep(serve, "--greenllm-workloads=8:4", "--greenllm-batch=2")
    out = result.stdout.str()
    result.assert_outcomes(errors=1)
    assert "the vLLM server was not healthy after 1.5 s" in out
    assert "mode no-health" in out  # the log's tail
    # Nothing was measured: no point in the report (none is written) or the journal.
    written = serve.path / "out" / "report.json"
    assert not written.exists() or report(serve)["points"] == []
    assert not (serve.path / "out" / "report.json.journal.jsonl").exists() or journal(serve) == []
    assert len(server_logs(serve)) == 1
    assert took_s < 15, took_s
