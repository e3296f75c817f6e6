"""``greenllm compare`` and ``greenllm recommend`` through ``main(argv)``, in-process, on the
checked-in example report and variants of it."""

from __future__ import annotations

import copy
import dataclasses
import json
import statistics
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fake_readings import gated_repeats
from hypothesis import given
from hypothesis import strategies as st

from pytest_greenllm.cli import main
from pytest_greenllm.compare import compare_reports
from pytest_greenllm.history import load_history
from pytest_greenllm.knobs import KnobPoint
from pytest_greenllm.recommend import recommend
from pytest_greenllm.record import PointRecord, Report, Verdicts, summarise
from pytest_greenllm.report import load_report
from pytest_greenllm.verdicts import Goodput, Violation
from pytest_greenllm.workloads import Workload

DATA = Path(__file__).parent / "data" / "report-v1.json"
FAST, SLOW = "32x8-tp1-b4-1410MHz", "64x8-tp1-b4-1410MHz"
Capsys = pytest.CaptureFixture[str]


def example() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DATA.read_text())
    return data


def scaled(report: dict[str, Any], factor: float) -> dict[str, Any]:
    """Every repeat's J/token and power times ``factor``: a uniform energy regression."""
    out = copy.deepcopy(report)
    for point in out["points"]:
        summary = point["summary"]
        for metric in ("j_per_output_token", "avg_power_w"):
            summary[f"{metric}_repeats"] = [v * factor for v in summary[f"{metric}_repeats"]]
            summary[metric] *= factor
    return out


def save(directory: Path, name: str, report: dict[str, Any]) -> str:
    path = directory / name
    path.write_text(json.dumps(report))
    return str(path)


def compare(tmp_path: Path, head: dict[str, Any], *options: str) -> int:
    return main(
        ["compare", save(tmp_path, "base.json", example()), save(tmp_path, "head.json", head), *options]
    )


def rows_of(out: list[str]) -> dict[str, list[str]]:
    """The table's rows by point id: the cells, split on blanks (the verdict is the last)."""
    return {line.split()[0]: line.split() for line in out if line.startswith(("32x8", "64x8"))}


def test_a_report_against_itself_passes(tmp_path: Path, capsys: Capsys) -> None:
    assert compare(tmp_path, example()) == 0
    out = capsys.readouterr().out.splitlines()
    assert "0 of 2 shared points regressed" in out
    rows = rows_of(out)
    # Two repeats a side cannot tell a 0% change from a 10% one at the example's noise (its
    # power repeats differ by 5%, the slow point's J/token by 40%): unsettled, listed, passing.
    assert {cells[-1] for cells in rows.values()} == {"inconclusive"}
    assert all(cells[-4:-1] == ["2", "vs", "2"] for cells in rows.values())
    assert any(line.startswith("2 inconclusive (") and line.endswith(f"{FAST}, {SLOW}") for line in out)
    # Asked to, the unsettled points fail the comparison.
    assert compare(tmp_path, example(), "--inconclusive=fail") == 1


def test_ten_percent_more_energy_fails_and_names_the_point(tmp_path: Path, capsys: Capsys) -> None:
    assert compare(tmp_path, scaled(example(), 1.10)) == 1
    out = capsys.readouterr().out.splitlines()
    # The slow point's two repeats differ by 40%: a 10% rise is neither credible nor ruled
    # out there.
    assert f"1 of 2 shared points regressed: {FAST}" in out
    rows = rows_of(out)
    assert rows[FAST][-1] == "REGRESSED" and rows[SLOW][-1] == "inconclusive"
    assert rows[FAST][3:5] == ["+10.0%", "+10.0%"]


def test_a_wider_tolerance_passes_the_same_rise(tmp_path: Path, capsys: Capsys) -> None:
    assert compare(tmp_path, scaled(example(), 1.10), "--tolerance", "15%") == 0
    assert "0 of 2 shared points regressed" in capsys.readouterr().out


