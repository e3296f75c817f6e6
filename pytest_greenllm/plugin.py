"""The pytest entry point (``pytest11``): hooks only, and cheap to import.

vLLM, torch and pynvml are imported only inside the functions that need them, because
pytest loads this module on every run of every project where the plugin is installed.
"""

from __future__ import annotations

import pytest

from pytest_greenllm import hookspec
from pytest_greenllm.config import Settings, settings_key
from pytest_greenllm.knobs import KnobPoint
from pytest_greenllm.options import ENABLE_FLAG, OPTIONS, PYTEST_PREFIX, add_knob_options
from pytest_greenllm.reporting import prepare_reports
from pytest_greenllm.session import (
    MARKER,
    GreenLLMSession,
    build_matrix,
    open_device,
    session_key,
)

pytest_plugins = ["pytest_greenllm.fixtures"]

SESSION_PLUGIN = "greenllm-session"
ALLOW_MISMATCH_FLAG = "--greenllm-allow-mismatch"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("greenllm", "energy sweeps of LLM inference (pytest-greenllm)")
    group.addoption(
        ENABLE_FLAG,
        action="store_true",
        dest="greenllm",
        default=False,
        help="Run the knob-sweep benchmarks (tests marked greenllm); without it they are "
        "skipped. Default: off.",
    )
    add_knob_options(group.addoption, PYTEST_PREFIX)
    group.addoption(
        ALLOW_MISMATCH_FLAG,
        action="store_true",
        dest="greenllm_allow_mismatch",
        default=False,
        help="Compare with a baseline measured on another setup (GPU model, device kind, "
        "power limit, model) instead of refusing. Default: off.",
    )
    for option in OPTIONS:
        # Typed ini values crash with INTERNALERROR on bad input in some pytest versions;
        # strings are converted and checked in config.py instead.
        parser.addini(option.ini, f"{option.help} Default: {option.default or 'none'}.", default="")


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspec)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}: a knob-sweep benchmark; runs only with {ENABLE_FLAG}, skipped otherwise.",
    )
    settings = Settings.from_config(config)
    config.stash[settings_key] = settings
    if settings.enabled:

        def plugin_problems(point: KnobPoint) -> list[str]:
            return list(config.hook.pytest_greenllm_point_problems(config=config, point=point))

        backend = open_device(settings, f"{PYTEST_PREFIX}device")
        try:
            matrix = build_matrix(settings, backend.capabilities, plugin_problems)
            results, context, notes = prepare_reports(
                config, settings, backend, bool(config.getoption("greenllm_allow_mismatch"))
            )
        except BaseException:
            backend.close()
            raise
        session = GreenLLMSession(settings, backend, matrix, results, context)
        session.notes.extend(notes)
    else:
        session = GreenLLMSession(settings, None, None)
    config.stash[session_key] = session
    config.pluginmanager.register(session, SESSION_PLUGIN)


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(session_key, None)
    if session is not None:
        config.pluginmanager.unregister(session)
        del config.stash[session_key]
        session.close()
    if settings_key in config.stash:
        del config.stash[settings_key]
