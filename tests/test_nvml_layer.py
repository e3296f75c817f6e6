"""The NVML layer (sessions, GPUs, error mapping) and opening a backend, against the fake."""

from __future__ import annotations

import os
import re
from contextlib import closing
from pathlib import Path

import pynvml
import pytest

from pytest_greenllm.devices import backend as backend_module
from pytest_greenllm.devices.backend import fake_nvml_from_env, open_backend
from pytest_greenllm.devices.base import AVERAGE, INSTANT, Reading
from pytest_greenllm.devices.errors import (
    DeviceError,
    DeviceLost,
    DeviceUnavailable,
    DriverUnavailable,
    NoPermission,
    NotSupported,
    nvml_errors,
)
from pytest_greenllm.devices.fake_nvml import DRIVER_VERSION, GPU_NAME, FakeNvml
from pytest_greenllm.devices.nvml import NvmlSession
from pytest_greenllm.options import PYTEST_PREFIX

ASCENDING_CLOCKS = tuple(range(210, 1981, 15))  # NVML lists them descending; we want ascending
ENV = (
    "CUDA_VISIBLE_DEVICES",
    "GREENLLM_FAKE_GPUS",
    "GREENLLM_FAKE_STATE",
    "GREENLLM_FAKE_POWER_SCALE",
    "GREENLLM_FAKE_FAIL",
    "GREENLLM_STATE_FILE",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def uuids(gpus: int) -> list[str]:
    fake = FakeNvml(gpus=gpus)
    fake.nvmlInit()
    return [fake.nvmlDeviceGetUUID(fake.nvmlDeviceGetHandleByIndex(i)) for i in range(gpus)]


def initialised(fake: FakeNvml) -> bool:
    try:
        fake.nvmlDeviceGetCount()
    except pynvml.NVMLError_Uninitialized:
        return False
    return True


# --- sessions and GPUs -------------------------------------------------------------------
def test_session_enumerates_gpus_with_their_info() -> None:
    fake = FakeNvml(gpus=4, noise=0.0)
    session = NvmlSession(fake)
    assert session.driver_version == DRIVER_VERSION
    assert [g.index for g in session.gpus] == [0, 1, 2, 3]
    info = session.gpus[2].info
    assert (info.index, info.name, info.uuid) == (2, GPU_NAME, uuids(4)[2])
    assert info.supported_clocks_mhz == ASCENDING_CLOCKS
    assert (info.power_limit_mw, info.power_limit_range_mw) == (700_000, (200_000, 700_000))
    assert session.gpus[2].label == "gpu2"
    assert session.by_uuid(info.uuid).index == 2
    session.close()
    assert not initialised(fake)


@pytest.mark.parametrize(
    "visible, expected",
    [
        ("2,0", [2, 0]),
        (" 3 , 1", [3, 1]),
        ("", []),
        ("{4},1", [4, 1]),  # a UUID
        ("{10:.39}", [10]),  # a unique UUID prefix
        ("GPU-fa4e,1", []),  # a prefix of every UUID picks none
        # CUDA stops at the first entry it cannot use, a duplicate included.
        ("1,11,2", [1]),
        ("1,-1,2", [1]),
        ("1,bogus,2", [1]),
        ("0,1,0,2", [0, 1]),
    ],
)
def test_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch, visible: str, expected: list[int]) -> None:
    # Eleven GPUs: the fake's UUIDs differ only in their last digits, so a prefix of
    # GPU 10's that no other GPU shares needs GPUs 10 and up.
    all_uuids = uuids(11)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible.format(*all_uuids))
    session = NvmlSession(FakeNvml(gpus=11))
    assert [g.index for g in session.gpus] == expected
    assert [g.info.uuid for g in session.gpus] == [all_uuids[i] for i in expected]
    session.close()


