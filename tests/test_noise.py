"""Noise profiles (``noise.py``) and ``greenllm calibrate`` (``calibrate.py``): the run-to-run
noise of a box estimated from A/A runs of the fake sensor against the offsets that made them,
the profile file, the command in-process, and ``greenllm compare --noise``."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from fake_readings import point_record, point_runs, run_scales

from pytest_greenllm.calibrate import REPEAT_COUNTS, run_aa
from pytest_greenllm.cli import main
from pytest_greenllm.gate import FALSE_ALARM, MISS, Noise, Term, satterthwaite, t_quantile
from pytest_greenllm.noise import (
    SCHEMA,
    NoiseError,
    NoiseProfile,
    detectable_changes,
    estimate,
    read_profile,
    write_profile,
)
from pytest_greenllm.record import Report
from pytest_greenllm.report import SetupMismatch

Capsys = pytest.CaptureFixture[str]
FINGERPRINT: dict[str, Any] = {
    "device": "fake",
    "gpu_model": "NVIDIA H100 80GB HBM3",
    "gpu_count": 1,
    "model": "embedded",
    "meter_method": "counter",
}
WITHIN = 0.03  # the fake sensor's noise a reading: each repeat's relative spread


def aa_reports(
    runs: int, points: int, between: float, seed: int, shared: bool = True, repeats: int = 5
) -> tuple[list[Report], list[float]]:
    """``runs`` A/A reports of the same ``points`` (fake_readings), each run's power off by
    its own offset of sd ``between``: one offset a run shared by its points (as a warmer room
    shifts every point), or each point its own. Returns them and the log offsets drawn (the
    shared ones; [] otherwise)."""
    shared_scales = run_scales(runs, between, 0.0, seed)
    columns = [
        point_runs(
            repeats, WITHIN, seed + p, shared_scales if shared else run_scales(runs, between, 0.0, seed + p)
        )
        for p in range(points)
    ]
    reports = [
        Report(
            "fake",
            {},
            None,
            dict(FINGERPRINT),
            {},
            tuple(point_record(p, column[r]) for p, column in enumerate(columns)),
            f"2025-01-{r + 1:02d}T00:00:00+00:00",
        )
        for r in range(runs)
    ]
    return reports, [math.log(s) for s in shared_scales] if shared else []


# --- estimate --------------------------------------------------------------------------------
def test_estimate_recovers_the_within_and_between_run_spreads() -> None:
    # Each point its own offsets: 40 points of 4 runs know the between-run spread well.
    reports, _ = aa_reports(runs=4, points=40, between=0.02, seed=1000, shared=False)
    profile = estimate(reports)
    assert (profile.runs, profile.points) == (4, 40)
    assert set(profile.metrics) == {"j_per_output_token", "avg_power_w"}
    for noise in profile.metrics.values():
        assert math.sqrt(noise.within_var) == pytest.approx(WITHIN, rel=0.08)
        assert noise.within_df == 40 * 4 * 4
        assert math.sqrt(noise.between_var) == pytest.approx(0.02, rel=0.15)
        # Independent offsets: the df come from the points' own offsets, (K - 1)(P - 1) = 117
        # at most (the within part taken off costs some).
        assert 30 <= noise.between_df <= 117


def test_shared_offsets_are_known_only_as_well_as_the_runs_show_them() -> None:
    # One offset a run, shared by all 30 points: the profile finds the offsets drawn, and its
    # df are the runs' K - 1 = 5, not 30 x 5 (which would make the gate trust them too much).
    reports, offsets = aa_reports(runs=6, points=30, between=0.02, seed=2000)
    for noise in estimate(reports).metrics.values():
        assert math.sqrt(noise.between_var) == pytest.approx(statistics.stdev(offsets), rel=0.1)
        assert 4 <= noise.between_df <= 6
        assert math.sqrt(noise.within_var) == pytest.approx(WITHIN, rel=0.08)


def test_a_quiet_box_has_no_between_run_spread() -> None:
    reports, _ = aa_reports(runs=3, points=20, between=0.0, seed=3000)
    for noise in estimate(reports).metrics.values():
        # The run means differ by their within noise alone, which is taken off.
        assert math.sqrt(noise.between_var) < 0.006 and noise.between_df >= 1


def test_estimate_drops_the_meter_method_from_the_fingerprint_and_stamps_the_profile() -> None:
    reports, _ = aa_reports(runs=2, points=3, between=0.01, seed=4000)
    profile = estimate(reports)
    assert profile.fingerprint == {k: v for k, v in FINGERPRINT.items() if k != "meter_method"}
    assert profile.created.endswith("+00:00")


def _with_points(report: Report, points: Sequence[Any]) -> Report:
    return Report(report.device, {}, None, dict(report.fingerprint), {}, tuple(points), report.created)


def test_estimate_refuses_what_it_cannot_estimate_from() -> None:
    reports, _ = aa_reports(runs=3, points=4, between=0.01, seed=5000)
    with pytest.raises(NoiseError, match="calibration needs at least 2 runs' reports, got 1"):
        estimate(reports[:1])
    with pytest.raises(NoiseError, match="got 0"):
        estimate([])
    other = Report("fake", {}, None, {**FINGERPRINT, "gpu_model": "NVIDIA A100"}, {}, reports[1].points)
    with pytest.raises(SetupMismatch, match=r"a calibration run was measured on another setup \(gpu_model:"):
        estimate([reports[0], other])
    # Reports of different sweeps: no point in common.
    renamed = _with_points(reports[1], [point_record(10 + i, ([1.0, 1.1], [300.0, 310.0])) for i in range(2)])
    with pytest.raises(NoiseError, match="share no point: run the same sweep each time"):
        estimate([reports[0], renamed])
    # One repeat a run: nothing tells the within-run noise from the between-run one.
    single, _ = aa_reports(runs=3, points=4, between=0.01, seed=6000, repeats=1)
    with pytest.raises(NoiseError, match="--greenllm-repeats=2 or more"):
        estimate(single)


def test_a_point_without_energy_in_some_run_is_left_out() -> None:
    reports, _ = aa_reports(runs=3, points=4, between=0.01, seed=7000)
    zero = point_record(0, ([0.0] * 5, [0.0] * 5))
    holed = _with_points(reports[1], [zero, *reports[1].points[1:]])
    full = estimate(reports).metrics["avg_power_w"]
    partial = estimate([reports[0], holed, reports[2]]).metrics["avg_power_w"]
    assert partial.within_df == full.within_df - 3 * 4  # 3 points of 3 runs of 5 repeats


# --- the profile file ------------------------------------------------------------------------
def test_a_profile_survives_its_file(tmp_path: Path) -> None:
    reports, _ = aa_reports(runs=3, points=5, between=0.015, seed=8000)
    profile = estimate(reports)
    path = tmp_path / "deep" / "noise.json"
    write_profile(path, profile)
    data = json.loads(path.read_text())
    assert (data["schema"], data["schema_version"], data["runs"], data["points"]) == (SCHEMA, 1, 3, 5)
    assert set(data["metrics"]["avg_power_w"]) == {"within_sd", "within_df", "between_sd", "between_df"}
    again = read_profile(path, FINGERPRINT)
    assert (again.fingerprint, again.runs, again.points, again.created) == (
        profile.fingerprint,
        3,
        5,
        profile.created,
    )
    for key, noise in profile.metrics.items():
        read = again.metrics[key]
        assert (read.within_df, read.between_df) == (noise.within_df, noise.between_df)
        assert read.within_var == pytest.approx(noise.within_var, rel=1e-12)
        assert read.between_var == pytest.approx(noise.between_var, rel=1e-12, abs=1e-300)


def _profile_json(**changes: Any) -> dict[str, Any]:
    metric = {"within_sd": 0.03, "within_df": 40, "between_sd": 0.015, "between_df": 4}
    data: dict[str, Any] = {
        "schema": SCHEMA,
        "schema_version": 1,
        "created": "",
        "fingerprint": {k: v for k, v in FINGERPRINT.items() if k != "meter_method"},
        "runs": 5,
        "points": 2,
        "metrics": {"j_per_output_token": dict(metric), "avg_power_w": dict(metric)},
    }
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("{not json", "not JSON"),
        (json.dumps({"points": []}), "not a pytest-greenllm noise profile"),
        (json.dumps(_profile_json(schema="pytest-greenllm report")), "not a pytest-greenllm noise profile"),
        (json.dumps(_profile_json(schema_version=2)), "schema_version 2; this tool reads 1"),
        (json.dumps(_profile_json(metrics=None)), "malformed profile"),
        (json.dumps(_profile_json(runs="five")), "malformed profile"),
        (
            json.dumps(_profile_json(metrics={"avg_power_w": {"within_sd": -0.1, "within_df": 4}})),
            "malformed profile",
        ),
        (
            json.dumps(
                _profile_json(
                    metrics={
                        "avg_power_w": {"within_sd": 0.1, "within_df": 4, "between_sd": 0.1, "between_df": 0}
                    }
                )
            ),
            "spreads must be >= 0 and degrees of freedom >= 1",
        ),
    ],
    ids=["not-json", "not-a-profile", "a-report", "version", "no-metrics", "runs", "negative-sd", "zero-df"],
)
def test_a_malformed_profile_is_refused_naming_the_file(tmp_path: Path, content: str, why: str) -> None:
    path = tmp_path / "noise.json"
    path.write_text(content)
    with pytest.raises(NoiseError, match=f"^{path}: .*") as raised:
        read_profile(path)
    assert why in str(raised.value)


def test_a_missing_profile_or_another_setups_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NoiseError, match="cannot read it"):
        read_profile(tmp_path / "gone.json")
    path = tmp_path / "noise.json"
    path.write_text(json.dumps(_profile_json()))
    other = {**FINGERPRINT, "gpu_model": "NVIDIA A100"}
    with pytest.raises(SetupMismatch, match="measured on another setup"):
        read_profile(path, other)
    assert read_profile(path, other, allow_mismatch=True).runs == 5
    # What the run does not know yet (None) is no difference.
    assert read_profile(path, {**FINGERPRINT, "meter_method": None}).runs == 5


# --- what each repeat count can detect ---------------------------------------------------------
def test_detectable_changes_follow_the_gates_interval() -> None:
    noise = Noise(0.03**2, 200, 0.015**2, 4)
    table = detectable_changes(noise, (1, 2, 5, 10))
    assert [d.repeats for d in table] == [1, 2, 5, 10]
    # More repeats, a smaller change detected; never below what the run offsets leave.
    assert [d.smallest_change for d in table] == sorted((d.smallest_change for d in table), reverse=True)
    floor = math.sqrt(2) * 0.015
    assert all(d.se > floor for d in table)
    five = table[2]
    variance, df = satterthwaite([Term(2.0, 0.015**2, 4), Term(2 / 5, 0.03**2, 200)])
    assert five.se == pytest.approx(math.sqrt(variance))
    fire, power = t_quantile(1 - FALSE_ALARM / 2, round(df, 1)), t_quantile(1 - MISS, round(df, 1))
    assert five.smallest_change == pytest.approx(math.expm1((fire + power) * five.se))


# --- greenllm calibrate ------------------------------------------------------------------------
def save_reports(folder: Path, reports: Sequence[Report]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, report in enumerate(reports, start=1):
        path = folder / f"aa-{index}.json"
        path.write_text(json.dumps(report.to_json()))
        paths.append(str(path))
    return paths


def test_calibrate_from_reports_prints_the_table_and_writes_the_profile(
    tmp_path: Path, capsys: Capsys
) -> None:
    reports, _ = aa_reports(runs=3, points=6, between=0.015, seed=9000)
    paths = save_reports(tmp_path / "runs", reports)
    output = tmp_path / "profiles" / "box.json"
    assert main(["calibrate", "--output", str(output), "--tolerance", "5%", *paths]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("noise: j_per_output_token within ")
    assert out[0].endswith("(from 3 runs of 6 points)") and "between runs" in out[0]
    header = next(line for line in out if line.startswith("metric"))
    assert (
        "repeats a side" in header and "SE of the change" in header and "smallest change detected" in header
    )
    rows = [line for line in out if line.startswith(("energy per output token", "average power"))]
    assert len(rows) == 2 * len(REPEAT_COUNTS)
    assert [int(line.split()[-3]) for line in rows] == [*REPEAT_COUNTS, *REPEAT_COUNTS]
    assert any("zone is 2.5% to 10%" in line for line in out)
    assert out[-1] == f"greenllm: noise profile written: {output}"
    profile = read_profile(output, FINGERPRINT)
    assert profile.runs == 3 and profile.points == 6
    for key, noise in estimate(reports).metrics.items():
        assert profile.metrics[key].between_df == noise.between_df
        assert profile.metrics[key].between_var == pytest.approx(noise.between_var, rel=1e-12)


# cli.py reads `calibrate`'s pytest arguments with argparse.REMAINDER beside a '*' positional:
# argparse then puts what follows '--' into the reports, and options after the reports into
# the pytest arguments. These cases fail until the arguments after '--' are split off before
# parsing (the report of this change says how); strict, so that the fix shows.


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["calibrate", "--runs", "1"], "--runs=1: between-run noise needs at least 2 runs"),
        (["calibrate", "--runs", "2", "a.json"], "give --runs K or reports of earlier runs, not both"),
        pytest.param(
            ["calibrate", "a.json", "b.json", "--", "-k", "x"],
            "pytest arguments after -- apply to --runs K only",
        ),
        (["calibrate", "--tolerance=-5%", "a.json", "b.json"], "tolerance"),
        pytest.param(["calibrate", "a.json", "b.json", "--tolerance=10%"], "a.json: cannot read"),
        (["calibrate"], "calibration needs at least 2 runs' reports, got 0"),
    ],
)
def test_calibrate_usage_errors_are_one_line(argv: list[str], message: str, capsys: Capsys) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("greenllm: error: ")
    assert message in captured.err and captured.err.count("\n") == 1


def test_calibrate_refuses_an_unreadable_report(tmp_path: Path, capsys: Capsys) -> None:
    reports, _ = aa_reports(runs=2, points=2, between=0.01, seed=9100)
    paths = save_reports(tmp_path, reports)
    assert main(["calibrate", paths[0], str(tmp_path / "gone.json")]) == 2
    assert str(tmp_path / "gone.json") in capsys.readouterr().err


class FakeRuns:
    """Stands in for each calibration run's pytest process: writes the report its argv names."""

    def __init__(self, reports: Sequence[Report], fail_at: int | None = None, write: bool = True) -> None:
        self.reports = list(reports)
        self.argvs: list[list[str]] = []
        self.fail_at, self.write = fail_at, write

    def __call__(self, argv: list[str]) -> int:
        self.argvs.append(argv)
        if len(self.argvs) == self.fail_at:
            return 1
        (path,) = [a.removeprefix("--greenllm-json=") for a in argv if a.startswith("--greenllm-json=")]
        if self.write:
            Path(path).write_text(json.dumps(self.reports[len(self.argvs) - 1].to_json()))
        return 0


