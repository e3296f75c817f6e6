"""The ``greenllm`` command, called in-process through ``main(argv)``."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_greenllm import __version__
from pytest_greenllm.cli import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"pytest-greenllm {__version__}\n"


def test_knobs_prints_the_matrix_as_a_table(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    status = main(["knobs", "--device", "fake", "--tp", "1,2", "--batch", "8", "--freqs", "1410"])
    out = capsys.readouterr().out.splitlines()
    assert status == 0
    assert out[0] == "greenllm: 6 points, 2 engine builds, device=fake (NVIDIA H100 80GB HBM3)"
    assert out[1].split() == [
        "point",
        "engine",
        "workload",
        "in",
        "tok",
        "out",
        "tok",
        "tp",
        "batch",
        "power",
        "limit",
        "clock",
        "load",
    ]
    assert out[3].split() == [
        "S-tp1-b8-1410MHz",
        "1",
        "S",
        "128",
        "64",
        "1",
        "8",
        "default",
        "1410MHz",
        "closed",
    ]
    assert out[-1].split() == [
        "L-tp2-b8-1410MHz",
        "2",
        "L",
        "4096",
        "512",
        "2",
        "8",
        "default",
        "1410MHz",
        "closed",
    ]


def test_knobs_shows_the_power_limit_axis_and_sets_no_limit(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GREENLLM_FAKE_STATE", str(tmp_path / "driver.json"))
    monkeypatch.setenv("GREENLLM_STATE_FILE", str(tmp_path / "guard.json"))
    argv = ["knobs", "--device", "fake", "--tp", "1", "--batch", "8", "--freqs", "1410", "--workloads", "S"]
    assert main([*argv, "--power-limits", "300,900,default"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "greenllm: 2 points, 1 engine build, device=fake (NVIDIA H100 80GB HBM3)"
    assert out[1] == (
        "greenllm: removed 1 point: 900 W is outside the 200-700 W power limits the "
        "NVIDIA H100 80GB HBM3 accepts"
    )
    assert [line.split() for line in out[-2:]] == [
        ["S-tp1-b8-1410MHz-pl300W", "1", "S", "128", "64", "1", "8", "300W", "1410MHz", "closed"],
        ["S-tp1-b8-1410MHz", "1", "S", "128", "64", "1", "8", "default", "1410MHz", "closed"],
    ]
    # The matrix needs the device's range only: no GPU was changed.
    assert not (tmp_path / "driver.json").exists() and not (tmp_path / "guard.json").exists()


def test_knobs_reads_the_same_ini_as_pytest(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\ngreenllm_tp = ["1"]\ngreenllm_workloads = "M"\ngreenllm_batch = "4"\n'
    )
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert main(["knobs", "--device", "none"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"ini file: {tmp_path / 'pyproject.toml'}"
    assert out[1].startswith("greenllm: 1 point, 1 engine build, device=none (CPU)")
    assert "M-tp1-b4-default" in out[-1]
    # The command line wins over the ini file, as in pytest.
    assert main(["knobs", "--device", "none", "--batch", "2"]) == 0
    assert "M-tp1-b2-default" in capsys.readouterr().out


def test_pytest_ini_comes_before_pyproject(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.pytest.ini_options]\ngreenllm_batch = "4"\n')
    (tmp_path / "pytest.ini").write_text("[pytest]\ngreenllm_batch = 2\n")
    monkeypatch.chdir(tmp_path)
    assert main(["knobs", "--device", "none", "--tp", "1", "--workloads", "S"]) == 0
    assert "S-tp1-b2-default" in capsys.readouterr().out


def test_knobs_bad_value_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["knobs", "--workloads", "XL"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("greenllm: error: --workloads=XL: unknown workload 'XL'")
    assert captured.err.count("\n") == 1


def test_console_script_is_installed() -> None:
    script = shutil.which("greenllm", path=str(Path(sys.executable).parent))
    assert script is not None, "the greenllm console script is not installed beside python"
    result = subprocess.run([script, "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == f"pytest-greenllm {__version__}"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["knobs", "--device", "fake", "--freqs", "99999"], "--freqs=99999"),
        (["knobs", "--workloads", "trace"], "give one with --trace=CSV"),
    ],
    ids=["own-flag", "named-option"],
)
def test_knobs_errors_name_the_commands_own_flags(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    argv: list[str],
    expected: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and "--greenllm-" not in err


def test_knobs_device_errors_render_the_hint_with_the_commands_flags(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A lower layer's advice ("use another device") names an option; the CLI spells it.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GREENLLM_FAKE_FAIL", "nvmlInit=12")
    monkeypatch.setenv("GREENLLM_STATE_FILE", str(tmp_path / "state.json"))
    assert main(["knobs", "--device", "fake"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("greenllm: error: --device=fake: ")
    assert "or use --device=rapl|none" in err and "--greenllm-" not in err
