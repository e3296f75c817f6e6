"""Generate with the embedded model on the real vLLM engine; run as a script (vLLM spawns)."""

from __future__ import annotations

import json
import os
import sys
import time

from pytest_greenllm.model_info import embedded_model_dir
from pytest_greenllm.workloads import prompt_token_ids


def main() -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    input_tokens, output_tokens, count = (int(a) for a in sys.argv[1:4])
    llm = LLM(
        model=str(embedded_model_dir()),
        load_format="dummy",
        skip_tokenizer_init=True,
        max_num_seqs=count,
        gpu_memory_utilization=0.1,
        enforce_eager=True,
    )
    params = SamplingParams(max_tokens=output_tokens, min_tokens=output_tokens, ignore_eos=True)
    prompts = [
        TokensPrompt(prompt_token_ids=list(prompt_token_ids(0, input_tokens, i))) for i in range(count)
    ]
    start = time.monotonic()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    elapsed_s = time.monotonic() - start
    llm.llm_engine.engine_core.shutdown()
    lengths = [len(o.outputs[0].token_ids) for o in outputs]
    print(json.dumps({"lengths": lengths, "elapsed_s": elapsed_s}))


if __name__ == "__main__":
    main()
