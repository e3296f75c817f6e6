"""Does greenllm's serve client measure what ``vllm bench serve`` measures? TTFT, ITL and
E2EL (p50, p99) and output throughput from both clients, on one server, in one run.

One vLLM OpenAI-compatible server (the embedded model, TP 1, ``max_num_seqs`` = the
concurrency, started as serve mode starts it, stopped at the end) gets the same workload
from both clients: ``--requests`` token-id prompts of ``--input`` tokens (greenllm's seeded
prompts, the same ids for both), ``--output`` tokens forced, ``--concurrency`` in flight,
all sent at once (request rate inf). After one warm-up run of each, the clients alternate
for ``--rounds`` rounds, each first in every other round; the median of each figure over
the rounds is compared as greenllm / vLLM. Targets: every latency ratio within 0.95..1.05,
the throughput ratio at least 0.97.

How ``vllm bench serve`` is driven: its CLI (``main``) cannot send these prompts. The
embedded model has no tokenizer (``skip_tokenizer_init``), and every dataset that
``main`` loads needs one: ``random`` draws and decodes ids with it, ``timed_trace`` (the
one that sends token-id prompts) samples from its vocabulary, and without a tokenizer
(``--skip-tokenizer-init``) only datasets of text prompts load. So this awaits
``vllm.benchmarks.serve.benchmark``, the coroutine that ``main`` awaits and in which all of
its timing and metrics happen, with ``SampleRequest``s whose prompts are greenllm's token-id
lists, and the settings ``main`` would pass for ``--backend vllm --endpoint /v1/completions
--request-rate inf --max-concurrency N --ignore-eos --percentile-metrics ttft,tpot,itl,e2el
--metric-percentiles 50,99 --num-warmups 0``. Its initial test request (the ready check) is
skipped, as the server is known healthy and greenllm's client sends none, and its progress
bar is off, as greenllm's client draws none. Its body gets ``min_tokens`` and
``return_token_ids`` through ``extra_body`` (``--extra-body``), so that the two clients send
the same request and the server does the same work for both. ``benchmark`` reports TTFT and
ITL percentiles only when it has a tokenizer; it is given a stand-in that is truthy and
fails if called (it would be only for a response without ``usage``; the token counts come
from the server's ``usage``), so every vLLM figure here is computed by vLLM's own code.

Known differences that remain: vLLM's throughput divides by the time from before its
first dispatch to after its last request returns, greenllm's by first send to last token;
vLLM stamps chunks with ``perf_counter``, greenllm with ``monotonic`` (the same clock on
Linux). Both clients share this process (and ``freeze_gc_heap``, which ``main`` calls).
On a busy 2-core machine the server, both clients and everything else share the cores:
ratios there move by tens of percent from round to round; run it on a quiet machine. The
CPU time this process spends in each client's run is printed too, for information: what a
client takes from a server that shares its cores, and a figure that such noise moves less.

    python benchmarks/serve_fidelity.py [--rounds 5] [--requests 32] [--input 128]
        [--output 32] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tabulate import tabulate

from pytest_greenllm.driver import EngineSpec
from pytest_greenllm.engine import cpu_environment, on_cpu
from pytest_greenllm.knobs import EngineConfig
from pytest_greenllm.metrics import run_metrics
from pytest_greenllm.model_info import resolve_model
from pytest_greenllm.serve_client import Endpoint, run_load
from pytest_greenllm.server import ServerProcess, free_port, server_command
from pytest_greenllm.workloads import RequestSpec, Workload, build_requests

LATENCY_TARGET = (0.95, 1.05)
THROUGHPUT_TARGET = 0.97
PERCENTILES = (50, 99)
LATENCIES = ("ttft", "itl", "e2el")
FIGURES = [f"p{p}_{name}_ms" for name in LATENCIES for p in PERCENTILES]
THROUGHPUT = "output_throughput"
# CPU time this process spent in one client's run: what the client takes from a server that
# shares the machine's cores, free of the noise that the latencies carry. Units: ms.
CLIENT_CPU = "client_cpu_ms"
# Output tokens that arrived in the same streamed chunk as the token before them.
SHARED_CHUNK = "tokens_sharing_a_chunk"
KVCACHE_GIB = "2"


class NoTokenizer:
    """Stands in for the tokenizer ``benchmark`` wants before it reports TTFT and ITL; it
    would be called only to count the tokens of a response that had no ``usage``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            "vllm bench serve tried to count tokens with a tokenizer: the server sent no usage"
        )