def test_a_mig_instance_is_refused_and_nvml_shut_down(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-4b1c3a5e-1f5d-5b8f-9c2a-1234567890ab")
    fake = FakeNvml(gpus=2)
    with pytest.raises(DeviceError, match="MIG"):
        NvmlSession(fake)
    assert fake._init_count == 0


@pytest.mark.parametrize("function", ["nvmlDeviceGetUUID", "nvmlDeviceGetName"])
def test_session_shuts_nvml_down_when_enumeration_fails(function: str) -> None:
    fake = FakeNvml(gpus=4)
    fake.fail(function, 15)
    with pytest.raises(DeviceLost):
        NvmlSession(fake)
    assert fake._init_count == 0 and not initialised(fake)


def test_session_without_a_driver_is_driver_unavailable() -> None:
    with pytest.raises(DriverUnavailable, match="NVML init"):
        NvmlSession(FakeNvml(driver_loaded=False))


def test_gpu_reads_power_clock_temperature_and_reasons() -> None:
    fake = FakeNvml(gpus=2, noise=0.0)
    gpu = NvmlSession(fake).gpus[1]
    assert gpu.read() == Reading(70_000, 345, 32, event_reasons=1, power_kind=INSTANT)
    fake.set_load(1.0)
    # The instantaneous field follows the load at once (the 1 s average would lag it).
    assert gpu.read() == Reading(700_000, 1980, 32, event_reasons=0, power_kind=INSTANT)
    assert isinstance(gpu.energy_mj(), float)
    assert NvmlSession(FakeNvml(gpus=1, energy_counter=False)).gpus[0].energy_mj() is None


def test_gpu_without_instantaneous_power_reads_the_average() -> None:
    fake = FakeNvml(gpus=1, noise=0.0, instant_power=False)
    gpu = NvmlSession(fake).gpus[0]
    assert gpu.power_kind == AVERAGE
    reading = gpu.read()
    assert (reading.power_mw, reading.power_kind) == (70_000, AVERAGE)
    # A field the driver answers with zero is taken as not offered.
    zero = FakeNvml(gpus=1, noise=0.0, power_scale=1e-9)
    assert NvmlSession(zero).gpus[0].power_kind == AVERAGE


def test_gpu_info_tolerates_missing_clock_list_and_limit_range() -> None:
    fake = FakeNvml(gpus=1)
    fake.fail("nvmlDeviceGetSupportedGraphicsClocks", 3)
    fake.fail("nvmlDeviceGetPowerManagementLimitConstraints", 3)
    info = NvmlSession(fake).gpus[0].info
    assert (info.supported_clocks_mhz, info.power_limit_range_mw) == ((), (700_000, 700_000))


def test_setters_change_the_gpu() -> None:
    fake = FakeNvml(gpus=2, noise=0.0)
    gpu = NvmlSession(fake).gpus[1]
    gpu.lock_clocks(1410)
    assert (fake.locked_clocks(0), fake.locked_clocks(1)) == (None, (1410, 1410))
    fake.set_load(1.0)
    assert gpu.read().sm_clock_mhz == 1410
    gpu.reset_clocks()
    assert fake.locked_clocks(1) is None
    gpu.set_power_limit_mw(300_000)
    assert gpu.power_limit_mw() == 300_000
    assert gpu.read().event_reasons == 0x4


def test_setters_without_root_say_how_to_go_on() -> None:
    gpu = NvmlSession(FakeNvml(gpus=1, root=False)).gpus[0]
    with pytest.raises(NoPermission) as caught:
        gpu.lock_clocks(1410)
    message = caught.value.render(PYTEST_PREFIX)
    assert "GPU 0" in message and "run as root" in message
    assert "--greenllm-freqs=default" in message and caught.value.code == 4
    assert isinstance(caught.value.__cause__, pynvml.NVMLError_NoPermission)


# --- error mapping -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "code, kind",
    [
        (4, NoPermission),
        (3, NotSupported),
        (15, DeviceLost),
        (12, DriverUnavailable),
        (9, DriverUnavailable),
        (18, DriverUnavailable),
        (2, DeviceError),
        (999, DeviceError),
    ],
)
def test_nvml_codes_map_to_our_errors(code: int, kind: type[DeviceError]) -> None:
    original = pynvml.NVMLError(code)
    with pytest.raises(DeviceError) as caught, nvml_errors(pynvml, "reading power"):
        raise original
    assert type(caught.value) is kind
    assert caught.value.code == code and caught.value.__cause__ is original
    assert str(caught.value).startswith("reading power: ")


