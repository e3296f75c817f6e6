"""What the knob matrix needs to know of a model, read from its config.json when there is one.

The embedded model is a small Llama whose config.json ships with the plugin; vLLM runs it
with ``load_format="dummy"`` (random weights), so it needs no download and no tokenizer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

EMBEDDED = "embedded"


class ModelError(ValueError):
    """A model reference that cannot be used; the message says why."""


@dataclass(frozen=True)
class ModelInfo:
    """A model and the limits the matrix checks; None where the config is not at hand."""

    name: str  # what the user asked for: 'embedded', a path or a hub id
    path: str  # what vLLM is given
    embedded: bool
    attention_heads: int | None
    kv_heads: int | None
    max_context_tokens: int | None
    vocab_size: int | None


def embedded_model_dir() -> Path:
    """The directory holding the embedded model's config.json."""
    return Path(str(resources.files("pytest_greenllm") / "data" / "tiny-llama"))


def _read_config(directory: Path) -> dict[str, object]:
    config_path = directory / "config.json"
    try:
        loaded = json.loads(config_path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ModelError(f"{config_path}: cannot read ({e.strerror})") from e
    except json.JSONDecodeError as e:
        raise ModelError(f"{config_path}: not valid JSON ({e})") from e
    if not isinstance(loaded, dict):
        raise ModelError(f"{config_path}: expected a JSON object")
    return loaded


def _int_or_none(config: dict[str, object], key: str) -> int | None:
    value = config.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def unresolved_model(name: str, max_context_tokens: int | None = None) -> ModelInfo:
    """A model known by name only (a hub id, a served model): its limits are unknown."""
    return ModelInfo(name, name, False, None, None, max_context_tokens, None)


def resolve_model(name: str) -> ModelInfo:
    """Describe ``name``: 'embedded', a local model directory, or a hub id (limits unknown)."""
    if name == EMBEDDED:
        directory, embedded = embedded_model_dir(), True
    elif Path(name).expanduser().exists():
        directory, embedded = Path(name).expanduser(), False
        if not (directory / "config.json").is_file():
            raise ModelError(f"{name} has no config.json; give a model directory or a hub id")
    elif name.startswith((".", "/", "~")):
        raise ModelError(f"{name} does not exist; give an existing model directory or a hub id")
    else:
        return unresolved_model(name)
    config = _read_config(directory)
    heads = _int_or_none(config, "num_attention_heads")
    kv_heads = _int_or_none(config, "num_key_value_heads") or heads
    return ModelInfo(
        name,
        str(directory),
        embedded,
        heads,
        kv_heads,
        _int_or_none(config, "max_position_embeddings"),
        _int_or_none(config, "vocab_size"),
    )
