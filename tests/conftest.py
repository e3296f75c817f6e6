"""Fixtures shared by the plugin-level tests that run sweeps on the fake engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_engine import STEP_ENV, conftest_source

from pytest_greenllm.devices.leases import LOCK_DIR_ENV

POINT_TEST = "def test_point(greenllm_result):\n    pass\n"


@pytest.fixture(autouse=True, scope="session")
def own_gpu_locks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """GPU leases are machine-wide: this test session's, and the runs it starts, take
    theirs in a folder of their own, so that another session on the box (a second CI job)
    does not make them wait."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(LOCK_DIR_ENV, str(tmp_path_factory.mktemp("gpu-locks")))
        yield


@pytest.fixture
def isolated_device(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """The guard's and the fake driver's state files default to machine-wide places; the
    fake device's switches and the served API's key come from the test alone. Returns the
    monkeypatch, for the test's own."""
    monkeypatch.setenv("GREENLLM_STATE_FILE", str(tmp_path / "guard.json"))
    monkeypatch.setenv("GREENLLM_FAKE_STATE", str(tmp_path / "driver.json"))
    for name in (
        "GREENLLM_FAKE_POWER_SCALE",
        "GREENLLM_FAKE_FAIL",
        "GREENLLM_FAKE_GPUS",
        "CUDA_VISIBLE_DEVICES",
        "OPENAI_API_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture(scope="session")
def vllm_imported() -> None:
    """pytester drops the modules an in-process run imported when it ends: without this,
    every run would import vLLM (seconds) afresh."""
    import vllm
    import vllm.inputs
    import vllm.sampling_params  # noqa: F401


@pytest.fixture
def sweep(
    pytester: pytest.Pytester, isolated_device: pytest.MonkeyPatch, vllm_imported: None
) -> pytest.Pytester:
    """A pytester directory whose runs sweep on the fake engine and the fake device."""
    monkeypatch = isolated_device
    # 16 steps of 10 ms: a window longer than the fake counter's 100 ms update, so that no
    # point reads 0 J.
    monkeypatch.setenv(STEP_ENV, "0.01")
    pytester.makeconftest(conftest_source())
    pytester.makepyfile(test_sweep=POINT_TEST)
    return pytester
