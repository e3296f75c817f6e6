"""Measuring a server that runs already (``--greenllm-endpoint``), end to end through the
plugin and the ``greenllm knobs`` command: the stand-in server ``fake_openai_server.py``
runs as a subprocess that the test starts and stops, never greenllm. Energy, clocks and
power limits are those of the fake device's GPUs the user names
(``devices.selection.select``, unit-tested at the end).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from pytest_greenllm.cli import main
from pytest_greenllm.devices.backend import DeviceBackend, open_backend
from pytest_greenllm.devices.selection import SelectionError, select
from pytest_greenllm.serve_client import Endpoint, probe
from pytest_greenllm.server import free_port

FAKE = Path(__file__).resolve().with_name("fake_openai_server.py")
MODEL = "fake-model"  # the name the fake serves its model under
CONTEXT = 2048  # the max_model_len its /v1/models lists
# Seconds between streamed tokens: workload S (64 output tokens) takes 0.13 s a request, so
# that 4 requests 2 at a time outlast the fake energy counter's 100 ms update.
TOKEN_S = "0.002"
REQUESTS = 4  # per point
OUTPUT_TOKENS = 64  # workload S's
WARMUP_REQUESTS = 2  # before every point (pytest_greenllm.engine.WARMUP_REQUESTS)
START_TIMEOUT_S = 20.0

SWEEP = (
    "--greenllm",
    "--greenllm-device=fake",
    "--greenllm-cooldown=0",
    "--greenllm-min-window=0",
    "--greenllm-batch=2",
    "--greenllm-workloads=S",
    "--greenllm-freqs=default",
    f"--greenllm-requests={REQUESTS}",
    "--greenllm-json=report.json",
    "-p",
    "no:cacheprovider",
)
NOT_MEASURED = (
    "greenllm: the endpoint's energy is not measured; name the local GPUs it runs on with "
    "--greenllm-endpoint-gpus=0,1 (or all)"
)


class FakeServer:
    """A fake OpenAI server subprocess on a free port, started by the test."""

    def __init__(self, mode: str, log: Path, port: int | None = None, extra: Sequence[str] = ()) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        command = [sys.executable, str(FAKE), "--port", str(self.port), "--model", MODEL]
        command += ["--mode", mode, "--token-s", TOKEN_S, *extra]
        with log.open("w") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"the fake server exited: {self.log.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"the fake server was not healthy after {START_TIMEOUT_S} s: {self.log.read_text()}"
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def serving(self) -> bool:
        """Alive and answering its model list."""
        return self.alive() and probe(Endpoint(self.url, MODEL), timeout_s=5) is None

    def stop(self) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait()


@contextmanager
def running(mode: str, directory: Path, extra: Sequence[str] = ()) -> Iterator[FakeServer]:
    server = FakeServer(mode, directory / f"fake-{mode}.log", extra=extra)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ok_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeServer]:
    """One well-behaved server for the module: greenllm must leave it running."""
    with running("ok", tmp_path_factory.mktemp("ok-server")) as server:
        yield server


@pytest.fixture(scope="module")
def early_eos_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeServer]:
    """A server that ignores min_tokens and ignore_eos: half the forced output each."""
    with running("early-eos", tmp_path_factory.mktemp("early-eos-server")) as server:
        yield server


@pytest.fixture(autouse=True)
def isolated(isolated_device: pytest.MonkeyPatch) -> None:
    """Every test here runs with the device's state and switches its own."""


def sweep(pytester: pytest.Pytester, url: str, *options: str) -> pytest.RunResult:
    return pytester.runpytest(*SWEEP, f"--greenllm-endpoint={url}", *options)


def report(pytester: pytest.Pytester) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((pytester.path / "report.json").read_text())
    return loaded


def journal(pytester: pytest.Pytester) -> list[str]:
    """The ids of the points in the journal (its first line is a header)."""
    path = pytester.path / "report.json.journal.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [line["id"] for line in lines if "id" in line]


def only_repeat(point: dict[str, Any]) -> dict[str, Any]:
    [repeat] = point["repeats"]
    assert isinstance(repeat, dict)
    return repeat


# --- a sweep of a running server ----------------------------------------------------------


