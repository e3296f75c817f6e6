"""Does greenllm's measured run cost throughput? Its output-token throughput against what
``vllm bench throughput`` reports (``vllm.benchmarks.throughput.run_vllm``), in one run.

Same engine (the embedded model, TP 1, max_num_seqs 64, built once and warmed up), same
workload (random token ids, 128 in / 32 out, 64 prompts, outputs forced to 32 tokens).
Each round times greenllm's step loop and then ``_run_vllm_requests``, the timed part of
``vllm bench throughput``, on that engine; the ratio of the medians over ``--rounds``
rounds is the figure. Target: >= 0.97.

    python benchmarks/fidelity.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics

TARGET = 0.97
PROMPTS, INPUT_TOKENS, OUTPUT_TOKENS, MAX_NUM_SEQS = 64, 128, 32, 64


def main() -> int:
    parser = argparse.ArgumentParser(description="greenllm's run vs vllm bench throughput")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from vllm.benchmarks.datasets import SampleRequest
    from vllm.benchmarks.throughput import _run_vllm_requests

    from pytest_greenllm.driver import EngineSpec
    from pytest_greenllm.engine import EngineCache, run_requests, warm_up
    from pytest_greenllm.knobs import EngineConfig
    from pytest_greenllm.metrics import run_metrics
    from pytest_greenllm.model_info import resolve_model
    from pytest_greenllm.workloads import build_requests, custom_workload

    spec = EngineSpec(EngineConfig("embedded", 1, MAX_NUM_SEQS), resolve_model("embedded"))
    requests = build_requests(custom_workload(INPUT_TOKENS, OUTPUT_TOKENS), PROMPTS, seed=0)
    vllm_requests = [
        SampleRequest(
            prompt={"prompt_token_ids": list(r.prompt_token_ids)},
            prompt_len=INPUT_TOKENS,
            expected_output_len=OUTPUT_TOKENS,
        )
        for r in requests
    ]
    cache = EngineCache()
    llm = cache.get(spec)
    warm_up(llm, "fidelity")
    ours: list[float] = []
    theirs: list[float] = []
    for round_ in range(args.rounds):
        records = run_requests(llm, requests, [0.0] * PROMPTS, f"fidelity-{round_}")
        ours.append(run_metrics(records, MAX_NUM_SEQS).output_throughput)
        elapsed, _ = _run_vllm_requests(
            llm,
            vllm_requests,
            1,
            disable_detokenize=True,
            do_profile=False,
            prequeue_requests=False,
            enable_lora=False,
        )
        theirs.append(PROMPTS * OUTPUT_TOKENS / elapsed)
    cache.close()
    ratio = statistics.median(ours) / statistics.median(theirs)
    print(f"greenllm output tokens/s, per round: {[round(x, 1) for x in ours]}")
    print(f"vllm bench throughput output tokens/s, per round: {[round(x, 1) for x in theirs]}")
    verdict = "meets" if ratio >= TARGET else "MISSES"
    print(f"fidelity ratio (median greenllm / median vllm): {ratio:.3f} ({verdict} >= {TARGET})")
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
