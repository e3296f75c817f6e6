"""The server's own view of a run: its Prometheus ``/metrics``, scraped about once a second.

Queueing (running and waiting requests), KV-cache use and the server-side TTFT and ITL
histograms, stamped with the meter's clock, so that a point's report shows them beside its
power timeline. Parsing is prometheus_client's; the names are vLLM's (``vllm:...``), and
another server's metrics are simply absent.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

from prometheus_client.parser import text_string_to_metric_families

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_CACHE = "vllm:kv_cache_usage_perc"
TTFT = "vllm:time_to_first_token_seconds"
ITL = "vllm:inter_token_latency_seconds"
PERIOD_S = 1.0
READ_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class ServerSample:
    """One scrape; None where the server does not export the metric. Units: s, fraction."""

    t_s: float  # seconds into the measurement window
    running: float | None  # requests the engine is running
    waiting: float | None  # requests queued
    kv_cache_usage: float | None  # 0..1
    ttft_count: float | None  # server-side TTFTs observed so far (cumulative)
    ttft_sum_s: float | None
    itl_count: float | None
    itl_sum_s: float | None


@dataclass(frozen=True)
class ServerView:
    """A window's scrapes, and the server-side latency histograms of the window alone."""

    samples: tuple[ServerSample, ...]
    ttft_buckets: tuple[tuple[str, float], ...]  # (upper bound in s, count in the window)
    itl_buckets: tuple[tuple[str, float], ...]
    failed_scrapes: int
    error: str | None  # the last scrape's failure, if any


@dataclass
class _Scrape:
    values: dict[str, float]
    buckets: dict[str, dict[str, float]]


def parse(text: str) -> _Scrape:
    """The metrics of one scrape, summed over label sets (engines, models)."""
    values: dict[str, float] = {}
    buckets: dict[str, dict[str, float]] = {TTFT: {}, ITL: {}}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_bucket") and family.name in buckets:
                le = sample.labels.get("le", "")
                buckets[family.name][le] = buckets[family.name].get(le, 0.0) + sample.value
            else:
                values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return _Scrape(values, buckets)


def exports_metrics(url: str) -> bool:
    """Whether ``url`` answers with Prometheus text (a server without metrics answers 404)."""
    try:
        with urllib.request.urlopen(url, timeout=READ_TIMEOUT_S) as response:
            parse(response.read().decode())
        return True
    except (OSError, ValueError):
        return False


def _window_buckets(first: _Scrape, last: _Scrape, name: str) -> tuple[tuple[str, float], ...]:
    start, end = first.buckets[name], last.buckets[name]
    return tuple((le, end[le] - start.get(le, 0.0)) for le in end)


@dataclass
class Scraper:
    """Scrapes ``url`` every ``period_s`` on a background thread while in its ``with``."""

    url: str
    window_start_s: float  # the meter's clock when the window opened
    clock: Callable[[], float] = time.monotonic
    period_s: float = PERIOD_S
    _scrapes: list[tuple[float, _Scrape]] = field(default_factory=list)
    _failed: int = 0
    _error: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _scrape(self) -> None:
        t = self.clock() - self.window_start_s
        try:
            with urllib.request.urlopen(self.url, timeout=READ_TIMEOUT_S) as response:
                text = response.read().decode()
            self._scrapes.append((t, parse(text)))
        except (OSError, ValueError) as e:  # unreachable, timed out, not Prometheus text
            self._failed += 1
            self._error = f"{self.url}: {e}"

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self._scrape()

    def __enter__(self) -> Scraper:
        self._scrape()
        self._thread = threading.Thread(target=self._run, name="greenllm-scrape", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._scrape()  # the window's end, for the histograms

    def view(self) -> ServerView:
        """What the scrapes saw."""
        samples = tuple(_sample(t, s.values) for t, s in self._scrapes)
        ttft: tuple[tuple[str, float], ...] = ()
        itl: tuple[tuple[str, float], ...] = ()
        if len(self._scrapes) >= 2:
            first, last = self._scrapes[0][1], self._scrapes[-1][1]
            ttft, itl = _window_buckets(first, last, TTFT), _window_buckets(first, last, ITL)
        return ServerView(samples, ttft, itl, self._failed, self._error)


def _sample(t_s: float, values: dict[str, float]) -> ServerSample:
    return ServerSample(
        t_s=t_s,
        running=values.get(RUNNING),
        waiting=values.get(WAITING),
        kv_cache_usage=values.get(KV_CACHE),
        ttft_count=values.get(f"{TTFT}_count"),
        ttft_sum_s=values.get(f"{TTFT}_sum"),
        itl_count=values.get(f"{ITL}_count"),
        itl_sum_s=values.get(f"{ITL}_sum"),
    )
