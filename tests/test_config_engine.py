"""The load options (--greenllm-rates, --greenllm-rate, --greenllm-arrivals,
--greenllm-trace-time-scale) and the repeatable --greenllm-engine-arg."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_greenllm.arrivals import CLOSED_LOOP, CONSTANT, POISSON, Load
from pytest_greenllm.config import Raw, parse_engine_args, parse_rates, settings_key
from pytest_greenllm.options import OPTIONS_BY_NAME


def raw(name: str, text: str) -> Raw:
    return Raw(OPTIONS_BY_NAME[name], text, f"--greenllm-{name}={text}")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("inf", (None,)),
        ("INF", (None,)),
        (" inf ", (None,)),
        ("2.5", (2.5,)),
        ("1e3", (1000.0,)),
        ("0.01", (0.01,)),
        ("inf,1,2,1", (None, 1.0, 2.0)),  # one point per rate, duplicates dropped
    ],
)
def test_parse_rates_accepts(text: str, expected: tuple[float | None, ...]) -> None:
    assert parse_rates(raw("rates", text)) == expected


# 'nan' passes a plain `< 0` check, and a Poisson process at rate 0 never sends anything.
@pytest.mark.parametrize("text", ["0", "-1", "x", "nan", "", "-inf", "infinity", "1/s"])
def test_parse_rates_rejects(text: str) -> None:
    with pytest.raises(pytest.UsageError) as info:
        parse_rates(raw("rates", f"inf,{text}"))
    assert str(info.value) == (
        f"--greenllm-rates=inf,{text}: {text.strip()!r} is not an arrival rate; give 'inf' or "
        "requests/s > 0, e.g. inf,2,8"
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), (CLOSED_LOOP,)),
        (("--greenllm-rate=2.5",), (Load(POISSON, 2.5),)),
        (("--greenllm-rates=inf,2", "--greenllm-arrivals=constant"), (CLOSED_LOOP, Load(CONSTANT, 2.0))),
        (("--greenllm-rates=1,4", "--greenllm-rate=inf"), (Load(POISSON, 1.0), Load(POISSON, 4.0))),
    ],
)
def test_loads_reach_settings(
    pytester: pytest.Pytester, args: tuple[str, ...], expected: tuple[Load, ...]
) -> None:
    assert pytester.parseconfigure(*args).stash[settings_key].loads == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--greenllm-rates=1,2", "--greenllm-rate=3"),
            "--greenllm-rate=3 and --greenllm-rates=1,2 both set the arrival rate: give "
            "--greenllm-rates alone (--greenllm-rate=R is --greenllm-rates=R)",
        ),
        (
            ("--greenllm-rate=1,2",),
            "--greenllm-rate=1,2: give one arrival rate here; sweep several with --greenllm-rates",
        ),
        (
            ("--greenllm-arrivals=gamma",),
            "--greenllm-arrivals=gamma: unknown arrival process; use poisson or constant",
        ),
        (
            ("--greenllm-trace-time-scale=0",),
            "--greenllm-trace-time-scale=0: the trace time scale must be a number > 0",
        ),
    ],
)
def test_bad_load_options_are_usage_errors(
    pytester: pytest.Pytester, args: tuple[str, ...], message: str
) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"ERROR: {message}" in result.stderr.str()


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
    )
    settings = config.stash[settings_key]
    assert settings.engine_args == (("max_model_len", 4096), ("hf_overrides", {"rope_theta": 1e6}))


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


def test_bad_engine_arg_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest("--greenllm-engine-arg=dtype=half", "--greenllm-engine-arg=oops")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "'oops' is not KEY=VALUE, e.g. max_model_len=4096" in result.stderr.str()


def test_bad_engine_arg_error_is_one_line_naming_the_flag(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest("--greenllm-engine-arg=dtype=half", "--greenllm-engine-arg=oops")
    result.stderr.fnmatch_lines(["ERROR: *--greenllm-engine-arg=oops*'oops' is not KEY=VALUE*"])