def test_no_permission_advice_and_other_errors_pass_through() -> None:
    advice = r"run as root.*--greenllm-freqs=default"
    with pytest.raises(NoPermission) as caught, nvml_errors(FakeNvml, "lock"):
        raise pynvml.NVMLError(4)
    assert re.search(advice, caught.value.render(PYTEST_PREFIX))
    assert re.search(r"run as root.*--freqs=default", str(caught.value))  # the CLI's spelling
    with pytest.raises(ValueError), nvml_errors(pynvml, "x"):
        raise ValueError("not NVML's")


# --- open_backend ------------------------------------------------------------------------
@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> list[FakeNvml]:
    """The fakes open_backend makes, with no load: the machine's CPU use is not the test's."""
    made: list[FakeNvml] = []

    def make() -> FakeNvml:
        fake = fake_nvml_from_env()
        fake.load, fake.noise = None, 0.0
        fake.set_load(0.0)
        made.append(fake)
        return fake

    monkeypatch.setattr(backend_module, "fake_nvml_from_env", make)
    return made


def test_fake_backend(tmp_path: Path, fakes: list[FakeNvml]) -> None:
    with closing(open_backend("fake", state_path=tmp_path / "state.json")) as b:
        caps = b.capabilities
        assert (b.kind, caps.kind, caps.accelerator) == ("fake", "fake", GPU_NAME)
        assert caps.parallel_units == len(b.gpus) == len(b.sources) == 8
        assert caps.unit_name == "GPUs" and caps.clocks_mhz == ASCENDING_CLOCKS
        assert b.guard is not None and b.guard.state_path == tmp_path / "state.json"
        assert b.driver_version == DRIVER_VERSION and b.notes == []
        b.guard.lock_clocks(b.gpus[:1], 1400)
        assert fakes[0].locked_clocks(0) == (1395, 1395)
    # Closing puts the clocks back and shuts NVML down.
    assert fakes[0].locked_clocks(0) is None and not initialised(fakes[0])


def test_fake_backend_follows_gpu_count_and_visibility(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fakes: list[FakeNvml]
) -> None:
    monkeypatch.setenv("GREENLLM_FAKE_GPUS", "3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,1,5")
    with closing(open_backend("fake", state_path=tmp_path / "state.json")) as b:
        assert b.capabilities.parallel_units == 2 and [g.index for g in b.gpus] == [2, 1]
    assert fakes[0].gpus == 3


