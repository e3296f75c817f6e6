"""The serving client against an in-process fake OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from pytest_greenllm.metrics import RequestRecord, run_metrics
from pytest_greenllm.serve_client import Endpoint, SseParser, probe, run_load
from pytest_greenllm.workloads import RequestSpec

MODEL = "fake-model"
# Sleeps overshoot, never undershoot, so lower bounds are exact; the slack above them covers
# a machine whose every core is busy, and is still short of the delays the tests tell apart.
SLACK_S = 0.08


@dataclass(frozen=True)
class Script:
    """How the fake answers one request."""

    status: int = 200
    error_body: str = ""  # the body of a non-200 answer
    first_s: float = 0.0  # before the first chunk. Units: s.
    gap_s: float = 0.0  # between chunks. Units: s.
    per_chunk: int = 1  # tokens per chunk
    token_ids: bool = True  # chunks list their token ids
    usage: bool = True  # a usage chunk before [DONE]
    usage_tokens: int | None = None  # what usage claims; None: the tokens sent
    tokens: int | None = None  # tokens sent; None: max_tokens
    drop_after: int | None = None  # chunks sent before the connection drops
    hang: bool = False  # headers sent, then nothing
    split: bool = False  # each event in three writes
    join: bool = False  # every event in one write
    events: tuple[str, ...] = ()  # raw SSE text sent instead of tokens


@dataclass
class FakeServer:
    """An OpenAI-compatible completions server on its own loop and thread."""

    scripts: dict[int, Script] = field(default_factory=dict)  # by the prompt's first token id
    default: Script = Script()
    models: tuple[str, ...] = (MODEL,)
    models_delay_s: float = 0.0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    arrived_s: list[float] = field(default_factory=list)
    # Handlers of an earlier test may still be unwinding: a set, unlike a counter, stays right.
    in_flight: set[object] = field(default_factory=set)
    max_in_flight: int = 0
    port: int = 0

    def reset(self) -> None:
        self.scripts, self.default, self.models, self.models_delay_s = {}, Script(), (MODEL,), 0.0
        self.bodies, self.arrived_s = [], []
        self.in_flight, self.max_in_flight = set(), 0

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(f"http://127.0.0.1:{self.port}", MODEL)

    async def list_models(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.models_delay_s)
        return web.json_response({"object": "list", "data": [{"id": m} for m in self.models]})

    async def complete(self, request: web.Request) -> web.StreamResponse:
        self.arrived_s.append(time.monotonic())
        body = await request.json()
        self.bodies.append(body)
        me = object()
        self.in_flight.add(me)
        self.max_in_flight = max(self.max_in_flight, len(self.in_flight))
        try:
            return await self._answer(request, body, self.scripts.get(body["prompt"][0], self.default))
        finally:
            self.in_flight.discard(me)

    async def _answer(self, request: web.Request, body: dict[str, Any], s: Script) -> web.StreamResponse:
        if s.status != 200:
            return web.Response(status=s.status, text=s.error_body, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if s.hang:
            await asyncio.sleep(30)
        events = list(s.events) or self._token_events(body, s)
        await asyncio.sleep(s.first_s)
        if s.join:
            await response.write("".join(events).encode())
            return response
        for i, event in enumerate(events):
            if i == s.drop_after:
                assert request.transport is not None
                request.transport.close()
                return response
            if i and s.gap_s:
                await asyncio.sleep(s.gap_s)
            pieces = [event[:7], event[7:-1], event[-1:]] if s.split else [event]
            for piece in pieces:
                await response.write(piece.encode())
                if s.split:
                    await asyncio.sleep(0.005)
        return response

    @staticmethod
    def _token_events(body: dict[str, Any], s: Script) -> list[str]:
        n = body["max_tokens"] if s.tokens is None else s.tokens
        events = []
        for start in range(0, n, s.per_chunk):
            ids = list(range(start, min(n, start + s.per_chunk)))
            choice: dict[str, Any] = {"index": 0, "text": "x" * len(ids)}
            if s.token_ids:
                choice["token_ids"] = ids
            events.append(f"data: {json.dumps({'choices': [choice]})}\n\n")
        if s.usage:
            used = n if s.usage_tokens is None else s.usage_tokens
            usage = {"prompt_tokens": len(body["prompt"]), "completion_tokens": used}
            events.append(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n")
        return [*events, "data: [DONE]\n\n"]


class ServerThread(threading.Thread):
    """Serves a FakeServer on its own event loop until stopped."""

    def __init__(self, fake: FakeServer) -> None:
        super().__init__(daemon=True)
        self.fake = fake
        self.ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping: asyncio.Event | None = None

    def run(self) -> None:
        asyncio.run(self.serve())

    async def serve(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/models", self.fake.list_models)
        app.router.add_post("/v1/completions", self.fake.complete)
        # Cancel a handler whose client went away: a hanging one would outlive its test.
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self.fake.port = runner.addresses[0][1]
        self.loop, self.stopping = asyncio.get_running_loop(), asyncio.Event()
        self.ready.set()
        await self.stopping.wait()
        await runner.cleanup()

    def stop(self) -> None:
        assert self.loop is not None and self.stopping is not None
        self.loop.call_soon_threadsafe(self.stopping.set)
        self.join(5)


@pytest.fixture(scope="module")
def server() -> Iterator[FakeServer]:
    thread = ServerThread(FakeServer())
    thread.start()
    assert thread.ready.wait(5)
    yield thread.fake
    thread.stop()


@pytest.fixture
def fake(server: FakeServer) -> FakeServer:
    server.reset()
    return server


def spec(first_id: int = 1000, output_tokens: int = 4, prompt_tokens: int = 3) -> RequestSpec:
    return RequestSpec((first_id, *range(100, 100 + prompt_tokens - 1)), output_tokens, 0.0)


def load(fake: FakeServer, specs: list[RequestSpec], **kwargs: Any) -> list[RequestRecord]:
    return run_load(fake.endpoint, specs, [s.arrival_s for s in specs], **kwargs)


def gaps(record: RequestRecord) -> list[float]:
    return [b - a for a, b in zip(record.token_s, record.token_s[1:])]


def test_request_body(fake: FakeServer) -> None:
    (record,) = load(fake, [spec(output_tokens=5, prompt_tokens=4)])
    assert fake.bodies == [
        {
            "model": MODEL,
            "prompt": [1000, 100, 101, 102],
            "max_tokens": 5,
            "min_tokens": 5,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
            "return_token_ids": True,
        }
    ]
    assert record.error is None and record.output_tokens == 5 and record.prompt_tokens == 4


def test_stamps_match_server_delays(fake: FakeServer) -> None:
    fake.default = Script(first_s=0.1, gap_s=0.03)
    (record,) = load(fake, [spec(output_tokens=5)])
    assert record.output_tokens == 5
    assert 0.1 <= record.token_s[0] - record.send_s < 0.1 + SLACK_S
    assert 0.22 <= record.token_s[-1] - record.send_s < 0.22 + SLACK_S
    assert len(gaps(record)) == 4 and all(gap > 0 for gap in gaps(record))
    metrics = run_metrics([record], batch=1)
    assert 100 <= metrics.ttft_ms.mean < 100 + SLACK_S * 1000
    assert 30 - SLACK_S * 1000 / 4 <= metrics.itl_ms.mean < 30 + SLACK_S * 1000 / 4
    assert metrics.tpot_ms.mean == pytest.approx(metrics.itl_ms.mean)


def test_tokens_per_chunk_share_a_stamp(fake: FakeServer) -> None:
    fake.default = Script(per_chunk=3, gap_s=0.03)
    (record,) = load(fake, [spec(output_tokens=7)])
    t = record.token_s
    assert len(t) == 7 and t[0] == t[1] == t[2] and t[3] == t[4] == t[5] and t[6] > t[5] > t[2]
    assert 0.03 <= t[3] - record.send_s and 0.06 <= t[6] - record.send_s < 0.06 + SLACK_S


@pytest.mark.parametrize(
    "script, expected",
    [
        (Script(usage_tokens=7), 7),  # the server undercounted its chunks' tokens
        (Script(usage_tokens=2), 2),
        (Script(token_ids=False, per_chunk=2), 4),  # usage counts what chunks did not list
        (Script(token_ids=False, per_chunk=2, usage=False), 2),  # one token per chunk assumed
        (Script(usage=False, per_chunk=3), 4),
    ],
)
def test_token_count_comes_from_usage(fake: FakeServer, script: Script, expected: int) -> None:
    fake.default = script
    (record,) = load(fake, [spec(output_tokens=4)])
    assert record.error is None and record.output_tokens == expected


def test_missing_tokens_take_the_last_chunk_stamp(fake: FakeServer) -> None:
    fake.default = Script(usage_tokens=6, gap_s=0.01)
    (record,) = load(fake, [spec(output_tokens=3)])
    assert record.token_s[2:] == (record.token_s[2],) * 4 and record.token_s[1] < record.token_s[2]


@pytest.mark.parametrize("script", [Script(split=True), Script(join=True)])
def test_events_split_or_joined_across_writes(fake: FakeServer, script: Script) -> None:
    fake.default = script
    (record,) = load(fake, [spec(output_tokens=5)])
    assert record.error is None and record.output_tokens == 5 and record.prompt_tokens == 3


def test_comments_crlf_and_multiline_data(fake: FakeServer) -> None:
    chunk = {"choices": [{"index": 0, "text": "a", "token_ids": [7, 8]}]}
    fake.default = Script(
        events=(
            ": ping\r\n\r\n",
            f"event: message\r\ndata: {json.dumps(chunk)}\r\n\r\n",
            ': keep-alive\n\ndata: {"choices": [{"index": 0,\ndata: "token_ids": [9]}]}\n\n',
            "data: [DONE]",  # no blank line before the stream ends
        )
    )
    (record,) = load(fake, [spec()])
    assert record.error is None and record.output_tokens == 3


def test_parser_reassembles_any_split() -> None:
    text = 'data: {"a": 1}\r\n\r\n: ping\n\ndata: é\n\ndata: [DONE]\n\n'.encode()
    for cut in range(1, len(text)):
        parser = SseParser()
        assert [*parser.feed(text[:cut]), *parser.feed(text[cut:]), *parser.close()] == [
            '{"a": 1}',
            "é",
            "[DONE]",
        ]


@pytest.mark.parametrize(
    "body, message",
    [
        (
            '{"error": {"message": "max_tokens is too large", "type": "BadRequestError", "code": 400}}',
            "HTTP 400: max_tokens is too large",
        ),
        ('{"object": "error", "message": "bad prompt", "code": 400}', "HTTP 400: bad prompt"),
        ("not json " + "x" * 300, "HTTP 400: not json " + "x" * 190 + "…"),
        ("", "HTTP 400: Bad Request"),  # the status line's reason
    ],
)
def test_http_error_keeps_the_message(fake: FakeServer, body: str, message: str) -> None:
    fake.default = Script(status=400, error_body=body)
    (record,) = load(fake, [spec()])
    assert record.error == message and record.token_s == ()


def test_failures_leave_the_rest_of_the_load(fake: FakeServer) -> None:
    fake.scripts = {
        1: Script(status=500, error_body='{"error": {"message": "engine dead"}}'),
        2: Script(drop_after=2, gap_s=0.01),
        3: Script(events=('data: {"choices": [oops\n\n',)),
        4: Script(events=(": ping\n\n", "data: [DONE]\n\n")),
        5: Script(events=('data: {"error": {"message": "out of memory", "code": 500}}\n\n',)),
    }
    specs = [spec(i) for i in (1000, 1, 2, 3, 4, 5, 1001)]
    records = load(fake, specs)
    assert [r.error for r in records] == [
        None,
        "HTTP 500: engine dead",
        records[2].error,
        'malformed JSON in stream: {"choices": [oops',
        "no token received",
        "server error in stream: out of memory",
        None,
    ]
    assert records[2].error is not None and records[2].error.startswith("connection lost mid-response: ")
    assert len(records[2].token_s) == 2
    assert records[0].output_tokens == records[-1].output_tokens == 4
    metrics = run_metrics(records, batch=7)
    assert metrics.failed == 5 and metrics.output_tokens == 8


def test_hang_times_out(fake: FakeServer) -> None:
    fake.scripts = {1: Script(hang=True)}
    start = time.monotonic()
    records = load(fake, [spec(1), spec(1000)], timeout_s=0.5)
    assert time.monotonic() - start < 0.5 + 0.5
    assert records[0].error == "timed out after 0.5 s" and records[0].token_s == ()
    assert records[1].error is None


def test_stall_mid_stream_keeps_what_arrived(fake: FakeServer) -> None:
    fake.default = Script(gap_s=1.0)
    (record,) = load(fake, [spec(output_tokens=3)], timeout_s=0.3)
    assert record.error == "timed out after 0.3 s" and len(record.token_s) == 1


def test_concurrency_is_a_closed_loop(fake: FakeServer) -> None:
    fake.default = Script(first_s=0.05)
    records = load(fake, [spec(1000 + i, output_tokens=2) for i in range(6)], concurrency=2)
    assert fake.max_in_flight == 2
    assert all(r.error is None for r in records)
    sends = [r.send_s for r in records]
    assert sends == sorted(sends)
    # Request j starts only once all but one of the requests before it have finished.
    for j, started in enumerate(records):
        assert sum(r.token_s[-1] <= started.send_s for r in records[:j]) >= j - 1


def test_no_concurrency_limit_sends_all_at_once(fake: FakeServer) -> None:
    fake.default = Script(first_s=0.1)
    records = load(fake, [spec(1000 + i) for i in range(20)])
    assert fake.max_in_flight == 20
    assert max(r.send_s for r in records) - min(r.send_s for r in records) < SLACK_S


def test_arrivals_are_honoured(fake: FakeServer) -> None:
    offsets = [0.0, 0.05, 0.05, 0.15]
    specs = [spec(1000 + i) for i in range(4)]
    records = run_load(fake.endpoint, specs, offsets)
    start = records[0].send_s
    for record, offset in zip(records, offsets):
        assert offset <= record.send_s - start + 0.002 < offset + SLACK_S
    assert [a - fake.arrived_s[0] for a in fake.arrived_s] == pytest.approx(offsets, abs=SLACK_S)


def test_clock_stamps_sends_and_tokens(fake: FakeServer) -> None:
    ticks = iter(range(100))
    (record,) = run_load(fake.endpoint, [spec(output_tokens=2)], [0.0], clock=lambda: float(next(ticks)))
    assert record.send_s == 0.0 and record.token_s == (1.0, 2.0)


def test_cannot_connect_is_a_record() -> None:
    port = _closed_port()
    (record,) = run_load(Endpoint(f"http://127.0.0.1:{port}", MODEL), [spec()], [0.0])
    assert record.error == f"cannot connect to http://127.0.0.1:{port}/v1/completions: Connection refused"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"arrivals_s": [0.0, 0.0]}, "1 requests but 2 arrival offsets"),
        ({"arrivals_s": [-1.0]}, "arrival offsets must be finite and non-negative"),
        ({"concurrency": 0}, "concurrency=0 must be at least 1; use None for no limit"),
        ({"timeout_s": 0.0}, "timeout_s=0.0 must be positive"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"arrivals_s": [0.0], **kwargs}
    with pytest.raises(ValueError, match=f"^{message}$"):
        run_load(Endpoint("http://127.0.0.1:1", MODEL), [spec()], **args)


def test_empty_load() -> None:
    assert run_load(Endpoint("http://127.0.0.1:1", MODEL), [], []) == []


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_probe_good_server(fake: FakeServer) -> None:
    assert probe(fake.endpoint) is None


def test_probe_other_model(fake: FakeServer) -> None:
    fake.models = ("llama-a", "llama-b")
    assert probe(fake.endpoint) == (
        f"{fake.endpoint.url} does not serve model {MODEL}; it serves llama-a, llama-b"
    )
    fake.models = ()
    assert probe(fake.endpoint) == f"{fake.endpoint.url} does not serve model {MODEL}; it serves no model"


def test_probe_closed_port() -> None:
    port = _closed_port()
    assert probe(Endpoint(f"http://127.0.0.1:{port}/", MODEL)) == (
        f"cannot connect to http://127.0.0.1:{port}/v1/models: Connection refused"
    )


def test_probe_not_an_openai_server(fake: FakeServer) -> None:
    url = fake.endpoint.url + "/other"
    assert probe(Endpoint(url, MODEL)) == f"{url}/v1/models answered HTTP 404: 404: Not Found"


def test_probe_timeout(fake: FakeServer) -> None:
    fake.models_delay_s = 5.0
    start = time.monotonic()
    assert probe(fake.endpoint, timeout_s=0.2) == f"{fake.endpoint.url}/v1/models timed out after 0.2 s"
    assert time.monotonic() - start < 1