def test_run_aa_runs_the_sweep_in_fresh_processes(tmp_path: Path) -> None:
    reports, _ = aa_reports(runs=3, points=2, between=0.01, seed=9200)
    said: list[str] = []
    fake = FakeRuns(reports)
    paths = run_aa(3, tmp_path / "runs", ["-k", "sweep"], said.append, fake)
    assert paths == [tmp_path / "runs" / f"aa-{i}.json" for i in (1, 2, 3)]
    assert fake.argvs[0] == [
        sys.executable,
        "-m",
        "pytest",
        "--greenllm",
        f"--greenllm-json={tmp_path / 'runs' / 'aa-1.json'}",
        "-k",
        "sweep",
    ]
    assert said[1] == f"greenllm calibrate: run 2 of 3: {' '.join(fake.argvs[1][1:])}"


@pytest.mark.parametrize(
    ("fail_at", "write", "why"),
    [(2, True, "exited 1 without a report; fix that run first"), (None, False, "exited 0 without a report")],
)
def test_run_aa_stops_at_a_failed_run(tmp_path: Path, fail_at: int | None, write: bool, why: str) -> None:
    reports, _ = aa_reports(runs=3, points=2, between=0.01, seed=9300)
    fake = FakeRuns(reports, fail_at, write)
    with pytest.raises(NoiseError, match=f"calibration run {fail_at or 1} of 3 {why}"):
        run_aa(3, tmp_path, [], lambda line: None, fake)
    assert len(fake.argvs) == (fail_at or 1)


