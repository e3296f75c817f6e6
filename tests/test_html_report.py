"""``greenllm report --html``: which figures a report's axes give, the fake-device banner,
the RQ4 table's arithmetic, a page that fetches nothing, PNGs, and bad input as one line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sweep_reports import SIXTEEN_POINT_FIGURES, sixteen_point_report

from pytest_greenllm.cli import main
from pytest_greenllm.figures import FAKE_BANNER, build_figures
from pytest_greenllm.html_report import default_configuration, render_page, rq4_rows
from pytest_greenllm.knobs import KnobPoint
from pytest_greenllm.metrics import RunMetrics, Stat
from pytest_greenllm.phases import PhaseSplit
from pytest_greenllm.record import EnergyFigures, PointRecord, RepeatResult, Report, Summary, Verdicts
from pytest_greenllm.report import write_report
from pytest_greenllm.verdicts import Goodput, Violation
from pytest_greenllm.workloads import Workload

S = Workload("S", 128, 64)
L = Workload("L", 4096, 512)
FIGURE = re.compile(r'<figure class="greenllm-figure" id="([^"]+)"[^>]*>(.*?)</figure>', re.S)


@pytest.fixture(scope="session")
def sweep_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of a fake-device sweep over 2 clocks x 2 TP x 2 batches x 2 workloads."""
    return sixteen_point_report(tmp_path_factory)


@pytest.fixture(scope="session")
def sweep_html(sweep_report: Path) -> str:
    """The page of the 16-point sweep, drawn once through the command."""
    out = sweep_report.parent / "page.html"
    assert main(["report", str(sweep_report), "--html", str(out)]) == 0
    return out.read_text()


def _phases(prefill_j: float, decode_j: float) -> PhaseSplit:
    return PhaseSplit(
        method="regression",
        tokens_from="scheduler",
        prefill_tokens=1024,
        decode_tokens=504,
        prefill_s=0.1,
        decode_s=1.0,
        mixed_s=0.0,
        idle_s=0.0,
        steps=70,
        counter_updates=12,
        j_per_prefill_token=prefill_j / 1024,
        j_per_decode_token=decode_j / 504,
        prefill_share=prefill_j / (prefill_j + decode_j),
        j_per_prefill_token_se=prefill_j / 1024 / 20,
        j_per_decode_token_se=decode_j / 504 / 20,
        prefill_share_se=0.01,
        static_power_w=80.0,
        static_power_w_se=4.0,
        condition_number=12.0,
        intervals=11,
        degrees_of_freedom=8,
    )


def _repeat(phases: PhaseSplit) -> RepeatResult:
    stat = Stat(1.0, 1.0, 1.0, 1.0)
    metrics = RunMetrics(8, 1024, 512, 1.0, stat, stat, stat, stat, 512.0, 1536.0, 8.0, None)
    energy = EnergyFigures(
        method="counter",
        energy_j=100.0,
        j_per_output_token=0.2,
        j_per_request=12.5,
        avg_power_w=100.0,
        peak_power_w=None,
        steady_j_per_token=None,
        energy_above_idle_j=None,
        per_device_j=(("gpu0", 100.0),),
        imbalance=None,
        sm_clock_mhz=(),
        clock_strayed=False,
        short_window=False,
        warnings=(),
        phases=phases,
    )
    return RepeatResult(metrics, energy)


def point(
    workload: Workload = S,
    tp: int = 1,
    batch: int = 8,
    clock: int | None = 1410,
    limit: int | None = None,
    j: float | None = 0.5,
    w: float | None = 100.0,
    tput: float = 500.0,
    tbt: float = 20.0,
    meets: bool = True,
    phases: PhaseSplit | None = None,
) -> PointRecord:
    """A hand-made point: its summary as given, missing its TTFT SLO unless ``meets``."""
    knobs = KnobPoint("tiny", tp, batch, workload, clock, power_limit_w=limit)
    summary = Summary(
        ttft_p99_ms=100.0 if meets else 900.0,
        itl_p99_ms=tbt,
        tpot_p99_ms=None,
        e2el_p99_ms=None,
        output_throughput=tput,
        request_throughput=None,
        j_per_output_token=j,
        avg_power_w=w,
        j_per_output_token_repeats=(j,),
        avg_power_w_repeats=(w,),
        j_per_prefill_token=None if phases is None else phases.j_per_prefill_token,
        j_per_decode_token=None if phases is None else phases.j_per_decode_token,
    )
    violations = () if meets else (Violation("ttft_p99", 900.0, 500.0, "ms"),)
    verdicts = Verdicts(violations, (), Goodput(8, 8, 8.0, None))
    repeats = () if phases is None else (_repeat(phases),)
    return PointRecord(
        knobs.id, knobs, clock, repeats, summary, verdicts, None if limit is None else float(limit)
    )


