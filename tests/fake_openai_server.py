"""A stand-in for vLLM's OpenAI-compatible server in tests of serve mode: it streams
completions the way ``vllm serve`` does, as far as ``pytest_greenllm.serve_client`` reads
them, and fails the ways a served engine does.

Run as ``python fake_openai_server.py --port PORT [--model NAME] [--mode MODE]``:

- ``ok``: every completion streams exactly ``max_tokens`` tokens, one per chunk;
- ``errors``: every completion answers HTTP 500 with an OpenAI-style error body;
- ``die-after=K``: the process exits abruptly (``os._exit``) when completion request K+1
  arrives, with the first K possibly still streaming;
- ``die-slowly-after=K``: as ``die-after``, but as vLLM's API server goes when its engine
  dies: it drops its connections and stops listening at once, and the process exits a
  second later;
- ``hang``: completion requests are accepted and never answered;
- ``no-health``: ``/health`` answers 503 forever;
- ``early-eos``: as ``ok``, but as a server that ignores ``min_tokens`` and ``ignore_eos``
  (one without them, or a model that stops at its end-of-sequence token): every completion
  stops after half its ``max_tokens`` (at least 1) with ``finish_reason`` "stop", and its
  usage counts the tokens it sent.

``--ttft-lognormal MEDIAN_S,SIGMA`` gives the first token of every completion a known law: a
delay drawn (seeded) from a lognormal with that median and log-sd, instead of the gap
between tokens; the SLO verdicts are tested against its known p99.

A port already taken fails as uvicorn does: "address already in use" on the output, exit 1.
"""

from __future__ import annotations

import argparse
import http.server
import json
import math
import os
import random
import socket
import socketserver
import sys
import threading
import time
from typing import Any

from fake_server import say_bind_error  # the script's folder is on sys.path