def test_endpoint_sweep_measures_one_point_per_rate_and_leaves_the_server_running(
    pytester: pytest.Pytester, ok_server: FakeServer
) -> None:
    url = ok_server.url
    result = sweep(pytester, url, "--greenllm-endpoint-gpus=0", "--greenllm-rates=inf,4,8")
    result.assert_outcomes(passed=3)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            f"greenllm: 3 points, no engine build (endpoint {url}), device=fake (*)",
            f"greenllm: endpoint {url} serves {MODEL} (context {CONTEXT} tokens), started and stopped "
            "outside greenllm",
            "greenllm: the server's TP and max_num_seqs are its own, not swept: points say tp1 (the GPUs "
            "named), and the batch size is the client's concurrency only",
            "greenllm: the endpoint's energy is measured on gpu0",
            f"greenllm: model={MODEL}, repeats=1, requests={REQUESTS}, seed=0",
        ]
    )
    out = result.stdout.str()
    assert f"greenllm: measured the endpoint {url} (model {MODEL}), not started or stopped by greenllm" in out
    assert "not of the forced length" not in out
    ids = ["S-tp1-b2-default", "S-poisson4rps-tp1-b2-default", "S-poisson8rps-tp1-b2-default"]
    loaded = report(pytester)
    points = loaded["points"]
    assert [point["id"] for point in points] == ids
    assert journal(pytester) == ids
    assert loaded["settings"]["endpoint"] == url
    assert loaded["settings"]["mode"] == "serve"
    assert loaded["settings"]["model"] == MODEL
    # The device seen through the one GPU named.
    assert loaded["fingerprint"]["gpu_count"] == 1
    loads = [(p["config"]["load"]["kind"], p["config"]["load"]["rate_per_s"]) for p in points]
    assert loads == [("closed", None), ("poisson", 4), ("poisson", 8)]
    for point in points:
        assert (point["config"]["tp"], point["config"]["batch"], point["config"]["model"]) == (1, 2, MODEL)
        assert point["locked_clock_mhz"] is None
        repeat = only_repeat(point)
        metrics = repeat["metrics"]
        assert metrics["failed"] == 0, metrics["errors"]
        assert metrics["requests"] == REQUESTS
        assert metrics["output_tokens"] == REQUESTS * OUTPUT_TOKENS
        assert repeat["unforced"] == 0
        energy = repeat["energy"]
        assert energy is not None, point["id"]
        assert energy["energy_j"] > 0 and energy["j_per_output_token"] > 0
        assert [label for label, _ in energy["per_device_j"]] == ["gpu0"]
        # The fake serves /metrics: the server's own view is scraped.
        assert repeat["server"] is not None and repeat["server"]["samples"]
    # greenllm neither started nor stopped it.
    assert ok_server.serving()


def test_constant_arrivals_name_their_points_const(pytester: pytest.Pytester, ok_server: FakeServer) -> None:
    # The API's URL names the same server: /v1 and a trailing slash are dropped.
    result = sweep(pytester, f"{ok_server.url}/v1/", "--greenllm-rates=8", "--greenllm-arrivals=constant")
    result.assert_outcomes(passed=1)
    assert report(pytester)["settings"]["endpoint"] == ok_server.url
    [point] = report(pytester)["points"]
    assert point["id"] == "S-const8rps-tp1-b2-default"
    assert point["config"]["load"]["kind"] == "constant"
    assert point["config"]["load"]["rate_per_s"] == 8
    assert only_repeat(point)["metrics"]["failed"] == 0
    assert ok_server.serving()


def test_no_gpus_named_measures_no_energy_and_locks_no_clock(
    pytester: pytest.Pytester, ok_server: FakeServer, tmp_path: Path
) -> None:
    result = sweep(pytester, ok_server.url, "--greenllm-freqs=1410", "--greenllm-power-limits=300")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            f"greenllm: 1 point, no engine build (endpoint {ok_server.url}), device=fake (*)",
            "greenllm: the server's TP and max_num_seqs are its own, not swept: points say tp1 (no GPUs "
            "named)*",
            NOT_MEASURED,
        ]
    )
    out = result.stdout.str()
    # The endpoint's note says why; not the hint for a machine without a meter.
    assert "no energy meter here" not in out
    [point] = report(pytester)["points"]
    assert point["id"] == "S-tp1-b2-default"
    assert point["locked_clock_mhz"] is None and point["power_limit_w"] is None
    assert point["config"]["freq_mhz"] is None and point["config"]["power_limit_w"] is None
    repeat = only_repeat(point)
    assert repeat["energy"] is None
    assert repeat["metrics"]["failed"] == 0
    assert report(pytester)["fingerprint"]["gpu_count"] == 0
    # The fake driver writes its state file on every clock or power limit change (and reset).
    assert not (tmp_path / "driver.json").exists()


