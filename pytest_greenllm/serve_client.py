"""A streaming client for OpenAI-compatible completions servers (``vllm serve`` and peers).

Timing follows ``vllm bench serve``'s own client (``async_request_openai_completions``): the
send time is read just before the POST, and each streamed chunk that carries choices is
stamped when it is parsed, so the TTFT, ITL and E2EL that :mod:`pytest_greenllm.metrics`
derives from the stamps match that tool's. Failures never raise: they come back as records
with ``error`` set, and the load goes on.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from pytest_greenllm.metrics import RequestRecord
from pytest_greenllm.workloads import RequestSpec

# How much of a server's error message a record keeps: enough to read the cause, and short
# enough for one line of a summary.
ERROR_CHARS = 200


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible server and the model to ask it for."""

    url: str  # base URL without /v1, e.g. "http://127.0.0.1:8000"
    model: str  # the name the server serves the model under

    def api(self, path: str) -> str:
        """The URL of ``/v1/{path}`` on this server."""
        return f"{self.url.rstrip('/')}/v1/{path}"


class EndpointError(Exception):
    """An answer the client cannot use; its message is one line that says why."""


class SseParser:
    """Splits a byte stream into the data payloads of its server-sent events.

    Network reads may split one event or join several; only a blank line ends an event.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""

    def feed(self, chunk: bytes) -> list[str]:
        """The payloads of the events that ``chunk`` completes."""
        # Normalising after the join catches a CRLF split across two reads.
        self._buffer = (self._buffer + self._decoder.decode(chunk)).replace("\r\n", "\n")
        *events, self._buffer = self._buffer.split("\n\n")
        return [data for data in map(_event_data, events) if data is not None]

    def close(self) -> list[str]:
        """The payload of an event the stream ended without a blank line after."""
        rest = (self._buffer + self._decoder.decode(b"", final=True)).replace("\r\n", "\n")
        self._buffer = ""
        data = _event_data(rest)
        return [] if data is None else [data]


def _event_data(event: str) -> str | None:
    """The joined ``data:`` lines of one event; None for a comment-only (ping) event."""
    lines = [line[5:].removeprefix(" ") for line in event.split("\n") if line.startswith("data:")]
    return "\n".join(lines) if lines else None


@dataclass
class _Stream:
    """What one response has delivered so far."""

    clock: Callable[[], float]
    token_s: list[float] = field(default_factory=list)
    last_chunk_s: float | None = None  # the latest chunk with choices, even one of 0 tokens
    completion_tokens: int | None = None  # as the usage chunk reports
    prompt_tokens: int | None = None

    def on_data(self, data: str) -> None:
        """Take one event's payload; raises EndpointError for one the client cannot use."""
        if data == "[DONE]":
            return
        try:
            event = json.loads(data)
        except json.JSONDecodeError:
            raise EndpointError(f"malformed JSON in stream: {_line(data)}") from None
        if not isinstance(event, dict):
            raise EndpointError(f"unexpected event in stream: {_line(data)}")
        if "error" in event:
            raise EndpointError(f"server error in stream: {_error_message(event)}")
        choices = event.get("choices")
        if choices:
            # Stamped right after parsing, as vLLM's client does, before anything slower.
            now = self.clock()
            self.last_chunk_s = now
            self.token_s.extend([now] * _chunk_tokens(choices, data))
        usage = event.get("usage")
        if isinstance(usage, dict):
            completion, prompt = usage.get("completion_tokens"), usage.get("prompt_tokens")
            if isinstance(completion, int):
                self.completion_tokens = completion
            if isinstance(prompt, int):
                self.prompt_tokens = prompt

    def tokens(self) -> tuple[float, ...]:
        """One stamp per output token, counted by the server's usage where it sent one."""
        stamps = self.token_s
        if self.completion_tokens is None:
            return tuple(stamps)
        if self.completion_tokens <= len(stamps):
            return tuple(stamps[: self.completion_tokens])
        if self.last_chunk_s is None:
            return ()
        # Tokens that no chunk listed arrived with the last chunk at the latest.
        return (*stamps, *[self.last_chunk_s] * (self.completion_tokens - len(stamps)))


