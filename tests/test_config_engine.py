"""The engine options: --greenllm-rate and the repeatable --greenllm-engine-arg."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_greenllm.config import Raw, parse_engine_args, parse_rate, settings_key
from pytest_greenllm.options import OPTIONS_BY_NAME


def raw(name: str, text: str) -> Raw:
    return Raw(OPTIONS_BY_NAME[name], text, f"--greenllm-{name}={text}")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("inf", None), ("INF", None), (" inf ", None), ("2.5", 2.5), ("1e3", 1000.0), ("0.01", 0.01)],
)
def test_parse_rate_accepts(text: str, expected: float | None) -> None:
    assert parse_rate(raw("rate", text)) == expected


# 'nan' passes a plain `< 0` check, and a Poisson process at rate 0 never sends anything.
@pytest.mark.parametrize("text", ["0", "-1", "x", "nan", "", "-inf", "infinity", "1/s"])
def test_parse_rate_rejects(text: str) -> None:
    with pytest.raises(pytest.UsageError) as info:
        parse_rate(raw("rate", text))
    assert str(info.value) == (
        f"--greenllm-rate={text}: the arrival rate ('inf' or requests/s) must be a number > 0"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max_model_len=4096", {"max_model_len": 4096}),
        ("enforce_eager=true", {"enforce_eager": True}),
        ("dtype=bfloat16", {"dtype": "bfloat16"}),
        ("gpu_memory_utilization=0.85", {"gpu_memory_utilization": 0.85}),
        ("quantization=null", {"quantization": None}),
        # json.dumps writes objects with spaces: a line, not a word, is one argument.
        ('hf_overrides={"rope_theta": 1e6}', {"hf_overrides": {"rope_theta": 1e6}}),
        ('seed=3\nhf_overrides={"a": [1, 2]}', {"seed": 3, "hf_overrides": {"a": [1, 2]}}),
        # Several, as the CLI joins repeats and as ini lines come.
        ("max_model_len=4096\nenforce_eager=false", {"max_model_len": 4096, "enforce_eager": False}),
        ("  dtype=half \n\n seed=3 ", {"dtype": "half", "seed": 3}),
        # The later of two wins, like repeated command-line flags elsewhere.
        ("seed=1\nseed=2", {"seed": 2}),
        ("", {}),
    ],
)
def test_parse_engine_args_accepts(text: str, expected: dict[str, Any]) -> None:
    parsed = parse_engine_args(raw("engine-arg", text))
    assert dict(parsed) == expected
    # Values must keep their JSON type: 1 == True in Python, so compare the types too.
    assert [type(v) for _, v in parsed] == [type(v) for v in expected.values()]


@pytest.mark.parametrize(
    ("text", "bad"),
    [
        ("bad", "bad"),
        ("=3", "=3"),
        ("max_model_len=4096\nbad", "bad"),
        ("max-model-len=1", "max-model-len=1"),  # vLLM's CLI spelling; LLM() takes underscores
    ],
)
def test_parse_engine_args_rejects(text: str, bad: str) -> None:
    with pytest.raises(pytest.UsageError) as info:
        parse_engine_args(raw("engine-arg", text))
    message = str(info.value)
    assert message.startswith(f"--greenllm-engine-arg={text}: ")
    assert message.endswith(f"{bad!r} is not KEY=VALUE, e.g. max_model_len=4096")


def test_engine_arg_given_twice_reaches_settings(pytester: pytest.Pytester) -> None:
    config = pytester.parseconfigure(
        "--greenllm-engine-arg=max_model_len=4096",
        "--greenllm-engine-arg",
        'hf_overrides={"rope_theta": 1e6}',
        "--greenllm-rate=2.5",
    )
    settings = config.stash[settings_key]
    assert settings.engine_args == (("max_model_len", 4096), ("hf_overrides", {"rope_theta": 1e6}))
    assert settings.rate == 2.5


def test_engine_args_from_ini_lines_and_defaults(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        """
        [pytest]
        greenllm_engine_arg =
            dtype=bfloat16
            max_num_batched_tokens=8192
        """
    )
    settings = pytester.parseconfigure().stash[settings_key]
    assert settings.engine_args == (("dtype", "bfloat16"), ("max_num_batched_tokens", 8192))
    assert settings.rate is None  # default 'inf': a closed batch


def test_bad_engine_arg_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest("--greenllm-engine-arg=dtype=half", "--greenllm-engine-arg=oops")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "'oops' is not KEY=VALUE, e.g. max_model_len=4096" in result.stderr.str()


def test_bad_engine_arg_error_is_one_line_naming_the_flag(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest("--greenllm-engine-arg=dtype=half", "--greenllm-engine-arg=oops")
    result.stderr.fnmatch_lines(["ERROR: *--greenllm-engine-arg=oops*'oops' is not KEY=VALUE*"])