def test_calibrate_runs_k_sweeps_and_pools_their_reports(
    tmp_path: Path, capsys: Capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    reports, _ = aa_reports(runs=2, points=4, between=0.01, seed=9400)
    fake = FakeRuns(reports)
    # run_aa's default runs each sweep with subprocess.call: here, the fake.
    monkeypatch.setattr(subprocess, "call", fake)
    output = tmp_path / "noise.json"
    assert main(["calibrate", "--runs", "2", "--output", str(output)]) == 0
    assert len(fake.argvs) == 2
    out = capsys.readouterr().out
    assert "greenllm calibrate: run 1 of 2: -m pytest --greenllm" in out
    assert f"greenllm: noise profile written: {output}" in out
    # The runs' reports go beside the profile.
    assert sorted(p.name for p in (tmp_path / "noise-runs").iterdir()) == ["aa-1.json", "aa-2.json"]
    assert read_profile(output).runs == 2
    # A run that fails stops it, one line, exit 2.
    monkeypatch.setattr(subprocess, "call", FakeRuns(reports, fail_at=1))
    assert main(["calibrate", "--runs", "2", "--output", str(output)]) == 2
    assert "calibration run 1 of 2 exited 1" in capsys.readouterr().err


def test_calibrate_passes_the_arguments_after_the_dashes_to_each_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reports, _ = aa_reports(runs=2, points=4, between=0.01, seed=9450)
    fake = FakeRuns(reports)
    monkeypatch.setattr(subprocess, "call", fake)
    output = tmp_path / "noise.json"
    assert main(["calibrate", "--runs", "2", "--output", str(output), "--", "-k", "sweep", "-x"]) == 0
    assert [argv[-3:] for argv in fake.argvs] == [["-k", "sweep", "-x"]] * 2


# --- greenllm compare --noise ------------------------------------------------------------------
def test_compare_with_a_noise_profile_adds_the_run_to_run_spread(tmp_path: Path, capsys: Capsys) -> None:
    reports, _ = aa_reports(runs=2, points=5, between=0.0, seed=9500)
    base, head = save_reports(tmp_path, reports)
    profile = tmp_path / "noise.json"
    profile.write_text(json.dumps(_profile_json()))
    assert main(["compare", base, head]) == 0
    assert "noise from: t (repeats)" in capsys.readouterr().out
    assert main(["compare", base, head, "--noise", str(profile)]) == 0
    out = capsys.readouterr().out
    assert "noise from: t (repeats and noise profile)" in out
    assert "0 of 5 shared points regressed" in out


def test_compare_refuses_a_profile_it_cannot_use(tmp_path: Path, capsys: Capsys) -> None:
    reports, _ = aa_reports(runs=2, points=2, between=0.0, seed=9600)
    base, head = save_reports(tmp_path, reports)
    profile = tmp_path / "noise.json"
    profile.write_text(json.dumps(_profile_json(fingerprint={**FINGERPRINT, "gpu_model": "NVIDIA A100"})))
    assert main(["compare", base, head, "--noise", str(profile)]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith(f"greenllm: error: {profile} was measured on another setup") and err.count("\n") == 1
    )
    assert main(["compare", base, head, "--noise", str(profile), "--allow-mismatch"]) == 0
    capsys.readouterr()
    profile.write_text("{not json")
    assert main(["compare", base, head, "--noise", str(profile)]) == 2
    assert f"{profile}: not JSON" in capsys.readouterr().err


def test_a_profile_is_a_noise_profile_object() -> None:
    # The fields the gate reads, by metric key.
    profile = NoiseProfile({}, {"avg_power_w": Noise(1e-4, 10, 4e-4, 3)}, 3, 1)
    assert profile.to_json()["metrics"]["avg_power_w"] == {
        "within_sd": pytest.approx(0.01),
        "within_df": 10,
        "between_sd": pytest.approx(0.02),
        "between_df": 3,
    }
