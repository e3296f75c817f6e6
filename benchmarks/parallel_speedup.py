"""How much faster does ``pytest --greenllm -n N`` sweep a node? 32 TP-1 points on the fake
8-GPU device, at -n 1, 2, 4 and 8, as wall time and as speedup against the ideal.

The driver is the test suite's sleep driver (``tests/sleep_driver.py``): its builds and its
steps are sleeps, so the points are as long as a real engine's would be without taking the
CPU, and no worker imports vLLM; the fake device's power is held at half load. 8 engine
configurations (batch 1..8) of 4 points each (4 workloads); each point's window is
``--window`` seconds, each build ``--build`` seconds. Ideal: the serial wall time (-n 0)
divided by N. What parallel workers share is in the difference: their start-up (each
imports pytest, the plugin and the driver, and collects), the controller's idle
measurement, and the scheduling.

Defaults: the plugin's own 5 s minimum window, and a 30 s build (a real vLLM engine
builds in about a minute on a GPU). Two costs do not shrink with N: the controller's idle
measurement (as long as the minimum window) and each worker's start, which on a 2-core
machine the workers share. Hypothesis's pytest plugin is left out of the
runs: it comes with this repository's dev tools, not with the plugin, and would add a
second to every worker's start.

    python benchmarks/parallel_speedup.py [--window 5] [--build 30] [--workers 1,2,4,8]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

from fake_engine import OWN_TESTS  # noqa: E402
from sleep_driver import BUILD_ENV, STEP_ENV, conftest_source  # noqa: E402


def sweep(folder: Path, workers: int, window_s: float) -> float:
    """Wall time of one sweep of the 32 points with ``workers`` (0: serial). Units: s."""
    args = [
        sys.executable,
        "-m",
        "pytest",
        *OWN_TESTS,
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:hypothesispytest",
        "--greenllm-device=fake",
        "--greenllm-cooldown=0",
        f"--greenllm-min-window={window_s:g}",
        "--greenllm-tp=1",
        "--greenllm-batch=1,2,3,4,5,6,7,8",
        "--greenllm-workloads=8:4,16:4,24:4,32:4",
        "--greenllm-freqs=1410",
        "-n",
        str(workers),
    ]
    start = time.monotonic()
    result = subprocess.run(args, cwd=folder, capture_output=True, text=True)
    wall = time.monotonic() - start
    if result.returncode != 0:
        raise SystemExit(
            f"the sweep at -n {workers} failed:\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}"
        )
    if "32 passed" not in result.stdout:
        raise SystemExit(f"the sweep at -n {workers} did not run 32 points:\n{result.stdout[-2000:]}")
    return wall


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--window", type=float, default=5.0, help="each point's window, s")
    parser.add_argument("--build", type=float, default=30.0, help="each engine build, s")
    parser.add_argument("--workers", default="1,2,4,8")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    with tempfile.TemporaryDirectory(prefix="greenllm-speedup-") as tmp:
        folder = Path(tmp)
        (folder / "conftest.py").write_text(conftest_source())
        (folder / "test_sweep.py").write_text("def test_point(greenllm_result):\n    pass\n")
        os.environ.update(
            {
                STEP_ENV: "0.01",
                BUILD_ENV: f"{args.build:g}",
                "GREENLLM_FAKE_GPUS": "8",
                "GREENLLM_FAKE_LOAD": "0.5",
                "GREENLLM_LOCK_DIR": str(folder / "locks"),
                "GREENLLM_STATE_FILE": str(folder / "guard.json"),
                "GREENLLM_FAKE_STATE": str(folder / "fake.json"),
            }
        )
        serial = sweep(folder, 0, args.window)
        print(f"serial (-n 0): {serial:.1f} s", flush=True)
        rows = []
        for n in counts:
            wall = sweep(folder, n, args.window)
            speedup = serial / wall
            rows.append((n, f"{wall:.1f}", f"{speedup:.2f}", f"{speedup / n:.2f}"))
            print(f"-n {n}: {wall:.1f} s", flush=True)
    print(f"32 TP-1 points, 8 engine configurations, window {args.window:g} s, build {args.build:g} s")
    print(tabulate(rows, headers=("-n", "wall s", "speedup", "of ideal")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
