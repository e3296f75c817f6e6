"""`greenllm export`: the shapes github-action-benchmark, Bencher and a spreadsheet expect."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from pytest_greenllm.cli import main
from pytest_greenllm.export import BIGGER_IS_BETTER, CSV_COLUMNS, SMALLER_IS_BETTER
from pytest_greenllm.report import load_report

REPORT = Path(__file__).with_name("data") / "report-v1.json"
POINTS = [p.id for p in load_report(REPORT).points]
SMALLER = {"energy per output token": "J/token", "average power": "W", "p99 TTFT": "ms", "p99 TBT": "ms"}


def test_github_action_benchmark_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["export", str(REPORT), "--format", "github-action-benchmark", "--output-dir", str(tmp_path)])
        == 0
    )
    smaller = json.loads((tmp_path / "smaller-is-better.json").read_text())
    bigger = json.loads((tmp_path / "bigger-is-better.json").read_text())
    # The action's custom tools read a list of {name, unit, value[, range, extra]}.
    for entry in smaller + bigger:
        assert set(entry) <= {"name", "unit", "value", "range", "extra"}
        assert isinstance(entry["value"], float) and isinstance(entry["name"], str)
    assert sorted((e["name"], e["unit"]) for e in smaller) == sorted(
        (f"{point} {metric}", unit) for point in POINTS for metric, unit in SMALLER.items()
    )
    assert [(e["name"], e["unit"]) for e in bigger] == [
        (f"{point} output throughput", "tokens/s") for point in POINTS
    ]
    out = capsys.readouterr().out
    assert "customSmallerIsBetter" in out and "customBiggerIsBetter" in out


def test_bencher_metric_format(tmp_path: Path) -> None:
    target = tmp_path / "bmf.json"
    assert main(["export", str(REPORT), "--format", "bencher", "--output", str(target)]) == 0
    bmf = json.loads(target.read_text())
    assert sorted(bmf) == sorted(POINTS)
    for measures in bmf.values():
        assert set(measures) == {
            "energy-per-output-token",
            "average-power",
            "ttft-p99",
            "tbt-p99",
            "output-throughput",
        }
        for metric in measures.values():
            assert set(metric) <= {"value", "lower_value", "upper_value"}
            if "lower_value" in metric:
                assert metric["lower_value"] <= metric["value"] <= metric["upper_value"]


def test_csv_opens_with_a_header(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(REPORT), "--format", "csv"]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [r["point"] for r in rows] == POINTS
    assert tuple(rows[0]) == CSV_COLUMNS
    assert float(rows[0]["j_per_output_token"]) > 0 and rows[0]["device"] == "fake"


def test_export_of_a_bad_report_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["export", str(bad), "--format", "csv"]) == 2
    assert capsys.readouterr().err.startswith(f"greenllm: error: {bad}: not a pytest-greenllm report")


def test_readme_lists_every_bencher_measure_with_its_units() -> None:
    # BMF carries no units: README's table is what users create the measures from.
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    table = readme.split("| measure slug | units | better | threshold to set |", 1)[1].split("\n\n", 1)[0]
    rows = [
        [cell.strip(" `") for cell in line.strip("|").split("|")] for line in table.strip().splitlines()[1:]
    ]
    listed = {slug: (units, better) for slug, units, better, _ in rows}
    assert listed == {
        m.slug: (m.unit, "lower" if m.lower_is_better else "higher")
        for m in SMALLER_IS_BETTER + BIGGER_IS_BETTER
    }