@pytest.mark.parametrize("problem", ["no visible GPU", "unreadable state file"])
def test_fake_backend_shuts_nvml_down_when_it_cannot_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fakes: list[FakeNvml], problem: str
) -> None:
    if problem == "no visible GPU":
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    else:
        (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(DeviceError):
        open_backend("fake", state_path=tmp_path / "state.json")
    assert not initialised(fakes[0])


def test_none_backend(tmp_path: Path) -> None:
    with closing(open_backend("none", state_path=tmp_path / "state.json")) as b:
        assert (b.kind, b.capabilities.kind, b.capabilities.accelerator) == ("none", "none", "CPU")
        assert b.capabilities.parallel_units == len(os.sched_getaffinity(0))
        assert not b.capabilities.can_lock_clocks and b.sources == [] and b.gpus == []


def nvml_answers() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


needs_no_driver = pytest.mark.skipif(nvml_answers(), reason="an NVIDIA driver answers here")


@needs_no_driver
def test_auto_without_driver_or_rapl_is_none_and_says_why(tmp_path: Path) -> None:
    # An absent rapl_root stands for a machine without /sys/class/powercap.
    powercap = tmp_path / "powercap"
    with closing(open_backend("auto", state_path=tmp_path / "s.json", rapl_root=powercap)) as b:
        assert b.kind == "none" and b.sources == []
        [note] = b.notes
    assert "NVML init" in note and "Library Not Found" in note and "no RAPL package zones" in note


@needs_no_driver
def test_nvml_without_driver_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(DeviceUnavailable) as caught:
        open_backend("nvml", state_path=tmp_path / "state.json")
    assert isinstance(caught.value.__cause__, DriverUnavailable)


def test_rapl_without_zones_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(DeviceUnavailable, match="no RAPL package zones"):
        open_backend("rapl", state_path=tmp_path / "state.json", rapl_root=tmp_path)


def test_auto_finds_rapl_zones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without a driver whatever machine runs the test, so auto moves on to RAPL.
    monkeypatch.setattr(backend_module, "load_pynvml", lambda: FakeNvml(driver_loaded=False))
    for zone, name in [("intel-rapl:0", "package-0"), ("intel-rapl:0:0", "core")]:
        (tmp_path / zone).mkdir()
        files = {"name": name, "energy_uj": "1000", "max_energy_range_uj": "262143328850"}
        for file, text in files.items():
            (tmp_path / zone / file).write_text(text + "\n")
    with closing(open_backend("auto", state_path=tmp_path / "s.json", rapl_root=tmp_path)) as b:
        assert (b.kind, b.capabilities.kind, b.capabilities.accelerator) == ("rapl", "rapl", "CPU")
        assert [s.label for s in b.sources] == ["cpu-package-0"]  # a subzone would count twice
        (tmp_path / "intel-rapl:0" / "energy_uj").write_text("6000\n")
        assert b.sources[0].energy_mj() == 5.0


# --- the fake's environment switches -----------------------------------------------------
def test_env_switches_configure_the_fake(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GREENLLM_FAKE_POWER_SCALE", "1.5")
    # Without the instantaneous field the GPU's power is nvmlDeviceGetPowerUsage's.
    fail = "nvmlDeviceSetGpuLockedClocks=4,nvmlDeviceGetFieldValues=3,nvmlDeviceGetPowerUsage=3"
    monkeypatch.setenv("GREENLLM_FAKE_FAIL", fail)
    fake = fake_nvml_from_env()
    fake.load, fake.noise = None, 0.0
    fake.set_load(0.0)
    gpu = NvmlSession(fake).gpus[0]
    with pytest.raises(NoPermission):
        gpu.lock_clocks(1410)
    with pytest.raises(NotSupported):
        gpu.read()
    fake.heal("nvmlDeviceGetPowerUsage")
    assert gpu.read().power_mw == 105_000  # 70 W idle x 1.5


@pytest.mark.parametrize(
    "variable, value",
    [
        ("GREENLLM_FAKE_GPUS", "two"),
        ("GREENLLM_FAKE_GPUS", "-1"),
        ("GREENLLM_FAKE_GPUS", "2.5"),
        ("GREENLLM_FAKE_POWER_SCALE", "x"),
        ("GREENLLM_FAKE_POWER_SCALE", "-0.5"),
        ("GREENLLM_FAKE_FAIL", "nvmlInit"),
        ("GREENLLM_FAKE_FAIL", "nvmlInit=x"),
        ("GREENLLM_FAKE_FAIL", "init=12"),
        ("GREENLLM_FAKE_POWER_SCALE", "nan"),
        ("GREENLLM_FAKE_POWER_SCALE", "inf"),
        ("GREENLLM_FAKE_GPUS", "0"),
        ("GREENLLM_FAKE_FAIL", "nvmlDeviceSetGpuLockedClock=4"),
    ],
)
def test_bad_env_values_are_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(DeviceUnavailable, match=variable):
        open_backend("fake", state_path=tmp_path / "state.json").close()