def greenllm_round(endpoint: Endpoint, requests: Sequence[RequestSpec], concurrency: int) -> dict[str, float]:
    """One run of greenllm's client: its figures, keyed as ``vllm bench serve`` keys them."""
    records = run_load(endpoint, requests, [0.0] * len(requests), concurrency=concurrency)
    wrong = [r for r, spec in zip(records, requests) if r.error or r.output_tokens != spec.output_tokens]
    if wrong:
        raise RuntimeError(
            f"greenllm: {len(wrong)} of {len(records)} requests failed or came back short: "
            f"{wrong[0].error or f'{wrong[0].output_tokens} tokens'}"
        )
    metrics = run_metrics(records, concurrency)
    # Tokens that came in one chunk with the token before: greenllm stamps each token, so
    # these are ITLs of 0, where vLLM's client takes one ITL per chunk.
    shared = sum(1 for r in records for a, b in zip(r.token_s, r.token_s[1:]) if b == a)
    figures = {THROUGHPUT: metrics.output_throughput, SHARED_CHUNK: float(shared)}
    for name, stat in (("ttft", metrics.ttft_ms), ("itl", metrics.itl_ms), ("e2el", metrics.e2el_ms)):
        figures[f"p50_{name}_ms"] = stat.p50
        figures[f"p99_{name}_ms"] = stat.p99
    return figures


def vllm_round(
    endpoint: Endpoint, vllm_requests: list[Any], concurrency: int, output_tokens: int, printed: io.StringIO
) -> dict[str, Any]:
    """One run of ``vllm bench serve``'s ``benchmark`` coroutine: its result dict. What it
    prints goes to ``printed``."""
    from vllm.benchmarks.serve import TaskType, benchmark

    with contextlib.redirect_stdout(printed):
        result: dict[str, Any] = asyncio.run(
            benchmark(
                task_type=TaskType.GENERATION,
                endpoint_type="vllm",
                api_url=endpoint.api("completions"),
                base_url=endpoint.url,
                model_id=endpoint.model,
                model_name=None,
                tokenizer=NoTokenizer(),
                input_requests=vllm_requests,
                logprobs=None,
                request_rate=float("inf"),
                burstiness=1.0,
                disable_tqdm=True,
                num_warmups=0,
                profile=False,
                selected_percentile_metrics=["ttft", "tpot", "itl", "e2el"],
                selected_percentiles=[float(p) for p in PERCENTILES],
                ignore_eos=True,
                goodput_config_dict={},
                max_concurrency=concurrency,
                lora_modules=None,
                extra_headers=None,
                extra_body={"min_tokens": output_tokens, "return_token_ids": True},
                ready_check_timeout_sec=0,
            )
        )
    expected = len(vllm_requests) * output_tokens
    # Its ITLs are one per chunk after the first: fewer than tokens - 1 where chunks carry several.
    result[SHARED_CHUNK] = float(expected - len(vllm_requests) - sum(len(i) for i in result["itls"]))
    if result["failed"] or result["total_output_tokens"] != expected:
        errors = [e for e in result["errors"] if e]
        raise RuntimeError(
            f"vllm bench serve: {result['failed']} of {len(vllm_requests)} requests failed, "
            f"{result['total_output_tokens']} of {expected} tokens: {errors[:1]}"
        )
    return result


def verdict(ratio: float, low: float, high: float | None = None) -> str:
    return "meets" if ratio >= low and (high is None or ratio <= high) else "MISSES"


