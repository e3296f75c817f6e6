"""A stand-in for vLLM's server in tests of ``pytest_greenllm.server``: an HTTP server whose
``/health`` answers 200 once it is ready, and that fails the ways the real one does.

Run as ``python fake_server.py --port PORT [options]``; see ``main`` for the options.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType


class Health(http.server.BaseHTTPRequestHandler):
    """``/health``: 503 until ``ready_at`` (a monotonic time; None: never), then 200."""

    ready_at: float | None = 0.0

    def do_GET(self) -> None:
        if self.path != "/health":
            self.send_error(404)
            return
        ready = self.ready_at is not None and time.monotonic() >= self.ready_at
        self.send_response(200 if ready else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()


def say_bind_error(e: OSError, address: tuple[str, int]) -> None:
    """What uvicorn prints when the port is taken."""
    print(
        f"ERROR:    [Errno {e.errno}] error while attempting to bind on address {address}: "
        f"{(e.strerror or '').lower()}",
        flush=True,
    )


def ignore_sigterm(signum: int, frame: FrameType | None) -> None:
    print(f"fake server {os.getpid()}: ignoring SIGTERM", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds until /health is 200")
    parser.add_argument("--bind-delay", type=float, default=0.0, help="seconds before binding the port")
    parser.add_argument("--exit-code", type=int, help="exit with it before becoming healthy")
    parser.add_argument("--never-healthy", action="store_true", help="/health stays 503")
    parser.add_argument("--child", action="store_true", help="spawn a child that sleeps")
    parser.add_argument("--ignore-term", action="store_true", help="ignore SIGTERM (and the child)")
    parser.add_argument(
        "--bind-error", choices=["uvicorn", "vllm"], default="uvicorn", help="how a taken port is told"
    )
    parser.add_argument("--pids", type=Path, help="write {'server': pid, 'child': pid} here")
    parser.add_argument("--sleep-forever", action="store_true", help="the child's role")
    args = parser.parse_args(argv)

    if args.ignore_term:
        signal.signal(signal.SIGTERM, ignore_sigterm)
    if args.sleep_forever:
        while True:
            time.sleep(60)
    print(f"fake server {os.getpid()}: starting on port {args.port}", flush=True)
    pids = {"server": os.getpid()}
    if args.child:
        # Inherits our process group, as vLLM's EngineCore does.
        child = [sys.executable, __file__, "--sleep-forever"] + (
            ["--ignore-term"] if args.ignore_term else []
        )
        pids["child"] = subprocess.Popen(child).pid
    if args.pids is not None:
        tmp = args.pids.with_suffix(".tmp")
        tmp.write_text(json.dumps(pids))
        os.replace(tmp, args.pids)
    if args.exit_code is not None:
        print(f"fake server {os.getpid()}: RuntimeError: failing on purpose", flush=True)
        return int(args.exit_code)
    time.sleep(args.bind_delay)
    Health.ready_at = None if args.never_healthy else time.monotonic() + args.delay
    address = ("127.0.0.1", args.port)
    try:
        server = http.server.HTTPServer(address, Health)
    except OSError as e:
        if args.bind_error == "vllm":
            raise  # vLLM 0.32 binds the socket itself: a traceback ending in the OSError
        say_bind_error(e, address)
        return 1
    print(f"fake server {os.getpid()}: listening on {address}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