# --- usage errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (
            ["--greenllm-endpoint={free}"],
            {},
            "ERROR: --greenllm-endpoint={free}: cannot measure it: cannot connect to {free}/v1/models: "
            "Connection refused",
        ),
        (
            ["--greenllm-endpoint={url}", "--greenllm-model=other"],
            {},
            "ERROR: --greenllm-endpoint={url}: cannot measure it: {url} does not serve model other; "
            f"it serves {MODEL}",
        ),
        (
            ["--greenllm-endpoint={url}", "--greenllm-endpoint-gpus=9"],
            {"GREENLLM_FAKE_GPUS": "2"},
            "ERROR: --greenllm-endpoint-gpus=9: no GPU 9 here: GPUs 0-1 are visible (device=fake)",
        ),
        (
            ["--greenllm-endpoint={url}", "--greenllm-mode=offline"],
            {},
            "ERROR: --greenllm-endpoint={url} measures a running server, which --greenllm-mode=offline "
            "cannot: drop --greenllm-mode",
        ),
        (
            ["--greenllm-endpoint=ftp://127.0.0.1:{port}"],
            {},
            "ERROR: --greenllm-endpoint=ftp://127.0.0.1:{port}: give the server's http:// or https:// URL*",
        ),
        (
            ["--greenllm-endpoint=127.0.0.1:{port}"],
            {},
            "ERROR: --greenllm-endpoint=127.0.0.1:{port}: give the server's http:// or https:// URL*",
        ),
    ],
    ids=["unreachable", "model-not-served", "gpu-not-visible", "offline", "ftp", "no-scheme"],
)
def test_endpoint_usage_errors_are_one_line(
    pytester: pytest.Pytester,
    ok_server: FakeServer,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    message: str,
) -> None:
    names = {"url": ok_server.url, "port": str(ok_server.port), "free": f"http://127.0.0.1:{free_port()}"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = pytester.runpytest(
        "--greenllm", "--greenllm-device=fake", "-p", "no:cacheprovider", *(a.format(**names) for a in args)
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message.format(**names)])
    assert [line for line in result.stderr.lines if line.strip()] == [result.stderr.lines[0]]
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    assert ok_server.serving()


