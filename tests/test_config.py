"""Option parsing: every converter's accepted and rejected values, and the precedence rule."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_greenllm.config import (
    Raw,
    Settings,
    parse_device,
    parse_freqs,
    parse_json_path,
    parse_mode,
    parse_model,
    parse_positive_ints,
    parse_power_limits,
    parse_requests,
    parse_seed,
    parse_workloads,
)
from pytest_greenllm.knobs import ALL_CLOCKS
from pytest_greenllm.options import OPTIONS_BY_NAME
from pytest_greenllm.workloads import DEFAULT_BUCKETS, Workload


def raw(name: str, text: str) -> Raw:
    return Raw(OPTIONS_BY_NAME[name], text, f"--greenllm-{name}={text}")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1410", (1410,)),
        ("800, 1980,800", (800, 1980)),
        ("default", (None,)),
        ("1410,default", (1410, None)),
        ("all", ALL_CLOCKS),
        ("ALL", ALL_CLOCKS),
    ],
)
def test_parse_freqs_accepts(text: str, expected: object) -> None:
    assert parse_freqs(raw("freqs", text)) == expected


@pytest.mark.parametrize("text", ["abc", "1410,abc", "0", "-5", "1.5", "", "all,1410", "99999"])
def test_parse_freqs_rejects(text: str) -> None:
    with pytest.raises(pytest.UsageError, match=r"^--greenllm-freqs=.*is not a clock; give MHz"):
        parse_freqs(raw("freqs", text))


@pytest.mark.parametrize(("text", "expected"), [("1", (1,)), ("1,2,2,8", (1, 2, 8)), (" 4 ", (4,))])
def test_parse_positive_ints_accepts(text: str, expected: tuple[int, ...]) -> None:
    assert parse_positive_ints(raw("tp", text), "tensor-parallel sizes") == expected


@pytest.mark.parametrize("text", ["0", "-1", "two", "1,,2", "", "1.0"])
def test_parse_positive_ints_rejects(text: str) -> None:
    with pytest.raises(pytest.UsageError) as info:
        parse_positive_ints(raw("tp", text), "tensor-parallel sizes")
    assert str(info.value) == (
        f"--greenllm-tp={text}: tensor-parallel sizes must be whole numbers >= 1, comma separated, e.g. 1,2,4"
    )


def test_parse_workloads_buckets_and_custom() -> None:
    parsed = parse_workloads(raw("workloads", "S,l,512:128,S"), DEFAULT_BUCKETS, None)
    assert parsed == (
        Workload("S", 128, 64),
        Workload("L", 4096, 512),
        Workload("512x128", 512, 128),
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("XL", "unknown workload 'XL'; use S, M, L, trace, or input:output"),
        ("S,XL", "unknown workload 'XL'"),
        ("512:0", "'512:0': input and output token counts must be >= 1"),
        ("a:b", "'a:b': input and output token counts must be >= 1"),
        ("trace", "the trace workload replays a trace; give one with --greenllm-trace=CSV"),
    ],
)
def test_parse_workloads_rejects(text: str, message: str) -> None:
    with pytest.raises(pytest.UsageError, match=f"^--greenllm-workloads={text}: ") as info:
        parse_workloads(raw("workloads", text), DEFAULT_BUCKETS, None)
    assert message in str(info.value)


@pytest.mark.parametrize(("text", "expected"), [("auto", None), ("AUTO", None), ("12", 12)])
def test_parse_requests(text: str, expected: int | None) -> None:
    assert parse_requests(raw("requests", text)) == expected


@pytest.mark.parametrize("text", ["0", "many", "-3"])
def test_parse_requests_rejects(text: str) -> None:
    with pytest.raises(pytest.UsageError, match="request count"):
        parse_requests(raw("requests", text))


def test_parse_seed() -> None:
    assert parse_seed(raw("seed", "0")) == 0
    with pytest.raises(pytest.UsageError, match=r"--greenllm-seed=-1: the seed must be"):
        parse_seed(raw("seed", "-1"))


@pytest.mark.parametrize("kind", ["auto", "nvml", "rapl", "fake", "none", "FAKE"])
def test_parse_device_accepts(kind: str) -> None:
    assert parse_device(raw("device", kind)) == kind.lower()


@pytest.mark.parametrize(("text", "mode"), [("offline", "offline"), ("SERVE", "serve"), (" serve ", "serve")])
def test_parse_mode_accepts(text: str, mode: str) -> None:
    assert parse_mode(raw("mode", text)) == mode


def test_parse_mode_rejects() -> None:
    with pytest.raises(pytest.UsageError) as info:
        parse_mode(raw("mode", "online"))
    assert str(info.value) == "--greenllm-mode=online: unknown mode; use offline or serve"


def test_parse_device_rejects() -> None:
    with pytest.raises(pytest.UsageError) as info:
        parse_device(raw("device", "gpu"))
    assert str(info.value) == (
        "--greenllm-device=gpu: unknown device; use one of auto, nvml, rapl, fake, none"
    )


def test_parse_model_errors(tmp_path: Path) -> None:
    with pytest.raises(pytest.UsageError, match=r"has no config\.json"):
        parse_model(raw("model", str(tmp_path)))
    with pytest.raises(pytest.UsageError, match="does not exist"):
        parse_model(raw("model", "./no-such-model"))


def test_parse_json_path(tmp_path: Path) -> None:
    assert parse_json_path(raw("json", "")) is None
    assert parse_json_path(raw("json", str(tmp_path / "r.json"))) == tmp_path / "r.json"
    with pytest.raises(pytest.UsageError, match="is a directory"):
        parse_json_path(raw("json", str(tmp_path)))


tp_lists = st.lists(st.integers(1, 64), min_size=1, max_size=4).map(lambda values: ",".join(map(str, values)))


@given(cli=st.none() | tp_lists, ini=st.just("") | tp_lists)
def test_cli_wins_over_ini_wins_over_default(cli: str | None, ini: str) -> None:
    settings = Settings.from_sources(True, {"greenllm_tp": cli}, {"greenllm_tp": ini}, "--greenllm-")
    winner = cli if cli is not None else ini or OPTIONS_BY_NAME["tp"].default
    assert settings.tps == tuple(dict.fromkeys(int(v) for v in winner.split(",")))


def test_error_names_its_source() -> None:
    with pytest.raises(pytest.UsageError) as info:
        Settings.from_sources(True, {}, {"greenllm_batch": "0"}, "--greenllm-")
    assert str(info.value).startswith("ini greenllm_batch = 0: batch sizes must be")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("300", (300,)),
        ("300, 500,300", (300, 500)),
        ("default", (None,)),
        ("Default,450", (None, 450)),
        ("10000", (10_000,)),
    ],
)
def test_parse_power_limits_accepts(text: str, expected: tuple[int | None, ...]) -> None:
    assert parse_power_limits(raw("power-limits", text)) == expected


@pytest.mark.parametrize(
    ("text", "item"),
    [
        ("0", "'0'"),
        ("-300", "'-300'"),
        ("300.5", "'300.5'"),
        ("300W", "'300W'"),
        ("300,,500", "''"),
        ("", "''"),
        ("300000", "'300000'"),
        ("\u00b3", "'\u00b3'"),
    ],
    ids=["zero", "negative", "fraction", "unit", "empty-item", "empty", "milliwatts", "superscript"],
)
def test_parse_power_limits_rejects(text: str, item: str) -> None:
    with pytest.raises(pytest.UsageError) as info:
        parse_power_limits(raw("power-limits", text))
    assert str(info.value) == (
        f"--greenllm-power-limits={text}: {item} is not a power limit; give whole watts such as "
        "300,500 (at most 10000), or 'default' to leave the limit alone"
    )


def power_limits_of(cli: dict[str, str], ini: dict[str, str] | None = None) -> tuple[int | None, ...]:
    return Settings.from_sources(True, cli, ini or {}, "--greenllm-").power_limits_w


def test_power_limit_is_the_one_value_case_of_the_axis() -> None:
    assert power_limits_of({}) == (None,)
    single = power_limits_of({"greenllm_power_limit": "300"})
    assert single == power_limits_of({"greenllm_power_limits": "300"}) == (300,)
    assert power_limits_of({}, {"greenllm_power_limit": "250"}) == (250,)
    # Left at default, it stands beside the axis.
    assert power_limits_of({"greenllm_power_limit": "default", "greenllm_power_limits": "300,500"}) == (
        300,
        500,
    )


@pytest.mark.parametrize(
    ("cli", "ini", "sources"),
    [
        (
            {"greenllm_power_limit": "300", "greenllm_power_limits": "300,500"},
            {},
            "--greenllm-power-limit=300 and --greenllm-power-limits=300,500",
        ),
        (
            {"greenllm_power_limits": "default"},
            {"greenllm_power_limit": "300"},
            "ini greenllm_power_limit = 300 and --greenllm-power-limits=default",
        ),
    ],
    ids=["both-flags", "ini-and-flag"],
)
def test_power_limit_and_power_limits_together_is_a_usage_error(
    cli: dict[str, str], ini: dict[str, str], sources: str
) -> None:
    with pytest.raises(pytest.UsageError) as info:
        power_limits_of(cli, ini)
    assert str(info.value) == (
        f"{sources} both set the power limit: give --greenllm-power-limits alone "
        "(--greenllm-power-limit=W is --greenllm-power-limits=W)"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("300,500", "give one power limit here; sweep several with --greenllm-power-limits"),
        ("0", "'0' is not a power limit; give whole watts"),
    ],
)
def test_power_limit_takes_one_value(text: str, message: str) -> None:
    with pytest.raises(pytest.UsageError, match=f"^--greenllm-power-limit={text}: ") as info:
        power_limits_of({"greenllm_power_limit": text})
    assert message in str(info.value)


def test_the_greenllm_command_names_its_own_flags() -> None:
    with pytest.raises(pytest.UsageError) as info:
        Settings.from_sources(True, {"greenllm_power_limit": "300", "greenllm_power_limits": "400"}, {}, "--")
    assert str(info.value) == (
        "--power-limit=300 and --power-limits=400 both set the power limit: give --power-limits "
        "alone (--power-limit=W is --power-limits=W)"
    )