def report(*points: PointRecord, device: str = "nvml") -> Report:
    return Report(
        device=device,
        machine={
            "gpus": [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "power_limit_w": 700.0}],
            "cpu": "x86",
        },
        git={"commit": "abc123", "dirty": False},
        fingerprint={"device": device, "gpu_model": "NVIDIA H100 80GB HBM3", "power_limit_w": 700.0},
        settings={"repeats": 1, "slos": {"S": {"ttft_p99_ms": 500.0, "tbt_p99_ms": None}}},
        points=points,
        created="2026-01-01T00:00:00+00:00",
    )


def page(rep: Report) -> str:
    return render_page(rep, build_figures(rep), "hand-made.json")


def figures_of(html: str) -> dict[str, str]:
    return dict(FIGURE.findall(html))


GRIDS = {
    "clocks": (
        [point(clock=c) for c in (1410, 1980)],
        {"rq1-S", "rq3-S", "pareto"},
        {
            "rq2": "one tp (tp1)",
            "power-limit": "one power limit (default limit)",
            "phases": "no point has one",
        },
    ),
    "tp": (
        [point(tp=tp) for tp in (1, 2, 4)],
        {"rq2-S", "pareto"},
        {"rq1": "one clock (1410 MHz)", "rq3": "one batch size (8) and one clock (1410 MHz)"},
    ),
    "batch-and-limits": (
        [point(batch=b, limit=pl) for b in (1, 8) for pl in (300, None)],
        {"rq3-S", "power-limit-S", "pareto"},
        {"rq1": "one clock", "rq2": "one tp"},
    ),
    # device=none: latency and throughput only.
    "no-energy": (
        [point(clock=c, batch=b, j=None, w=None) for c in (1410, 1980) for b in (1, 8)],
        {"rq1-S"},
        {"rq3": "no point has an energy per output token", "pareto": "no point has both"},
    ),
    "workloads-and-phases": (
        [point(w, clock=c, phases=_phases(10.0, 40.0)) for w in (S, L) for c in (1410, 1980)],
        {"rq1-S", "rq1-L", "rq3-S", "rq3-L", "pareto", "phases"},
        {"rq2": "one tp"},
    ),
}


@pytest.mark.parametrize("grid", GRIDS, ids=list(GRIDS))
def test_the_figure_set_follows_the_axes_swept(grid: str) -> None:
    points, expected, omitted = GRIDS[grid]
    html = page(report(*points))
    assert set(figures_of(html)) == expected
    for family, why in omitted.items():
        line = re.search(rf'<p class="greenllm-omitted" data-family="{family}">([^<]*)</p>', html)
        assert line is not None and why in line.group(1), (family, line)


def test_the_sixteen_point_sweep_draws_every_figure_and_says_what_it_left_out(
    sweep_report: Path, sweep_html: str
) -> None:
    rep = json.loads(sweep_report.read_text())
    assert len(rep["points"]) == 16 and rep["device"] == "fake"
    html = sweep_html
    assert list(figures_of(html)) == list(SIXTEEN_POINT_FIGURES)
    assert re.search(r'data-family="power-limit">[^<]*one power limit \(default limit\)', html)
    assert '<table class="greenllm-table greenllm-numbers" id="rq4-table">' in html
    assert '<table class="greenllm-table" id="fingerprint">' in html


def test_a_fake_report_has_the_banner_on_the_page_and_in_every_figure(sweep_html: str) -> None:
    html = sweep_html
    assert 'id="fake-banner"' in html
    figures = figures_of(html)
    assert figures
    for figure_id, body in figures.items():
        # svg.fonttype 'none' keeps figure text as <text>, so the banner is in the markup.
        assert FAKE_BANNER in body, figure_id


def test_a_measured_report_has_no_banner() -> None:
    html = page(report(*[point(clock=c, tp=tp) for c in (1410, 1980) for tp in (1, 2)]))
    assert figures_of(html)
    assert "FAKE DEVICE" not in html and 'id="fake-banner"' not in html


def test_rq4_picks_the_best_meeting_point_per_objective_against_the_max_clock_default() -> None:
    a = point(tp=1, batch=8, clock=1410, j=0.4, w=200.0, tput=800.0)
    b = point(tp=1, batch=8, clock=1980, j=0.5, w=150.0, tput=1200.0)
    default = point(tp=2, batch=8, clock=1980, j=1.0, w=500.0, tput=1000.0)
    # Better on every figure, but misses its SLOs; and a larger batch at a lower clock,
    # which the clock outranks when the default is chosen.
    missing = point(tp=2, batch=16, clock=1410, j=0.1, w=50.0, tput=2000.0, meets=False)
    rep = report(a, b, default, missing)
    assert default_configuration(rep.points) is default
    rows = {row.objective.name: row for row in rq4_rows(rep)}
    energy, power, throughput = (
        rows["least energy per token"],
        rows["least average power"],
        rows["most throughput"],
    )
    assert (energy.best, power.best, throughput.best) == (a, b, b)
    assert all(row.default is default for row in rows.values())
    assert energy.improvement == pytest.approx(0.6)  # (1.0 - 0.4) / 1.0
    assert power.improvement == pytest.approx(0.7)  # (500 - 150) / 500
    assert throughput.improvement == pytest.approx(0.2)  # (1200 - 1000) / 1000
    html = page(rep)
    table = html[html.index('id="rq4-table"') :]
    table = table[: table.index("</table>")]
    assert "60.0% saving" in table and "70.0% saving" in table and "20.0% gain" in table
    assert missing.id not in table
    # The best point's other figures against the default's: a's power is 200 vs 500 W.
    assert "-60.0%" in table
    assert "default configuration" in html and "highest clock" in html