def _chunk_tokens(choices: Any, data: str) -> int:
    """Tokens a chunk carries: its ``token_ids``, or 1 where the server sends none."""
    first = choices[0] if isinstance(choices, list) else None
    if not isinstance(first, dict):
        raise EndpointError(f"unexpected choices in stream: {_line(data)}")
    token_ids = first.get("token_ids")
    return len(token_ids) if isinstance(token_ids, list) else 1


def _line(text: str) -> str:
    """``text`` on one line, cut to ERROR_CHARS."""
    flat = " ".join(text.split())
    return flat if len(flat) <= ERROR_CHARS else flat[: ERROR_CHARS - 1] + "…"


def _error_message(body: Any) -> str:
    """The message of an OpenAI-style error body (or vLLM's older flat one), else the body."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return _line(error["message"])
        if isinstance(error, str):
            return _line(error)
        if isinstance(body.get("message"), str):
            return _line(body["message"])
    return _line(json.dumps(body))


async def _http_error(response: aiohttp.ClientResponse) -> str:
    """'HTTP 400: message' for a response that is not a success."""
    text = await response.text(errors="replace")
    try:
        message = _error_message(json.loads(text))
    except json.JSONDecodeError:
        message = _line(text) or (response.reason or "")
    return f"HTTP {response.status}: {message}" if message else f"HTTP {response.status}"


def _describe(exc: BaseException, url: str, timeout_s: float) -> str:
    """One line that says why a request to ``url`` failed."""
    if isinstance(exc, TimeoutError):  # aiohttp's read timeout is one too
        return f"timed out after {timeout_s:g} s"
    if isinstance(exc, aiohttp.ClientConnectorError):
        errno = exc.os_error.errno
        reason = os.strerror(errno) if errno and errno > 0 else exc.os_error.strerror or str(exc)
        return f"cannot connect to {url}: {reason}"
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
        return f"connection lost mid-response: {_line(str(exc))}"
    return f"{type(exc).__name__}: {_line(str(exc))}"


def _headers() -> dict[str, str]:
    # As vLLM's client: a server started with --api-key expects the key in OPENAI_API_KEY.
    key = os.environ.get("OPENAI_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def _payload(endpoint: Endpoint, spec: RequestSpec) -> dict[str, Any]:
    return {
        "model": endpoint.model,
        "prompt": list(spec.prompt_token_ids),
        "max_tokens": spec.output_tokens,
        "min_tokens": spec.output_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        "return_token_ids": True,
    }


async def _send(
    session: aiohttp.ClientSession,
    endpoint: Endpoint,
    spec: RequestSpec,
    timeout_s: float,
    clock: Callable[[], float],
) -> RequestRecord:
    """Send one request, stream its answer, and stamp each token as it arrives."""
    url = endpoint.api("completions")
    payload, headers = _payload(endpoint, spec), _headers()
    stream = _Stream(clock)
    error: str | None = None
    send_s = clock()  # after building the body, as vLLM's client; aiohttp encodes it after
    try:
        async with asyncio.timeout(timeout_s):
            async with session.post(url, json=payload, headers=headers) as response:
                if response.status != 200:
                    error = await _http_error(response)
                else:
                    parser = SseParser()
                    async for chunk in response.content.iter_any():
                        for data in parser.feed(chunk):
                            stream.on_data(data)
                    for data in parser.close():
                        stream.on_data(data)
    except EndpointError as exc:
        error = str(exc)
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        error = _describe(exc, url, timeout_s)
    prompt_tokens = stream.prompt_tokens if stream.prompt_tokens is not None else len(spec.prompt_token_ids)
    if error is not None:
        return RequestRecord(send_s, tuple(stream.token_s), prompt_tokens, error)
    tokens = stream.tokens()
    return RequestRecord(send_s, tokens, prompt_tokens, None if tokens else "no token received")


async def _load(
    endpoint: Endpoint,
    requests: Sequence[RequestSpec],
    arrivals_s: Sequence[float],
    concurrency: int | None,
    timeout_s: float,
    clock: Callable[[], float],
) -> list[RequestRecord]:
    # No connection cap: a client-side queue would hide from the server the load it is
    # meant to see. aiohttp's default 5-minute total would cut long streams; the deadline
    # per request is _send's own, the read timeout bounds a stalled stream.
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        slots = asyncio.Semaphore(concurrency) if concurrency is not None else None

        async def one(spec: RequestSpec) -> RequestRecord:
            try:
                return await _send(session, endpoint, spec, timeout_s, clock)
            finally:
                if slots is not None:
                    slots.release()

        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks: list[asyncio.Task[RequestRecord]] = []
        # One dispatcher takes the slots, so requests start strictly in the order given.
        for spec, offset in zip(requests, arrivals_s):
            delay = start + offset - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if slots is not None:
                await slots.acquire()
            tasks.append(asyncio.create_task(one(spec)))
        return list(await asyncio.gather(*tasks))


def run_load(
    endpoint: Endpoint,
    requests: Sequence[RequestSpec],
    arrivals_s: Sequence[float],
    concurrency: int | None = None,
    timeout_s: float = 600.0,
    clock: Callable[[], float] = time.monotonic,
) -> list[RequestRecord]:
    """Send ``requests`` to ``endpoint`` and return one record each, in the order given.

    Request i starts ``arrivals_s[i]`` seconds after the start (all 0: at once), and, with a
    ``concurrency``, only while fewer than that many are in flight (a closed loop). Each
    request has ``timeout_s`` in all. ``clock`` stamps sends and tokens. Units: s.
    The caller checks each record's token count against the spec's forced length.
    """
    if len(arrivals_s) != len(requests):
        raise ValueError(f"{len(requests)} requests but {len(arrivals_s)} arrival offsets")
    if any(not math.isfinite(a) or a < 0 for a in arrivals_s):
        raise ValueError("arrival offsets must be finite and non-negative")
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"concurrency={concurrency} must be at least 1; use None for no limit")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s={timeout_s} must be positive")
    return asyncio.run(_load(endpoint, requests, arrivals_s, concurrency, timeout_s, clock))


async def _model_list(endpoint: Endpoint, timeout_s: float) -> list[dict[str, Any]]:
    """The entries of ``/v1/models``; raises EndpointError saying why it cannot tell."""
    url = endpoint.api("models")
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, headers=_headers()) as response,
        ):
            if response.status != 200:
                raise EndpointError(f"{url} answered {await _http_error(response)}")
            text = await response.text(errors="replace")
    except TimeoutError as exc:
        raise EndpointError(f"{url} {_describe(exc, url, timeout_s)}") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise EndpointError(_describe(exc, url, timeout_s)) from exc
    try:
        data = json.loads(text)["data"]
        if not all(isinstance(model, dict) and "id" in model for model in data):
            raise TypeError("a model without an id")
        return list(data)
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise EndpointError(f"{url} answered no model list: {_line(text)}") from exc


def connect(url: str, model: str | None, timeout_s: float = 10.0) -> tuple[Endpoint, int | None]:
    """The server at ``url`` and the model to ask it for (``model``, or the only one it
    serves), with the context length it says that model has (vLLM lists ``max_model_len``;
    None where it does not). Raises EndpointError with one line that says why not."""
    models = asyncio.run(_model_list(Endpoint(url, model or ""), timeout_s))
    ids = [str(entry["id"]) for entry in models]
    if model is None:
        if len(ids) != 1:
            raise EndpointError(
                f"{url} serves {len(ids)} models ({', '.join(ids) or 'none'}); name the one to measure"
            )
        model = ids[0]
    elif model not in ids:
        raise EndpointError(f"{url} does not serve model {model}; it serves {', '.join(ids) or 'no model'}")
    entry = models[ids.index(model)]
    length = entry.get("max_model_len")
    return Endpoint(url, model), length if isinstance(length, int) and not isinstance(length, bool) else None


def probe(endpoint: Endpoint, timeout_s: float = 10.0) -> str | None:
    """None if ``endpoint`` answers and serves its model; else one line that says why not."""
    try:
        connect(endpoint.url, endpoint.model, timeout_s)
    except EndpointError as exc:
        return str(exc)
    return None