def test_knobs_command_prints_the_collapsed_matrix(
    ok_server: FakeServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no ini file of this repository
    monkeypatch.setenv("GREENLLM_FAKE_GPUS", "4")
    argv = ["knobs", "--endpoint", ok_server.url, "--device", "fake", "--endpoint-gpus", "0,1"]
    status = main([*argv, "--tp", "1,2,4", "--batch", "2", "--workloads", "S", "--freqs", "1410"])
    out = capsys.readouterr().out.splitlines()
    assert status == 0
    url = ok_server.url
    assert (
        out[0] == f"greenllm: 1 point, no engine build (endpoint {url}), device=fake (NVIDIA H100 80GB HBM3)"
    )
    assert f"greenllm: endpoint {url} serves {MODEL} (context {CONTEXT} tokens), started and " in out[1]
    assert "points say tp2 (the GPUs named)" in "\n".join(out)
    assert "greenllm: the endpoint's energy is measured on gpu0, gpu1" in out
    rows = [line.split() for line in out if line.startswith("S-")]
    assert [row[0] for row in rows] == ["S-tp2-b2-1410MHz"]
    assert ok_server.serving()


def test_knobs_command_without_gpus_collapses_clocks_and_says_energy_is_not_measured(
    ok_server: FakeServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["knobs", "--endpoint", ok_server.url, "--device", "fake", "--tp", "2", "--batch", "2,4"]
    status = main([*argv, "--workloads", "S", "--freqs", "1410", "--power-limits", "300"])
    out = capsys.readouterr().out.splitlines()
    assert status == 0
    assert (
        "greenllm: the endpoint's energy is not measured; name the local GPUs it runs on with "
        in "\n".join(out)
    )
    assert "--endpoint-gpus=0,1" in "\n".join(out)
    assert [line.split()[0] for line in out if line.startswith("S-")] == [
        "S-tp1-b2-default",
        "S-tp1-b4-default",
    ]


def test_knobs_command_with_an_unreachable_endpoint_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["knobs", "--endpoint", url, "--device", "fake"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"greenllm: error: --endpoint={url}: cannot measure it: cannot connect to ")
    assert len(err.strip().splitlines()) == 1


# --- a server that fails ------------------------------------------------------------------


def test_server_errors_fail_the_points_as_failed_requests(pytester: pytest.Pytester, tmp_path: Path) -> None:
    with running("errors", tmp_path) as server:
        result = sweep(pytester, server.url, "--greenllm-endpoint-gpus=0", "--greenllm-rates=inf,8")
        assert server.serving()
    result.assert_outcomes(failed=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    assert "Traceback" not in out and "INTERNALERROR" not in out
    assert f"{REQUESTS} of {REQUESTS} requests failed: HTTP 500: fake engine error" in out
    assert "stopped answering" not in out  # it answers, with errors
    ids = ["S-tp1-b2-default", "S-poisson8rps-tp1-b2-default"]
    points = report(pytester)["points"]
    assert [point["id"] for point in points] == ids
    assert journal(pytester) == ids
    for point in points:
        metrics = only_repeat(point)["metrics"]
        assert metrics["failed"] == metrics["requests"] == REQUESTS
        assert any("HTTP 500: fake engine error" in error for error in metrics["errors"]), metrics["errors"]
        assert point["verdicts"]["goodput"]["good_requests"] == 0


def test_server_killed_mid_sweep_fails_its_point_and_the_later_ones(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    # The first point takes warm-up and its requests; the second's warm-up passes, and its
    # second request kills the server.
    first = WARMUP_REQUESTS + REQUESTS
    with running(f"die-after={first + WARMUP_REQUESTS + 1}", tmp_path) as server:
        result = sweep(pytester, server.url, "--greenllm-endpoint-gpus=0", "--greenllm-rates=inf,8,16")
        assert not server.alive()
    out = result.stdout.str()
    # The endpoint fails in the points' setup (the greenllm_result fixture): errors.
    result.assert_outcomes(passed=1, errors=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert "INTERNALERROR" not in out
    stopped = f"the endpoint {server.url} stopped answering during the run: "
    result.stdout.fnmatch_lines(
        [
            f"*S-poisson8rps-tp1-b2-default: {stopped}cannot connect to {server.url}/v1/models*",
            f"*S-poisson16rps-tp1-b2-default: {stopped}*",
        ]
    )
    assert "dying at request" in server.log.read_text()
    [point] = report(pytester)["points"]
    assert point["id"] == "S-tp1-b2-default"
    assert only_repeat(point)["metrics"]["failed"] == 0
    assert journal(pytester) == [point["id"]]
    assert "greenllm: report written: report.json" in out


# --- outputs not of the forced length -----------------------------------------------------


def test_outputs_shorter_than_forced_are_flagged(
    pytester: pytest.Pytester, early_eos_server: FakeServer
) -> None:
    result = sweep(pytester, early_eos_server.url, "--greenllm-endpoint-gpus=0", "--junitxml=junit.xml")
    out = result.stdout.str()
    assert "INTERNALERROR" not in out
    result.stdout.fnmatch_lines(
        [
            "greenllm: outputs not of the forced length at S-tp1-b2-default: the server ignores "
            "ignore_eos or min_tokens*"
        ]
    )
    assert f"({REQUESTS} outputs not of the forced length)" in out  # the progress line
    [point] = report(pytester)["points"]
    repeat = only_repeat(point)
    assert repeat["unforced"] == REQUESTS
    assert repeat["metrics"]["failed"] == 0
    assert repeat["metrics"]["output_tokens"] == REQUESTS * OUTPUT_TOKENS // 2
    assert journal(pytester) == [point["id"]]
    properties = {
        prop.get("name"): prop.get("value")
        for prop in ET.parse(pytester.path / "junit.xml").getroot().iter("property")
    }
    assert properties["greenllm_point"] == "S-tp1-b2-default"
    assert properties["greenllm_unforced_lengths"] == str(REQUESTS)


def test_outputs_shorter_than_forced_do_not_fail_the_point(
    pytester: pytest.Pytester, early_eos_server: FakeServer
) -> None:
    result = sweep(pytester, early_eos_server.url)
    result.assert_outcomes(passed=1)


def test_outputs_of_the_forced_length_set_no_junit_flag(
    pytester: pytest.Pytester, ok_server: FakeServer
) -> None:
    result = sweep(pytester, ok_server.url, "--junitxml=junit.xml")
    result.assert_outcomes(passed=1)
    names = {prop.get("name") for prop in ET.parse(pytester.path / "junit.xml").getroot().iter("property")}
    assert "greenllm_point" in names
    assert "greenllm_unforced_lengths" not in names


# --- devices.selection.select -------------------------------------------------------------


@contextmanager
def fake_backend(monkeypatch: pytest.MonkeyPatch, gpus: int) -> Iterator[DeviceBackend]:
    monkeypatch.setenv("GREENLLM_FAKE_GPUS", str(gpus))
    backend = open_backend("fake")
    try:
        yield backend
    finally:
        backend.close()


def test_select_named_gpus_gives_exactly_those(monkeypatch: pytest.MonkeyPatch) -> None:
    with fake_backend(monkeypatch, 4) as backend:
        selected = select(backend, (2, 0))
        assert list(selected.gpus) == [backend.gpus[2], backend.gpus[0]]
        assert list(selected.sources) == [backend.gpus[2], backend.gpus[0]]
        assert [source.label for source in selected.sources] == ["gpu2", "gpu0"]
        assert list(selected.point_sources(4)) == list(selected.sources)
        caps = selected.capabilities
        assert caps.parallel_units == 2
        assert caps.kind == "fake" and caps.unit_name == "GPUs"
        assert caps.clocks_mhz == backend.capabilities.clocks_mhz and caps.can_lock_clocks
        assert caps.power_limit_range_mw == backend.capabilities.power_limit_range_mw
        assert selected.guard is backend.guard is not None
        assert selected.kind == "fake"
        assert selected.driver_version == backend.driver_version
        assert selected.inner is backend


def test_select_nothing_gives_no_sources_no_guard_no_clocks(monkeypatch: pytest.MonkeyPatch) -> None:
    with fake_backend(monkeypatch, 4) as backend:
        selected = select(backend, ())
        assert list(selected.gpus) == [] and list(selected.sources) == []
        assert list(selected.point_sources(1)) == []
        assert selected.guard is None
        caps = selected.capabilities
        assert caps.clocks_mhz == () and not caps.can_lock_clocks
        assert caps.power_limit_range_mw is None
        assert caps.parallel_units == 1


def test_select_all_gives_every_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    with fake_backend(monkeypatch, 3) as backend:
        selected = select(backend, "all")
        assert list(selected.gpus) == list(backend.gpus)
        assert list(selected.sources) == list(backend.sources)
        assert selected.capabilities.parallel_units == 3
        assert selected.guard is backend.guard


@pytest.mark.parametrize(
    ("gpus", "which", "message"),
    [
        (4, (1, 4, 7), "no GPU 4, 7 here: GPUs 0-3 are visible (device=fake)"),
        (1, (1,), "no GPU 1 here: GPU 0 is visible (device=fake)"),
    ],
)
def test_select_a_missing_index_names_the_visible_range(
    monkeypatch: pytest.MonkeyPatch, gpus: int, which: tuple[int, ...], message: str
) -> None:
    with fake_backend(monkeypatch, gpus) as backend, pytest.raises(SelectionError) as info:
        select(backend, which)
    assert str(info.value) == message


def test_closing_the_selection_closes_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    with fake_backend(monkeypatch, 2) as backend:
        select(backend, (1,)).close()
        assert backend.nvml is None