def test_markdown_is_a_github_table_with_bold_regressions(tmp_path: Path, capsys: Capsys) -> None:
    assert compare(tmp_path, scaled(example(), 1.10), "--format", "markdown") == 1
    out = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(out) if line.startswith("| point"))
    assert out[header].endswith("|") and "| verdict" in out[header]
    assert out[header + 1].startswith("|---")
    row = next(line for line in out if line.startswith(f"| {FAST}"))
    assert "| **REGRESSED** |" in row
    assert "**ok**" not in "\n".join(out)


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(report: dict[str, Any]) -> None:
        report[key] = value

    return edit


def _fingerprint(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(report: dict[str, Any]) -> None:
        report["fingerprint"][key] = value

    return edit


def _rename_points(report: dict[str, Any]) -> None:
    for point in report["points"]:
        point["id"] = "other-" + point["id"]


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (_set("schema_version", 3), "schema_version 3, this pytest-greenllm reads 1 and 2"),
        (_rename_points, "share no knob point"),
        (_fingerprint("device", "nvml"), "device: 'fake' -> 'nvml'"),
        (
            _fingerprint("gpu_model", "NVIDIA A100-SXM4-40GB"),
            "gpu_model: 'NVIDIA H100 80GB HBM3' -> 'NVIDIA A100",
        ),
    ],
    ids=["schema-3", "disjoint", "device", "gpu-model"],
)
def test_bad_input_exits_2_with_one_line(
    tmp_path: Path, capsys: Capsys, edit: Callable[[dict[str, Any]], None], reason: str
) -> None:
    head = example()
    edit(head)
    assert compare(tmp_path, head) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("greenllm: error: ") and captured.err.count("\n") == 1
    assert reason in captured.err


