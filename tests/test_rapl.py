"""RAPL through a powercap tree under tmp_path: which zones count, the unwrapped counter,
errors that say what to do, and the meter's energy and timeline from counter differences."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_greenllm.devices.base import Reading
from pytest_greenllm.devices.errors import DeviceError, NoPermission, NotSupported
from pytest_greenllm.devices.rapl import find_zones
from pytest_greenllm.meter import COUNTER, EnergyMeter
from pytest_greenllm.options import PYTEST_PREFIX

MAX_UJ = 262_143_328_850  # a Xeon's max_energy_range_uj


def make_zone(root: Path, zone: str, energy_uj: int, name: str = "", max_uj: int = MAX_UJ) -> Path:
    path = root / zone
    path.mkdir(parents=True)
    (path / "name").write_text(f"{name or 'package-' + zone.split(':')[-1]}\n")
    (path / "max_energy_range_uj").write_text(f"{max_uj}\n")
    (path / "energy_uj").write_text(f"{energy_uj}\n")
    return path


def put_energy(zone: Path, energy_uj: int) -> None:
    """Replace the counter in one step: the sampler thread may read it at any moment, and the
    kernel never shows a half-written value."""
    fresh = zone / "energy_uj.new"
    fresh.write_text(f"{energy_uj}\n")
    os.replace(fresh, zone / "energy_uj")


def fail_reads_of(monkeypatch: pytest.MonkeyPatch, target: Path, error: OSError) -> None:
    """Make reading one file raise ``error`` (running as root, chmod 000 would not)."""
    real = Path.read_text

    def read_text(self: Path, *args: Any, **kwargs: Any) -> str:
        if self == target:
            raise error
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)


class ManualClock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def test_find_zones_keeps_package_zones_in_order(tmp_path: Path) -> None:
    for zone in ("intel-rapl:1", "intel-rapl:0"):
        make_zone(tmp_path, zone, 1000)
    # Subzones (cores, uncore, DRAM), the control type and the MMIO zone are not packages:
    # counting them too would count the package's energy twice.
    make_zone(tmp_path, "intel-rapl:0:0", 500, name="core")
    make_zone(tmp_path, "intel-rapl:1:0", 500, name="dram")
    make_zone(tmp_path, "intel-rapl-mmio:0", 500, name="package-0")
    (tmp_path / "intel-rapl").mkdir()
    zones = find_zones(tmp_path)
    assert [z.path.name for z in zones] == ["intel-rapl:0", "intel-rapl:1"]
    assert [z.label for z in zones] == ["cpu-package-0", "cpu-package-1"]
    assert zones[0].max_energy_uj == MAX_UJ


def test_find_zones_orders_packages_by_number(tmp_path: Path) -> None:
    for n in range(11):
        make_zone(tmp_path, f"intel-rapl:{n}", 1000)
    assert [z.label for z in find_zones(tmp_path)] == [f"cpu-package-{n}" for n in range(11)]


def test_no_package_zone_is_not_supported(tmp_path: Path) -> None:
    with pytest.raises(NotSupported, match="no RAPL package zones"):
        find_zones(tmp_path)
    make_zone(tmp_path, "intel-rapl:0:0", 500, name="core")
    with pytest.raises(NotSupported, match=str(tmp_path)):
        find_zones(tmp_path)


def test_energy_is_cumulative_since_open(tmp_path: Path) -> None:
    path = make_zone(tmp_path, "intel-rapl:0", 5_000_000)
    [zone] = find_zones(tmp_path)
    assert zone.energy_mj() == 0.0
    put_energy(path, 5_250_000)
    assert zone.energy_mj() == 250.0
    assert zone.energy_mj() == 250.0  # reading again adds nothing
    put_energy(path, 6_000_000)
    assert zone.energy_mj() == 1000.0
    assert zone.read() == Reading(power_mw=None)  # power comes from the meter, not the zone


def test_a_wrapped_counter_is_unwrapped(tmp_path: Path) -> None:
    path = make_zone(tmp_path, "intel-rapl:0", 990_000, max_uj=1_000_000)
    [zone] = find_zones(tmp_path)
    put_energy(path, 999_000)
    assert zone.energy_mj() == 9.0
    put_energy(path, 500)  # delta = raw + max - last = 500 + 1_000_000 - 999_000
    assert zone.energy_mj() == 10.5
    put_energy(path, 2_500)
    assert zone.energy_mj() == 12.5


def test_unreadable_counter_says_how_to_fix_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_zone(tmp_path, "intel-rapl:0", 1000)
    [zone] = find_zones(tmp_path)
    fail_reads_of(monkeypatch, path / "energy_uj", PermissionError(13, "Permission denied"))
    for attempt in (zone.energy_mj, lambda: find_zones(tmp_path)):
        with pytest.raises(NoPermission) as raised:
            attempt()
        message = raised.value.render(PYTEST_PREFIX)
        assert str(path / "energy_uj") in message
        assert "run as root" in message and "chmod o+r" in message
        assert "--greenllm-device=none" in message


def test_a_directory_where_the_counter_should_be_is_a_device_error(tmp_path: Path) -> None:
    path = make_zone(tmp_path, "intel-rapl:0", 1000)
    [zone] = find_zones(tmp_path)
    (path / "energy_uj").unlink()
    (path / "energy_uj").mkdir()
    with pytest.raises(DeviceError, match="energy_uj") as raised:
        zone.energy_mj()
    # Not a permission problem: no advice to become root.
    assert not isinstance(raised.value, NoPermission)


@pytest.mark.parametrize("file", ["energy_uj", "max_energy_range_uj"])
def test_a_non_number_is_a_device_error_naming_file_and_text(tmp_path: Path, file: str) -> None:
    path = make_zone(tmp_path, "intel-rapl:0", 1000)
    (path / file).write_text("n/a\n")
    with pytest.raises(DeviceError, match=rf"{file}: 'n/a' is not a whole number") as raised:
        find_zones(tmp_path)
    assert str(path) in str(raised.value) and not isinstance(raised.value, NoPermission)


def test_a_missing_name_file_is_a_device_error(tmp_path: Path) -> None:
    (make_zone(tmp_path, "intel-rapl:0", 1000) / "name").unlink()
    with pytest.raises(DeviceError, match="name"):
        find_zones(tmp_path)


def test_meter_over_rapl_counts_energy_and_derives_power(tmp_path: Path) -> None:
    # The window spans a wrap; with the sampler slowed to a crawl the rows are exactly the
    # two the window takes at its ends, so the derived power is known to the microjoule.
    path = make_zone(tmp_path, "intel-rapl:0", MAX_UJ - 30_000_000)
    clock = ManualClock()
    meter = EnergyMeter(find_zones(tmp_path), sample_hz=0.001, min_window_s=1.0, clock=clock)
    meter.begin("w")
    put_energy(path, 50_000_000)
    clock.now_s = 2.0
    result = meter.end("w")
    [device] = result.devices
    assert device.label == "cpu-package-0" and device.method == result.method == COUNTER
    assert result.energy_j == pytest.approx(80.0) and result.duration_s == 2.0
    [(t_s, w)] = result.timeline
    assert t_s == 1.0 and w == pytest.approx(40.0)  # at the midpoint of the one interval
    assert result.peak_power_w == pytest.approx(40.0) and result.avg_power_w == pytest.approx(40.0)
    assert device.missing_samples == 0 and result.warning_kinds == ("counter",)


def test_meter_over_rapl_follows_a_live_counter(tmp_path: Path) -> None:
    power_w = 50.0
    path = make_zone(tmp_path, "intel-rapl:0", 1_000_000)
    meter = EnergyMeter(find_zones(tmp_path), sample_hz=50, min_window_s=0.1)
    stop, written = threading.Event(), [1_000_000]

    def cpu() -> None:
        start = time.monotonic()
        while not stop.wait(0.001):
            written.append(1_000_000 + round(power_w * (time.monotonic() - start) * 1e6))
            put_energy(path, written[-1])

    meter.begin("w")
    cpu_thread = threading.Thread(target=cpu)
    cpu_thread.start()
    time.sleep(0.6)
    stop.set()
    cpu_thread.join()
    result = meter.end("w")
    assert result.method == COUNTER
    # The counter's reads at the two ends, to the microjoule.
    assert result.energy_j == pytest.approx((written[-1] - written[0]) / 1e6, abs=1e-9)
    times, powers = [t for t, _ in result.timeline], [w for _, w in result.timeline]
    assert len(times) >= 10 and 0 < times[0] < times[-1] < result.duration_s
    # Exact powers are the deterministic test's business: a starved writer thread makes them
    # bursty here. Whatever the bursts, some interval ran at least at the window's average.
    assert min(powers) >= 0 and result.peak_power_w == max(powers) >= result.avg_power_w > 0


def test_concurrent_reads_do_not_invent_a_wrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_zone(tmp_path, "intel-rapl:0", 1000)
    [zone] = find_zones(tmp_path)
    counter, real = path / "energy_uj", Path.read_text
    has_read, may_go_on = threading.Event(), threading.Event()

    def read_text(self: Path, *args: Any, **kwargs: Any) -> str:
        text = real(self, *args, **kwargs)
        if self == counter and threading.current_thread().name == "second-window":
            has_read.set()
            may_go_on.wait(2)  # held between its read and its use of the value
        return text

    monkeypatch.setattr(Path, "read_text", read_text)
    put_energy(path, 2000)
    second = threading.Thread(target=zone.energy_mj, name="second-window")
    second.start()
    has_read.wait(2)
    put_energy(path, 3000)
    zone.energy_mj()  # the first window's sampler, with the newer value
    may_go_on.set()
    second.join()
    assert zone.energy_mj() == pytest.approx(2.0)  # 1000 -> 3000 uJ