MODES = ("ok", "errors", "hang", "no-health", "early-eos")
DIE_AFTER = "die-after="
DIE_SLOWLY_AFTER = "die-slowly-after="
# How long a server dying slowly outlives its connections. Units: s.
LINGER_S = 1.0
HOST = "127.0.0.1"


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    # uvicorn's backlog: the stdlib's 5 would leave a burst's later connections waiting on
    # SYN retries (a second each), which a TTFT measurement would count.
    request_queue_size = 2048
    # A server must not steal a port that another socket holds (uvicorn binds without
    # reusing a port in use either); a TIME_WAIT one it may reuse.
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        model: str,
        mode: str,
        token_s: float,
        ttft_law: tuple[float, float] | None = None,
    ) -> None:
        super().__init__(address, Handler)
        self.model = model
        self.ttft_law = ttft_law  # (median s, log-sd) of the first token's delay
        self.rng = random.Random(20240503)
        self.mode, self.die_after, self.linger_s = parse_mode(mode)
        self.token_s = token_s  # seconds between streamed tokens
        self.started = 0  # completion requests received
        self.connections: set[socket.socket] = set()
        self.lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"
    # Each chunk goes out as it is written, as uvicorn sends it (TCP_NODELAY): Nagle's
    # algorithm would hold a kept-alive connection's small chunks back for 40 ms.
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        # One line per request on the log, as vLLM writes.
        sys.stdout.write(f"fake openai server {os.getpid()}: {format % args}\n")
        sys.stdout.flush()

    def _json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _text(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._text(503 if self.server.mode == "no-health" else 200, "")
        elif self.path == "/v1/models":
            model = {"id": self.server.model, "object": "model", "owned_by": "fake", "max_model_len": 2048}
            self._json(200, {"object": "list", "data": [model]})
        elif self.path == "/metrics":
            self._text(
                200,
                "# TYPE vllm:num_requests_running gauge\n"
                f'vllm:num_requests_running{{model_name="{self.server.model}"}} 0\n'
                "# TYPE vllm:num_requests_waiting gauge\n"
                f'vllm:num_requests_waiting{{model_name="{self.server.model}"}} 0\n',
            )
        else:
            self._json(404, {"error": {"message": f"no route {self.path}", "code": 404}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path != "/v1/completions":
            self._json(404, {"error": {"message": f"no route {self.path}", "code": 404}})
            return
        server = self.server
        with server.lock:
            server.started += 1
            number = server.started
        if server.die_after is not None and number > server.die_after:
            print(f"fake openai server {os.getpid()}: dying at request {number}", flush=True)
            if server.linger_s > 0:
                server.socket.close()
                with server.lock:
                    for connection in server.connections:
                        try:
                            connection.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass
                time.sleep(server.linger_s)
            os._exit(3)
        if server.mode == "hang":
            while True:
                time.sleep(60)
        if server.mode == "errors":
            message = "fake engine error: the request cannot be served"
            self._json(500, {"error": {"message": message, "type": "InternalServerError", "code": 500}})
            return
        try:
            body = json.loads(raw)
            max_tokens = int(body["max_tokens"])
            prompt = list(body["prompt"])
        except (ValueError, KeyError, TypeError) as e:
            self._json(400, {"error": {"message": f"bad request: {e}", "code": 400}})
            return
        self._stream(number, len(prompt), max_tokens)

    def _chunk(self, event: dict[str, Any] | str) -> None:
        data = event if isinstance(event, str) else json.dumps(event)
        payload = f"data: {data}\n\n".encode()
        # Chunked transfer encoding, as uvicorn streams.
        self.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
        self.wfile.flush()

    def _ttft_s(self) -> float:
        assert self.server.ttft_law is not None
        median_s, sigma = self.server.ttft_law
        with self.server.lock:
            return self.server.rng.lognormvariate(math.log(median_s), sigma)

    def _stream(self, number: int, prompt_tokens: int, max_tokens: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        rid = f"cmpl-{number}"
        model = self.server.model
        # A server that ignores min_tokens and ignore_eos stops where the model ends.
        early = self.server.mode == "early-eos"
        tokens = max(1, max_tokens // 2) if early else max_tokens
        for i in range(tokens):
            time.sleep(self.server.token_s if i or self.server.ttft_law is None else self._ttft_s())
            choice = {"index": 0, "text": f" t{i}", "token_ids": [1000 + i], "finish_reason": None}
            if i == tokens - 1:
                choice["finish_reason"] = "stop" if early else "length"
            self._chunk({"id": rid, "object": "text_completion", "model": model, "choices": [choice]})
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": tokens,
            "total_tokens": prompt_tokens + tokens,
        }
        self._chunk({"id": rid, "object": "text_completion", "model": model, "choices": [], "usage": usage})
        self._chunk("[DONE]")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def parse_mode(mode: str) -> tuple[str, int | None, float]:
    """``(mode, die_after, linger_s)`` of a ``--mode`` value; ValueError for one not known."""
    if mode.startswith(DIE_AFTER):
        return "ok", int(mode[len(DIE_AFTER) :]), 0.0
    if mode.startswith(DIE_SLOWLY_AFTER):
        return "ok", int(mode[len(DIE_SLOWLY_AFTER) :]), LINGER_S
    if mode not in MODES:
        raise ValueError(
            f"unknown mode {mode!r}: one of {', '.join(MODES)}, {DIE_AFTER}K or {DIE_SLOWLY_AFTER}K"
        )
    return mode, None, 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="fake-model")
    parser.add_argument("--mode", default="ok", help=f"{', '.join(MODES)}, {DIE_AFTER}K, {DIE_SLOWLY_AFTER}K")
    parser.add_argument("--token-s", type=float, default=0.002, help="seconds between tokens")
    parser.add_argument("--ttft-lognormal", default=None, help="MEDIAN_S,SIGMA of the first token's delay")
    args = parser.parse_args(argv)
    law = None
    if args.ttft_lognormal is not None:
        median_s, sigma = (float(v) for v in args.ttft_lognormal.split(","))
        law = (median_s, sigma)
    try:
        parse_mode(args.mode)
    except ValueError as e:
        parser.error(str(e))
    print(f"fake openai server {os.getpid()}: mode {args.mode}, model {args.model}", flush=True)
    address = (HOST, args.port)
    try:
        server = Server(address, args.model, args.mode, args.token_s, law)
    except OSError as e:
        say_bind_error(e, address)
        return 1
    print(f"fake openai server {os.getpid()}: listening on http://{HOST}:{args.port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
