"""The server's /metrics, scraped during a window: queueing, KV cache and the window's own
server-side latency histograms."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pytest_greenllm.scrape import Scraper, parse


def metrics(running: int, ttft_fast: int, ttft_all: int) -> str:
    return f"""# HELP vllm:num_requests_running Requests running.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="m"}} {running}.0
vllm:num_requests_running{{engine="1",model_name="m"}} 1.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0",model_name="m"}} 3.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{engine="0",model_name="m"}} 0.25
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{{engine="0",le="0.1",model_name="m"}} {ttft_fast}.0
vllm:time_to_first_token_seconds_bucket{{engine="0",le="+Inf",model_name="m"}} {ttft_all}.0
vllm:time_to_first_token_seconds_count{{engine="0",model_name="m"}} {ttft_all}.0
vllm:time_to_first_token_seconds_sum{{engine="0",model_name="m"}} 1.5
"""


def test_parse_sums_label_sets_and_keeps_histogram_buckets() -> None:
    scrape = parse(metrics(running=2, ttft_fast=1, ttft_all=3))
    assert scrape.values["vllm:num_requests_running"] == 3.0  # two engines
    assert scrape.values["vllm:time_to_first_token_seconds_count"] == 3.0
    assert scrape.buckets["vllm:time_to_first_token_seconds"] == {"0.1": 1.0, "+Inf": 3.0}
    assert scrape.buckets["vllm:inter_token_latency_seconds"] == {}


class Server:
    """A /metrics endpoint whose counts grow with every scrape."""

    def __init__(self) -> None:
        self.scrapes = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.scrapes += 1
                body = metrics(owner.scrapes, owner.scrapes, 2 * owner.scrapes).encode()
                self.send_response(200 if self.path == "/metrics" else 404)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/metrics"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def test_a_window_is_scraped_from_start_to_end(server: Server) -> None:
    now = [10.0]
    with Scraper(server.url, window_start_s=10.0, clock=lambda: now[0], period_s=0.05) as scraper:
        now[0] = 10.2
        threading.Event().wait(0.2)
        now[0] = 10.5
    view = scraper.view()
    # A scrape as the window opens, some while it runs, one as it ends.
    assert len(view.samples) == server.scrapes >= 3 and view.failed_scrapes == 0
    first, last = view.samples[0], view.samples[-1]
    assert (first.t_s, last.t_s) == (0.0, 0.5)
    assert (first.running, first.waiting, first.kv_cache_usage) == (2.0, 3.0, 0.25)
    assert first.ttft_count == 2.0 and first.itl_count is None
    # The window's own histogram: what the last scrape counted beyond the first.
    n = server.scrapes
    assert dict(view.ttft_buckets) == {"0.1": n - 1.0, "+Inf": 2.0 * (n - 1)}
    assert view.itl_buckets == ()


def test_an_unreachable_server_is_counted_not_raised() -> None:
    with Scraper("http://127.0.0.1:9/metrics", window_start_s=0.0, period_s=10) as scraper:
        pass
    view = scraper.view()
    assert view.samples == () and view.failed_scrapes == 2
    assert view.error is not None and "127.0.0.1:9" in view.error