def test_rq4_default_is_the_unlocked_clock_and_the_largest_engine() -> None:
    unlocked = point(tp=1, batch=8, clock=None)
    larger = point(tp=2, batch=8, clock=1980)
    largest = point(tp=2, batch=16, clock=1980)
    assert default_configuration([larger, unlocked]) is unlocked
    assert default_configuration([larger, largest, point(tp=1, batch=32, clock=1980)]) is largest


def test_rq4_says_so_where_no_point_meets_its_slos() -> None:
    html = page(report(point(clock=1410, meets=False), point(clock=1980, meets=False)))
    assert html.count("no point that meets its SLOs has this figure") == 3


def test_the_heatmap_hatches_missing_cells_and_draws_the_boundary_between() -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    # Batch 16 misses its SLOs at both clocks; batch 1 and 8 meet them: one horizontal edge
    # per clock between b8 and b16.
    points = [point(batch=b, clock=c, meets=b < 16) for b in (1, 8, 16) for c in (1410, 1980)]
    drawn = [f for f in build_figures(report(*points)).figures if f.id == "rq3-S"]
    assert len(drawn) == 1
    axes = drawn[0].figure.axes[0]
    hatched = [p for p in axes.patches if isinstance(p, Rectangle) and p.get_hatch() == "///"]
    assert len(hatched) == 2
    edges = [line for line in axes.lines if isinstance(line, Line2D)]
    assert len(edges) == 2
    assert sorted(tuple(line.get_ydata()) for line in edges) == [(1.5, 1.5), (1.5, 1.5)]  # type: ignore[arg-type]


def test_the_page_fetches_nothing(sweep_html: str) -> None:
    html = sweep_html
    assert not re.search(r"""(?:src|href|action)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert not re.search(r"url\(\s*['\"]?\s*(?:https?:)?//", html, re.I)
    assert "<script" not in html and "<link" not in html and "@import" not in html


def test_png_writes_one_file_per_figure(
    sweep_report: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pngs = tmp_path / "figures" / "new"
    assert main(["report", str(sweep_report), "--html", str(tmp_path / "r.html"), "--png", str(pngs)]) == 0
    written = sorted(p.name for p in pngs.iterdir())
    assert written == sorted(f"{f}.png" for f in SIXTEEN_POINT_FIGURES)
    assert all((pngs / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n") for name in written)
    out = capsys.readouterr().out
    assert f"greenllm: html: {tmp_path / 'r.html'} (8 figures" in out
    assert all(f"greenllm: png: {pngs / name}" in out for name in written)
    assert "greenllm: device: FAKE" in out


def _empty_report(path: Path) -> Path:
    write_report(path, report())
    return path


BAD_INPUTS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "missing file": (lambda d: d / "absent.json", "cannot read"),
    "not JSON": (lambda d: _write(d / "r.json", "{not json"), "not JSON"),
    "not a report": (lambda d: _write(d / "r.json", '{"points": []}'), "not a pytest-greenllm report"),
    "no points": (lambda d: _empty_report(d / "r.json"), "the report has no points"),
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_report_is_one_line_and_exit_2(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make, why = BAD_INPUTS[case]
    source = make(tmp_path)
    assert main(["report", str(source), "--html", str(tmp_path / "out.html")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("greenllm: error: ") and why in err, err
    assert not (tmp_path / "out.html").exists()


def test_unwritable_outputs_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "r.json"
    write_report(source, report(point(clock=1410), point(clock=1980)))
    assert main(["report", str(source), "--html", str(tmp_path / "no" / "such" / "dir" / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("greenllm: error: cannot write") and "no folder" in err
    assert main(["report", str(source), "--html", str(tmp_path)]) == 2  # a folder, not a file
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"greenllm: error: cannot write {tmp_path}")
    blocker = _write(tmp_path / "a-file", "")
    assert main(["report", str(source), "--html", str(tmp_path / "r.html"), "--png", str(blocker)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"greenllm: error: cannot write PNGs to {blocker}")


def test_without_matplotlib_the_command_names_the_extra(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "r.json"
    write_report(source, report(point(clock=1410), point(clock=1980)))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    assert main(["report", str(source), "--html", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err == "greenllm: error: plotting needs matplotlib: pip install 'pytest-greenllm[plot]'\n"


def test_importing_the_report_modules_imports_no_matplotlib() -> None:
    code = (
        "import sys, pytest_greenllm.cli, pytest_greenllm.figures, pytest_greenllm.html_report\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
