"""The serve drivers: vLLM's OpenAI-compatible server, one subprocess per engine
configuration, or any OpenAI-compatible server that runs already (``--greenllm-endpoint``),
measured through a streaming HTTP client as users deploy it.

The server's own costs (HTTP, detokenisation, scheduling under arrivals) are inside every
figure, as in ``vllm bench serve``. At most ``batch`` requests of a point are in flight:
the client's concurrency, and the server's ``max_num_seqs`` where greenllm starts it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from pytest_greenllm.driver import EngineFailed, EngineSpec, StepObserver
from pytest_greenllm.engine import WARMUP_OUTPUT_TOKENS, WARMUP_PROMPT, WARMUP_REQUESTS, cpu_environment
from pytest_greenllm.knobs import EngineConfig, count_of
from pytest_greenllm.metrics import RequestRecord
from pytest_greenllm.scrape import exports_metrics
from pytest_greenllm.serve_client import Endpoint, probe, run_load
from pytest_greenllm.server import ServerProcess, free_port, server_command
from pytest_greenllm.workloads import RequestSpec

# How long one request may take before it counts as failed (a hung server). Units: s.
REQUEST_TIMEOUT_S = 600.0
# How long a server whose requests failed has to answer /health again before it counts as
# dead: vLLM's API server drops its connections before its process exits. Units: s.
DEATH_GRACE_S = 5.0


def cpu_build() -> bool:
    """Whether the installed vLLM runs on the CPU (its server then needs the CPU settings)."""
    from pytest_greenllm.engine import on_cpu

    return on_cpu()


def log_name(config: EngineConfig, start: int) -> str:
    """The server log's file name: the configuration and the how-many-th start it was."""
    model = re.sub(r"[^A-Za-z0-9_.-]+", "_", config.model)
    return f"server-{model}-tp{config.tp}-b{config.max_num_seqs}-{start}.log"


class _ServedDriver:
    """Warm-up and runs through the streaming client, for a driver that knows where its
    server is (``_target``) and how to tell that it is gone (``_gone``)."""

    request_timeout_s: float

    def _target(self, spec: EngineSpec) -> Endpoint:
        raise NotImplementedError

    def _gone(self, failed: bool) -> str | None:
        """Why the server cannot serve the next point, after a run (``failed``: some of its
        requests failed); None while it serves."""
        raise NotImplementedError

    def warm_up(self, spec: EngineSpec, tag: str) -> None:
        warm = [RequestSpec(WARMUP_PROMPT, WARMUP_OUTPUT_TOKENS, 0.0)] * WARMUP_REQUESTS
        self.run(spec, warm, [0.0] * len(warm), tag)

    def run(
        self,
        spec: EngineSpec,
        requests: Sequence[RequestSpec],
        arrivals_s: Sequence[float],
        tag: str,
        observer: StepObserver | None = None,
    ) -> list[RequestRecord]:
        # The server names its own requests (tag unused), and its steps cannot be seen from
        # here: observer hears of none, and the point has no prefill/decode split.
        records = run_load(
            self._target(spec),
            requests,
            arrivals_s,
            concurrency=spec.config.max_num_seqs,
            timeout_s=self.request_timeout_s,
        )
        why = self._gone(any(r.error is not None for r in records))
        if why is not None:
            # Its requests failed one by one; the point fails with why.
            raise EngineFailed(why)
        return records


@dataclass
class VllmServeDriver(_ServedDriver):
    """The :class:`~pytest_greenllm.driver.Driver` of vLLM's OpenAI-compatible server."""

    log_dir: Path  # server logs go here, beside the report
    # What starts a server for a configuration on a port (cpu: vLLM's CPU build); a test
    # double starts a stand-in server through the same driver.
    command: Callable[[EngineSpec, int, bool], list[str]] = server_command
    health_timeout_s: float = 600.0
    request_timeout_s: float = REQUEST_TIMEOUT_S
    starts: int = 0
    configs: set[EngineConfig] = field(default_factory=set)
    logs: list[Path] = field(default_factory=list)
    _spec: EngineSpec | None = None
    _server: ServerProcess | None = None

    def engine(self, spec: EngineSpec) -> ServerProcess:
        """The live server for ``spec``, started (after stopping another's) if needed; a
        server that died since is started afresh."""
        if self._server is not None and spec == self._spec and self._server.alive():
            return self._server
        self.close()
        cpu = cpu_build()
        port = free_port()
        self.starts += 1
        self.configs.add(spec.config)
        log = self.log_dir / log_name(spec.config, self.starts)
        env = cpu_environment(spec.config.tp) if cpu else None  # on top of this environment
        server = ServerProcess(self.command(spec, port, cpu), port, log, env, self.health_timeout_s)
        self.logs.append(log)
        server.start()  # EngineFailed with the log's tail where it never becomes healthy
        self._server, self._spec = server, spec
        return server

    def _target(self, spec: EngineSpec) -> Endpoint:
        return Endpoint(self.engine(spec).url, spec.model.path)

    def _gone(self, failed: bool) -> str | None:
        server = self._server
        assert server is not None  # _target started it
        if server.alive() and not (failed and not server.serving(DEATH_GRACE_S)):
            return None
        # The next point gets a fresh server (the session closes this driver's).
        what = "stopped answering" if server.alive() else "died"
        return (
            f"the vLLM server {what} during the run; the last lines of {server.log_path}:\n"
            + server.log_tail()
        )

    def metrics_url(self, spec: EngineSpec) -> str | None:
        """The live server's Prometheus metrics (the runner scrapes them while it measures)."""
        return f"{self.engine(spec).url}/metrics"

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
        self._server = self._spec = None

    def summary_lines(self, planned_configs: int) -> list[str]:
        lines = [
            f"{count_of(self.starts, 'vLLM server start')} for "
            f"{count_of(len(self.configs), 'engine configuration')} measured ({planned_configs} planned)"
        ]
        if self.logs:
            lines.append(f"server logs: {self.log_dir}")
        return lines


@dataclass
class EndpointDriver(_ServedDriver):
    """The :class:`~pytest_greenllm.driver.Driver` of an OpenAI-compatible server that runs
    already (vLLM, SGLang, TGI): greenllm neither starts nor stops it, and every engine
    configuration is that server as it is."""

    endpoint: Endpoint
    request_timeout_s: float = REQUEST_TIMEOUT_S

    def engine(self, spec: EngineSpec) -> Endpoint:
        return self.endpoint

    def _target(self, spec: EngineSpec) -> Endpoint:
        return self.endpoint

    def _gone(self, failed: bool) -> str | None:
        if not failed:
            return None
        why = probe(self.endpoint, DEATH_GRACE_S)
        return (
            None
            if why is None
            else f"the endpoint {self.endpoint.url} stopped answering during the run: {why}"
        )

    def metrics_url(self, spec: EngineSpec) -> str | None:
        """The server's Prometheus metrics where it exports them (vLLM, SGLang and TGI do);
        asked once."""
        return self._metrics_url

    @cached_property
    def _metrics_url(self) -> str | None:
        url = f"{self.endpoint.url.rstrip('/')}/metrics"
        return url if exports_metrics(url) else None

    def close(self) -> None:
        """Nothing to stop: the server is not greenllm's."""

    def summary_lines(self, planned_configs: int) -> list[str]:
        url, model = self.endpoint.url, self.endpoint.model
        return [f"measured the endpoint {url} (model {model}), not started or stopped by greenllm"]
