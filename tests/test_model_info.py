"""The embedded model fits every knob we ship, and model references resolve or fail clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_greenllm.model_info import ModelError, embedded_model_dir, resolve_model
from pytest_greenllm.workloads import DEFAULT_BUCKETS, TOKEN_ID_HIGH

# vLLM's CPU attention kernels accept only these head sizes.
CPU_HEAD_SIZES = {32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512}


def test_embedded_model_suits_the_cpu_backend_and_every_tp() -> None:
    config = json.loads((embedded_model_dir() / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["hidden_size"] // config["num_attention_heads"] in CPU_HEAD_SIZES
    assert config["head_dim"] in CPU_HEAD_SIZES
    for tp in (1, 2, 4, 8):
        assert config["num_attention_heads"] % tp == 0
        assert config["num_key_value_heads"] % tp == 0
    # Prompts draw ids below TOKEN_ID_HIGH, like `vllm bench latency`.
    assert config["vocab_size"] >= TOKEN_ID_HIGH


def test_embedded_model_info() -> None:
    info = resolve_model("embedded")
    assert info.embedded and info.path == str(embedded_model_dir())
    assert (info.attention_heads, info.kv_heads) == (8, 8)
    assert info.max_context_tokens is not None
    assert info.max_context_tokens >= max(i + o for i, o in DEFAULT_BUCKETS.values())


def test_local_model_directory(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps({"num_attention_heads": 64, "max_position_embeddings": 4096})
    )
    info = resolve_model(str(tmp_path))
    assert not info.embedded
    # Without num_key_value_heads a model has as many KV heads as attention heads.
    assert (info.attention_heads, info.kv_heads, info.max_context_tokens) == (64, 64, 4096)


def test_hub_id_has_unknown_limits() -> None:
    info = resolve_model("meta-llama/Llama-2-70b-hf")
    assert info.path == "meta-llama/Llama-2-70b-hf"
    assert (info.attention_heads, info.max_context_tokens) == (None, None)


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "not valid JSON"), ("[1, 2]", "expected a JSON object")],
)
def test_broken_config_is_reported(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(ModelError, match=message):
        resolve_model(str(tmp_path))