@pytest.mark.parametrize("missing", ["base", "head"])
def test_unreadable_report_exits_2(tmp_path: Path, capsys: Capsys, missing: str) -> None:
    paths = {"base": save(tmp_path, "base.json", example()), "head": save(tmp_path, "head.json", example())}
    paths[missing] = str(tmp_path / "gone.json")
    assert main(["compare", paths["base"], paths["head"]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / "gone.json") in err


def test_bad_tolerance_exits_2(tmp_path: Path, capsys: Capsys) -> None:
    assert compare(tmp_path, example(), "--tolerance=-5%") == 2
    assert "tolerance" in capsys.readouterr().err


def test_point_without_summary_exits_2(tmp_path: Path, capsys: Capsys) -> None:
    head = example()
    del head["points"][0]["summary"]
    assert compare(tmp_path, head) == 2


@pytest.mark.parametrize("output", ["table", "markdown"])
def test_allow_mismatch_lists_the_difference_above_the_table(
    tmp_path: Path, capsys: Capsys, output: str
) -> None:
    head = scaled(example(), 1.10)
    head["fingerprint"]["gpu_model"] = "NVIDIA A100-SXM4-40GB"
    assert compare(tmp_path, head, "--allow-mismatch", "--format", output) == 1
    out = capsys.readouterr().out.splitlines()
    note = next(
        i for i, line in enumerate(out) if "gpu_model: 'NVIDIA H100 80GB HBM3' -> 'NVIDIA A100" in line
    )
    table = next(i for i, line in enumerate(out) if "verdict" in line)
    assert note < table


def test_points_in_one_report_only_are_listed_not_failed(tmp_path: Path, capsys: Capsys) -> None:
    head = example()
    head["points"][1]["id"] = "128x8-tp1-b4-1410MHz"
    assert compare(tmp_path, head) == 0
    out = capsys.readouterr().out.splitlines()
    assert "0 of 1 shared points regressed" in out
    assert f"only in base (not compared): {SLOW}" in out
    assert "only in head (not compared): 128x8-tp1-b4-1410MHz" in out


# --- the gate's error rates through `greenllm compare` (issue 15's Done-when) -----------------
NOISE, REPEATS, SWEEP = 0.03, 5, 300  # SWEEP: the Done-when's 300 points


def noisy_point(index: int, seed: int, power_scale: float, repeats: int, noise: float) -> PointRecord:
    """Point ``index`` (its own workload, so its own id) measured ``repeats`` times on the
    fake sensor (fake_readings.gated_repeats), drawing ``power_scale`` times its power."""
    per_token, watts = gated_repeats(repeats, noise, seed, power_scale)
    summary = dataclasses.replace(
        summarise(()),
        j_per_output_token=statistics.fmean(per_token),
        avg_power_w=statistics.fmean(watts),
        j_per_output_token_repeats=tuple(per_token),
        avg_power_w_repeats=tuple(watts),
    )
    config = KnobPoint("embedded", 1, 4, Workload(f"{16 + index}x8", 16 + index, 8), 1410)
    return PointRecord(config.id, config, 1410, (), summary)


def noisy_report(
    first_seed: int,
    change: float = 0.0,
    points: int = SWEEP,
    repeats: int = REPEATS,
    noise: float = NOISE,
    created: str = "2025-01-01T00:00:00+00:00",
) -> dict[str, Any]:
    """The example report's setup with ``points`` independent points of fake-NVML noise,
    every point's energy changed by ``change``; point i is drawn with seed first_seed + i."""
    report = example()
    report["created"] = created
    report["points"] = [
        noisy_point(i, first_seed + i, 1 + change, repeats, noise).to_json() for i in range(points)
    ]
    return report


def verdicts_of(out: list[str], ids: set[str]) -> Counter[str]:
    """How many rows of a plain comparison table carry each verdict."""
    return Counter(line.split()[-1] for line in out if line.split()[:1] and line.split()[0] in ids)


@pytest.mark.parametrize(
    ("change", "most", "least"),
    [
        pytest.param(0.0, 0.01, 0.0, id="0%"),  # these seeds: 0 of 300
        pytest.param(0.025, 0.05, 0.0, id="+2.5%"),  # 11 of 300
        pytest.param(0.10, 1.0, 0.95, id="+10%"),  # 290 of 300
    ],
)
def test_the_gates_error_rates_on_300_noisy_points(
    tmp_path: Path, capsys: Capsys, change: float, most: float, least: float
) -> None:
    """Issue 15, Done-when: with 3% noise, 5 repeats a side and a 5% tolerance, `greenllm
    compare` on 300 independent points fails at most 1% when nothing changed, at most 5% at
    +2.5%, and at least 95% at +10%."""
    base = noisy_report(0)
    head = noisy_report(1_000_000 * (1 + round(change * 1000)), change)
    ids = {p["id"] for p in base["points"]}
    assert len(ids) == SWEEP
    # The noise is what the issue says: 3% a repeat.
    watts = [w for p in base["points"] for w in p["summary"]["avg_power_w_repeats"]]
    assert statistics.stdev(watts) / statistics.fmean(watts) == pytest.approx(NOISE, rel=0.1)
    status = main(["compare", save(tmp_path, "base.json", base), save(tmp_path, "head.json", head)])
    out = capsys.readouterr().out.splitlines()
    verdicts = verdicts_of(out, ids)
    assert sum(verdicts.values()) == SWEEP
    regressed = verdicts["REGRESSED"]
    assert least * SWEEP <= regressed <= most * SWEEP, dict(verdicts)
    assert any(line.startswith(f"{regressed} of {SWEEP} shared points regressed") for line in out)
    assert status == (1 if regressed else 0)


def test_the_gate_detects_twice_the_tolerance_in_95_percent_of_points() -> None:
    # The Done-when's +10% case on ten times the points (sampling error about 0.3%): these
    # seeds give 2927 regressed (97.6%), 71 inconclusive, 2 ok.
    points = 3000
    base = Report.from_json(noisy_report(0, points=points))
    head = Report.from_json(noisy_report(200_000_000, 0.10, points=points))
    comparison = compare_reports(base, head, 0.05)
    assert len(comparison.rows) == points
    verdicts = Counter(r.verdict for r in comparison.rows)
    assert verdicts["REGRESSED"] >= 0.95 * points and verdicts["ok"] <= 0.05 * points, dict(verdicts)


@pytest.fixture
def unsettled(tmp_path: Path) -> tuple[str, str]:
    """Two repeats a side at 10% noise and a +5% change: every point inconclusive."""
    base = noisy_report(0, points=4, repeats=2, noise=0.10)
    head = noisy_report(100, 0.05, points=4, repeats=2, noise=0.10)
    return save(tmp_path, "base.json", base), save(tmp_path, "head.json", head)


@pytest.mark.parametrize(("policy", "status"), [("fail", 1), ("warn", 0), ("pass", 0), (None, 0)])
def test_inconclusive_points_fail_only_when_asked(
    unsettled: tuple[str, str], capsys: Capsys, policy: str | None, status: int
) -> None:
    options = [] if policy is None else [f"--inconclusive={policy}"]  # warn by default
    assert main(["compare", *unsettled, *options]) == status
    out = capsys.readouterr().out.splitlines()
    ids = [KnobPoint("embedded", 1, 4, Workload(f"{16 + i}x8", 16 + i, 8), 1410).id for i in range(4)]
    assert verdicts_of(out, set(ids)) == {"inconclusive": 4}
    assert "0 of 4 shared points regressed" in out
    # Each policy names the unsettled points, and says what settles them.
    (listed,) = [line for line in out if line.startswith("4 inconclusive (")]
    assert "more repeats" in listed and listed.endswith(": " + ", ".join(ids))


def test_a_folder_of_reports_is_judged_with_the_historys_noise(tmp_path: Path, capsys: Capsys) -> None:
    history = tmp_path / "history"
    history.mkdir()
    for day in (1, 2):
        report = noisy_report(10_000 * day, points=3, created=f"2025-01-0{day}T00:00:00+00:00")
        save(history, f"day{day}.json", report)
    head_path = Path(save(tmp_path, "head.json", noisy_report(50_000, 0.10, points=3)))
    head = load_report(head_path)
    pooled = load_history(history, head.fingerprint)
    assert pooled.pooled and len(pooled.used) == 2
    comparison = compare_reports(pooled.report, head, 0.05, history=pooled.pooled)
    assert {(r.method, r.repeats) for r in comparison.rows} == {("t (history)", "10 vs 5")}
    # One report is no history: its repeats and the head's, pooled, are the noise.
    single = load_history(history / "day1.json", head.fingerprint)
    assert not single.pooled
    alone = compare_reports(single.report, head, 0.05, history=single.pooled)
    assert {(r.method, r.repeats) for r in alone.rows} == {("t (repeats)", "5 vs 5")}
    # Through the CLI: both reports are named as the baseline, and 10 repeats are judged.
    main(["compare", str(history), str(head_path)])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"baseline: {history / 'day2.json'}, {history / 'day1.json'}"
    rows = [line.split() for line in out if line.split()[:1] and line.split()[0].endswith("-1410MHz")]
    assert len(rows) == 3 and all(cells[-4:-1] == ["10", "vs", "5"] for cells in rows)


def point(id_: str, j: float, watts: float, throughput: float, tbt: float, met: bool = True) -> PointRecord:
    summary = dataclasses.replace(
        summarise(()),
        j_per_output_token=j,
        avg_power_w=watts,
        output_throughput=throughput,
        ttft_p99_ms=100.0,
        itl_p99_ms=tbt,
    )
    # A point that missed its SLO says so in its verdicts; one that met it has none missed.
    missed = () if met else (Violation("tbt_p99", tbt, tbt / 2, "ms"),)
    verdicts = Verdicts(missed, (), Goodput(1, 1, 1.0, None))
    config = KnobPoint("embedded", 1, 4, Workload("32x8", 32, 8), 1410)
    return PointRecord(id_, config, 1410, (), summary, verdicts)


def recommend_report(device: str = "fake") -> dict[str, Any]:
    report = example()
    report["device"] = device
    report["points"] = [
        p.to_json()
        for p in (
            point("eco", 0.2, 300.0, 500.0, 80.0),
            point("quiet", 0.3, 150.0, 300.0, 60.0),
            point("fast", 0.4, 500.0, 2000.0, 40.0),
            # Best on every objective, but it missed its SLO: it must never be picked.
            point("missed", 0.1, 100.0, 3000.0, 300.0, met=False),
        )
    ]
    return report


def best(out: str) -> dict[str, str]:
    """Objective -> the id of the point recommended for it."""
    picks = {}
    for line in out.splitlines():
        for objective in ("least energy per token", "least average power", "most throughput"):
            if line.startswith(objective):
                picks[objective] = line.removeprefix(objective).split()[0]
    return picks


def test_recommend_picks_one_point_per_objective(tmp_path: Path, capsys: Capsys) -> None:
    assert main(["recommend", save(tmp_path, "r.json", recommend_report())]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("device: FAKE")
    assert best(out) == {
        "least energy per token": "eco",
        "least average power": "quiet",
        "most throughput": "fast",
    }
    assert "3 points meet the SLOs, 1 do not: missed" in out


@pytest.mark.parametrize(
    ("slo", "picks", "verdict"),
    [
        ("tbt_p99=70ms", ("quiet", "quiet", "fast"), "2 points meet the SLOs, 2 do not: eco, missed"),
        # Looser than the report's own SLO: the point that missed it now passes.
        ("tbt_p99=1s", ("missed", "missed", "missed"), "4 points meet the SLOs, 0 do not"),
        ("tbt_p99=1ms", ("no", "no", "no"), "0 points meet the SLOs, 4 do not"),
    ],
)
def test_recommend_slo_rejudges_the_points(
    tmp_path: Path, capsys: Capsys, slo: str, picks: tuple[str, str, str], verdict: str
) -> None:
    assert main(["recommend", save(tmp_path, "r.json", recommend_report("nvml")), "--slo", slo]) == 0
    out = capsys.readouterr().out
    assert "FAKE" not in out
    assert tuple(best(out).values()) == picks
    assert verdict in out


def test_recommend_plots_a_png(tmp_path: Path, capsys: Capsys) -> None:
    png = tmp_path / "frontier.png"
    assert main(["recommend", save(tmp_path, "r.json", recommend_report()), "--plot", str(png)]) == 0
    assert f"plot written: {png}" in capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("slo", ["tbt_p99=fast", "latency=2s", "ttft_p99=0ms"])
def test_recommend_bad_slo_exits_2(tmp_path: Path, capsys: Capsys, slo: str) -> None:
    assert main(["recommend", save(tmp_path, "r.json", recommend_report()), "--slo", slo]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("greenllm: error: ")
    assert captured.err.count("\n") == 1


def _j_tbt(p: PointRecord) -> tuple[float, float]:
    j, tbt = p.summary.j_per_output_token, p.summary.itl_p99_ms
    assert j is not None and tbt is not None
    return j, tbt


def dominates(a: PointRecord, b: PointRecord) -> bool:
    (ja, ta), (jb, tb) = _j_tbt(a), _j_tbt(b)
    at_most = ja <= jb and ta <= tb
    return at_most and (ja, ta) != (jb, tb)


# Small integer coordinates, so that ties and duplicates are common.
POINTS = st.lists(st.tuples(st.integers(1, 12), st.integers(1, 12), st.booleans()), max_size=25)


@given(POINTS)
def test_pareto_frontier_of_the_passing_points(coordinates: list[tuple[int, int, bool]]) -> None:
    points = [
        point(f"p{i}", j / 10, 100.0, 100.0, float(tbt), met) for i, (j, tbt, met) in enumerate(coordinates)
    ]
    rec = recommend(Report("nvml", {}, None, {}, {}, tuple(points)))
    passing = [p for p in points if p.slo_met]
    frontier_ids = [p.id for p in rec.frontier]
    assert len(set(frontier_ids)) == len(frontier_ids)
    assert {p.id for p in rec.passing} == {p.id for p in passing}
    assert set(frontier_ids) <= {p.id for p in passing}
    for f in rec.frontier:
        assert not any(dominates(p, f) for p in passing)
    for p in passing:
        if p.id not in frontier_ids:
            assert any(dominates(f, p) or f.summary == p.summary for f in rec.frontier)
    tbts = [_j_tbt(f)[1] for f in rec.frontier]
    assert tbts == sorted(tbts)
    assert bool(rec.frontier) == bool(passing)