def main() -> int:
    parser = argparse.ArgumentParser(description="greenllm's serve client vs vllm bench serve")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--input", type=int, default=128, help="prompt tokens")
    parser.add_argument("--output", type=int, default=32, help="output tokens, forced")
    parser.add_argument("--concurrency", type=int, default=8, help="also the server's max_num_seqs")
    parser.add_argument("--log-dir", type=Path, default=Path(".greenllm"))
    args = parser.parse_args()

    from vllm.benchmarks.datasets import SampleRequest
    from vllm.utils.gc_utils import freeze_gc_heap

    spec = EngineSpec(EngineConfig("embedded", 1, args.concurrency), resolve_model("embedded"))
    requests = build_requests(Workload("fidelity", args.input, args.output), args.requests, seed=0)
    vllm_requests = [
        SampleRequest(prompt=list(r.prompt_token_ids), prompt_len=args.input, expected_output_len=args.output)
        for r in requests
    ]
    cpu = on_cpu()
    env = {
        **cpu_environment(1),
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", KVCACHE_GIB),
    }
    port = free_port()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log = (args.log_dir / f"serve-fidelity-{stamp}.log").resolve()
    printed_path = log.with_suffix(".vllm-bench.txt")
    results_path = log.with_suffix(".json")
    server = ServerProcess(server_command(spec, port, cpu), port, log, env if cpu else None)
    print(f"server log: {log}")
    printed = io.StringIO()
    ours: list[dict[str, float]] = []
    theirs: list[dict[str, Any]] = []
    try:
        start = time.monotonic()
        server.start()
        print(f"server healthy after {time.monotonic() - start:.0f} s at {server.url}")
        endpoint = Endpoint(server.url, spec.model.path)
        freeze_gc_heap()  # as vllm bench serve's main does before its benchmark
        greenllm_round(endpoint, requests, args.concurrency)  # warm-ups
        vllm_round(endpoint, vllm_requests, args.concurrency, args.output, printed)
        for index in range(args.rounds):
            # Interleaved, each first in every other round, so that drift of a noisy machine
            # and whatever the run before leaves behind hit both alike.
            for client in ("greenllm", "vllm") if index % 2 == 0 else ("vllm", "greenllm"):
                cpu_s = time.process_time()
                if client == "greenllm":
                    ours.append(greenllm_round(endpoint, requests, args.concurrency))
                    ours[-1][CLIENT_CPU] = (time.process_time() - cpu_s) * 1000
                else:
                    theirs.append(vllm_round(endpoint, vllm_requests, args.concurrency, args.output, printed))
                    theirs[-1][CLIENT_CPU] = (time.process_time() - cpu_s) * 1000
            print(
                f"round {index + 1}/{args.rounds}: output tok/s greenllm {ours[-1][THROUGHPUT]:.1f}, "
                f"vllm {theirs[-1][THROUGHPUT]:.1f}",
                flush=True,
            )
    finally:
        server.stop()
        printed_path.parent.mkdir(parents=True, exist_ok=True)
        printed_path.write_text(printed.getvalue())
        per_round = [{k: v for k, v in r.items() if not isinstance(v, list)} for r in theirs]
        results_path.write_text(json.dumps({"greenllm": ours, "vllm": per_round}, indent=1))
    print(f"vllm bench serve's printed results: {printed_path}; every round's figures: {results_path}")

    def medians(key: str) -> tuple[float, float, float, list[float]]:
        mine = statistics.median(float(r[key]) for r in ours)
        vllm = statistics.median(float(r[key]) for r in theirs)
        return (
            mine,
            vllm,
            mine / vllm,
            [round(float(a[key]) / float(b[key]), 3) for a, b in zip(ours, theirs)],
        )

    rows: list[tuple[str, float, float, float, str, str, list[float]]] = []
    latency_ratios = []
    for key in FIGURES:
        mine, vllm, ratio, spread = medians(key)
        latency_ratios.append(ratio)
        target = f"{LATENCY_TARGET[0]}..{LATENCY_TARGET[1]}"
        rows.append(
            (key.replace("_ms", " (ms)"), mine, vllm, ratio, target, verdict(ratio, *LATENCY_TARGET), spread)
        )
    mine, vllm, throughput, spread = medians(THROUGHPUT)
    target = f">= {THROUGHPUT_TARGET}"
    rows.append(
        ("output tok/s", mine, vllm, throughput, target, verdict(throughput, THROUGHPUT_TARGET), spread)
    )
    mine, vllm, ratio, spread = medians(CLIENT_CPU)
    rows.append(("client CPU (ms/run)", mine, vllm, ratio, "(information)", "", spread))
    shared = [int(float(r[SHARED_CHUNK])) for r in ours], [int(float(r[SHARED_CHUNK])) for r in theirs]
    print(
        f"tokens that came in one chunk with the token before, per round (of "
        f"{args.requests * (args.output - 1)} gaps): greenllm {shared[0]}, vllm {shared[1]}; greenllm "
        "counts them as ITLs of 0, vLLM's client folds them into one ITL per chunk"
    )
    print(
        f"{args.requests} requests, {args.input} in / {args.output} out, concurrency {args.concurrency}, "
        f"{args.rounds} rounds; medians over rounds"
    )
    headers = ("figure", "greenllm", "vllm bench serve", "ratio", "target", "verdict", "ratio per round")
    print(tabulate(rows, headers=headers, floatfmt=".3f"))
    worst = max(latency_ratios, key=lambda r: abs(r - 1))
    latency_ok = all(verdict(r, *LATENCY_TARGET) == "meets" for r in latency_ratios)
    print(
        f"latency ratios greenllm / vllm: worst {worst:.3f} "
        f"({'meets' if latency_ok else 'MISSES'} {LATENCY_TARGET[0]}..{LATENCY_TARGET[1]})"
    )
    throughput_ok = verdict(throughput, THROUGHPUT_TARGET) == "meets"
    print(
        f"output throughput ratio greenllm / vllm: {throughput:.3f} "
        f"({'meets' if throughput_ok else 'MISSES'} >= {THROUGHPUT_TARGET})"
    )
    ok = latency_ok and throughput_ok
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
