"""The shipped sweep on the real vLLM CPU build, in a folder with no tests of its own: TP 1
and 2, two workloads, two batch sizes; four engine builds under -W error, so that no
teardown noise of vLLM's fails a project that runs with strict warnings."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("vllm", reason="the e2e tests need vLLM (pip install -e '.[cpu]')")


@pytest.mark.e2e
def test_sweep_on_real_vllm(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess(
        "-W",
        "error",
        "--greenllm",
        "--greenllm-device=fake",
        "--greenllm-tp=1,2",
        "--greenllm-batch=2,4",
        "--greenllm-workloads=64:16,128:32",
        "--greenllm-freqs=1410",
        "--greenllm-cooldown=0",
        "--greenllm-min-window=0.5",
        # Two CPU cores miss the GPU-sized default SLOs; the SLO gate has its own tests.
        "--greenllm-slo=ttft_p99=none,tbt_p99=none",
        "--junitxml=report.xml",
        "-p",
        "no:cacheprovider",
        timeout=1500,
    )
    result.assert_outcomes(passed=8)
    out = result.stdout.str()
    # Points sharing an engine configuration share one build.
    assert "greenllm: 4 engine builds for 4 engine configurations measured (4 planned)" in out
    returned = re.findall(r"after shutdown: (returned|NOT returned)", out)
    assert returned == ["returned"] * 4, out[-3000:]
    for point in ("64x16-tp1-b2", "128x32-tp2-b4"):
        # point, repeats, TTFT p99, TBT p99, tok/s, J/tok, avg W, SLO verdict
        row = rf"{point}-1410MHz +1 +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+ +ok"
        assert re.search(row, out), out[-3000:]
    xml = (pytester.path / "report.xml").read_text()
    assert xml.count('name="greenllm_j_per_output_token"') == 8
