"""The device and driver seams as a third party uses them: a board-meter backend and a driver
that needs no vLLM, both supplied only through the ``pytest_greenllm_make_backend`` and
``pytest_greenllm_make_driver`` hooks of a conftest.py, sweep a matrix end to end; a backend
that cannot open is a one-line usage error; the plugin imports no engine or GPU library; and
a missing pynvml says what to install.

Nothing here uses the fake NVML device or tests/fake_engine.py: the point is that the plugin
works with neither.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fake_engine import OWN_TESTS

from pytest_greenllm.devices.backend import open_backend
from pytest_greenllm.devices.errors import DeviceError, DeviceUnavailable, DriverUnavailable

WATTS_PER_SOURCE = 50.0
SOURCES = ("board0", "board1")
POINTS = ("8x4-tp1-b2-default", "16x4-tp1-b2-default")
REPEATS = 2
# Four requests of four tokens at batch 2 and 15 ms a step: ~120 ms windows, above the
# 0.1 s minimum, so that no repeat carries a short-window warning of its own.
KNOBS = (
    *OWN_TESTS,
    "--greenllm-tp=1",
    "--greenllm-batch=2",
    "--greenllm-workloads=8:4,16:4",
    "--greenllm-freqs=default",
    "--greenllm-cooldown=0",
    "--greenllm-min-window=0.1",
    "--greenllm-requests=4",
    f"--greenllm-repeats={REPEATS}",
    "--greenllm-json=out.json",
)
POINT_TEST = "def test_point(greenllm_result):\n    pass\n"

# The third party's code: it imports only the plugin's protocols' data types, never vLLM.
BOARD_CONFTEST = '''
import time

from pytest_greenllm.devices.base import Capabilities, Reading
from pytest_greenllm.metrics import RequestRecord

WATTS = {watts}
PER_POINT = {per_point}
STEP_S = 0.015


class BoardSource:
    """A meter of constant power whose counter advances with the monotonic clock."""

    def __init__(self, label):
        self.label = label
        self._t0 = time.monotonic()

    def energy_mj(self):
        return (time.monotonic() - self._t0) * WATTS * 1000

    def read(self):
        return Reading(power_mw=WATTS * 1000)


class BoardBackend:
    kind = "boardmeter"
    capabilities = Capabilities("boardmeter", "board", 2, "boards", ())
    gpus = ()
    guard = None
    driver_version = None

    def __init__(self):
        self.sources = [BoardSource(label) for label in {sources!r}]
        self.notes = ["boardmeter: opened"]

    def point_sources(self, tp):
        # The meter sees the whole board, whatever tp is; None: it cannot tell.
        return list(self.sources) if PER_POINT else None

    def close(self):
        pass


class BoardDriver:
    def __init__(self):
        self.runs = 0

    def engine(self, spec):
        return self

    def warm_up(self, spec, tag):
        time.sleep(STEP_S)

    def run(self, spec, requests, arrivals_s, tag, observer=None):
        # All requests are handed over at once; batch-sized groups then get one token per
        # step each, so later groups queue as they would in an engine.
        self.runs += 1
        send = time.monotonic()
        batch = spec.config.max_num_seqs
        records = []
        for first in range(0, len(requests), batch):
            group = requests[first:first + batch]
            stamps = [[] for _ in group]
            for _ in range(max(r.output_tokens for r in group)):
                time.sleep(STEP_S)
                now = time.monotonic()
                for tokens, request in zip(stamps, group):
                    if len(tokens) < request.output_tokens:
                        tokens.append(now)
            records += [
                RequestRecord(send, tuple(tokens), len(request.prompt_token_ids))
                for tokens, request in zip(stamps, group)
            ]
        return records

    def close(self):
        pass

    def summary_lines(self, planned_configs):
        return [f"boardmeter driver: {{self.runs}} runs"]


def pytest_greenllm_make_backend(config, settings):
    return BoardBackend()


def pytest_greenllm_make_driver(config, settings):
    return BoardDriver()
'''


def board_sweep(pytester: pytest.Pytester, per_point: bool) -> tuple[pytest.RunResult, dict[str, Any]]:
    """Run the sweep on the board meter and driver; the result and its JSON report."""
    pytester.makeconftest(BOARD_CONFTEST.format(watts=WATTS_PER_SOURCE, per_point=per_point, sources=SOURCES))
    pytester.makepyfile(test_board=POINT_TEST)
    result = pytester.runpytest(*KNOBS)
    report: dict[str, Any] = json.loads((pytester.path / "out.json").read_text())
    return result, report


def test_third_party_backend_and_driver_sweep_through_the_hooks(pytester: pytest.Pytester) -> None:
    result, report = board_sweep(pytester, per_point=True)
    result.assert_outcomes(passed=2)
    assert report["device"] == "boardmeter"
    assert report["fingerprint"]["device"] == "boardmeter"
    assert [p["id"] for p in report["points"]] == list(POINTS)
    expected_w = WATTS_PER_SOURCE * len(SOURCES)
    for point in report["points"]:
        summary = point["summary"]
        assert summary["j_per_output_token"] > 0
        # The energy is the board's: power times duration, from its counters.
        assert summary["avg_power_w"] == pytest.approx(expected_w, rel=0.2)
        assert len(point["repeats"]) == REPEATS
        for repeat in point["repeats"]:
            energy = repeat["energy"]
            assert energy["method"] == "counter"
            assert [label for label, _ in energy["per_device_j"]] == list(SOURCES)
            duration_s = repeat["metrics"]["duration_s"]
            assert energy["energy_j"] == pytest.approx(expected_w * duration_s, rel=0.2)
            # Every output token the driver stamped is counted, as forced.
            assert repeat["metrics"]["output_tokens"] == 4 * 4
            # Per-point sources and a window above the minimum: nothing to warn about but a
            # steady state of a few requests, shorter than 10 of the board's counter updates,
            # and a board that draws its idle power whatever it does, which reads a hair
            # either side of idle.
            assert set(energy["warning_kinds"]) <= {"short-window", "idle"}
            assert all("steady state" in w or "above idle" in w for w in energy["warnings"])
    result.stdout.fnmatch_lines(
        [
            "greenllm: 2 points, 1 engine build, device=boardmeter (board)",
            "greenllm: boardmeter: opened",
        ]
    )
    # The driver ran each point's repeats, no more, and its summary reached the terminal.
    result.stdout.fnmatch_lines([f"greenllm: boardmeter driver: {len(POINTS) * REPEATS} runs"])


def test_backend_that_cannot_tell_its_point_sources_says_so(pytester: pytest.Pytester) -> None:
    result, report = board_sweep(pytester, per_point=False)
    result.assert_outcomes(passed=2)
    note = (
        "device=boardmeter cannot tell which of its sources tp1 uses: "
        f"measured all of them ({', '.join(SOURCES)})"
    )
    for point in report["points"]:
        for repeat in point["repeats"]:
            assert note in repeat["energy"]["warnings"]
            assert [label for label, _ in repeat["energy"]["per_device_j"]] == list(SOURCES)


def test_backend_hook_device_error_is_a_one_line_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        "from pytest_greenllm.devices.errors import DeviceUnavailable\n"
        "from pytest_greenllm.hints import Hint\n"
        "def pytest_greenllm_make_backend(config, settings):\n"
        "    raise DeviceUnavailable('no board here', hint=Hint('device', 'none', '; use {flag}'))\n"
        # Reached only if setup went on past the failed device: it must not.
        "def pytest_greenllm_make_driver(config, settings):\n"
        "    raise AssertionError('driver asked for without a device')\n"
    )
    pytester.makepyfile(test_board=POINT_TEST)
    result = pytester.runpytest(*OWN_TESTS, "--greenllm-freqs=default")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    lines = [line for line in result.stderr.lines if line.strip()]
    assert lines == ["ERROR: --greenllm-device=auto: no board here; use --greenllm-device=none"]


def test_driver_hook_failure_closes_the_backend(pytester: pytest.Pytester) -> None:
    # plugin.py closes the sweep when the driver cannot be made: the board is given back.
    closed = pytester.path / "closed"
    pytester.makeconftest(
        BOARD_CONFTEST.format(watts=WATTS_PER_SOURCE, per_point=True, sources=SOURCES)
        + f"\nBoardBackend.close = lambda self: open({str(closed)!r}, 'w').close()\n"
        + "def pytest_greenllm_make_driver(config, settings):\n"
        + "    raise RuntimeError('no driver')\n"
    )
    pytester.makepyfile(test_board=POINT_TEST)
    result = pytester.runpytest(*OWN_TESTS, "--greenllm-freqs=default")
    # Not a DeviceError: the hook's own bug surfaces as it is, but the board is put back.
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR
    result.stderr.fnmatch_lines(["INTERNALERROR> RuntimeError: no driver"])
    assert closed.exists()


def test_plugin_import_loads_no_engine_or_gpu_library() -> None:
    # pytest imports the plugin on every run wherever it is installed: it must stay cheap.
    code = (
        "import sys, pytest_greenllm.plugin\n"
        "print(sorted(m for m in ('vllm', 'pynvml', 'torch', 'transformers') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


@pytest.mark.parametrize("kind", ["nvml", "fake"])
def test_missing_pynvml_says_what_to_install(
    kind: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # None in sys.modules makes `import pynvml` raise ImportError, as if not installed.
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with pytest.raises(DeviceError) as raised:
        open_backend(kind, state_path=tmp_path / "state.json")
    # Our error, not a ModuleNotFoundError: the plugin renders it as a usage error.
    assert isinstance(raised.value, (DeviceUnavailable, DriverUnavailable))
    assert "pip install" in str(raised.value)


def test_auto_without_pynvml_or_rapl_opens_none_and_says_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    backend = open_backend("auto", state_path=tmp_path / "state.json", rapl_root=tmp_path)
    assert backend.kind == "none" and not backend.sources
    assert any("pip install" in note for note in backend.notes), backend.notes
