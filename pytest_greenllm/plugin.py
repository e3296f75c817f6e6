"""The pytest entry point (``pytest11``): hooks only, and cheap to import.

vLLM, torch and pynvml are imported only inside the functions that need them, because
pytest loads this module on every run of every project where the plugin is installed.
"""

from __future__ import annotations

import pytest

from pytest_greenllm import hookspec, junit, parallel
from pytest_greenllm.config import Settings, settings_key
from pytest_greenllm.devices.base import Backend
from pytest_greenllm.driver import Driver
from pytest_greenllm.hints import HintedError, render_error
from pytest_greenllm.knobs import KnobPoint
from pytest_greenllm.options import (
    ALLOW_MISMATCH_FLAG,
    BUILTIN_SWEEP_FLAG,
    BUILTIN_SWEEP_INI,
    ENABLE_FLAG,
    OPTIONS,
    POINT_FIXTURE,
    PYTEST_PREFIX,
    add_knob_options,
)
from pytest_greenllm.results import AUTOSAVE_DIR
from pytest_greenllm.session import MARKER, SKIP_REASON, GreenLLMSession, session_key
from pytest_greenllm.sweep import prepare_sweep

pytest_plugins = ["pytest_greenllm.fixtures"]

SESSION_PLUGIN = "greenllm-session"
PARALLEL_PLUGIN = "greenllm-parallel"


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
    group.addoption(
        BUILTIN_SWEEP_FLAG,
        choices=("on", "off"),
        dest="greenllm_builtin_sweep",
        default=None,
        help="Run the built-in knob sweep (one test per point) beside the project's own "
        "greenllm tests; 'off' runs only the project's. Default: on.",
    )
    parser.addini(
        BUILTIN_SWEEP_INI,
        "Run the built-in knob sweep beside the project's own greenllm tests: on or off. Default: on.",
        default="",
    )
    for option in OPTIONS:
        # Typed ini values crash with INTERNALERROR on bad input in some pytest versions;
        # strings are converted and checked in config.py instead.
        parser.addini(option.ini, f"{option.help} Default: {option.default or 'none'}.", default="")


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspec)


@pytest.hookimpl(trylast=True)
def pytest_greenllm_make_backend(config: pytest.Config, settings: Settings) -> Backend:
    from pytest_greenllm.devices.backend import open_backend

    return open_backend(settings.device)


@pytest.hookimpl(trylast=True)
def pytest_greenllm_make_driver(config: pytest.Config, settings: Settings) -> Driver:
    if settings.endpoint is not None:
        from pytest_greenllm.serve_client import Endpoint
        from pytest_greenllm.serve_driver import EndpointDriver

        return EndpointDriver(Endpoint(settings.endpoint, settings.model.path))
    if settings.mode == "serve":
        from pytest_greenllm.serve_driver import VllmServeDriver

        # The servers' logs go beside the report.
        reports = (
            settings.json_path.parent if settings.json_path is not None else config.rootpath / AUTOSAVE_DIR
        )
        return VllmServeDriver(log_dir=reports.resolve())
    from pytest_greenllm.engine import VllmOfflineDriver

    return VllmOfflineDriver(stall_timeout_s=settings.stall_timeout_s)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}: a knob-sweep benchmark; runs only with {ENABLE_FLAG}, skipped otherwise.",
    )
    settings = Settings.from_config(config)
    config.stash[settings_key] = settings
    if not settings.enabled:
        return
    builtin_sweep = builtin_sweep_on(config)

    def plugin_problems(point: KnobPoint) -> list[str]:
        return list(config.hook.pytest_greenllm_point_problems(config=config, point=point))

    def make_backend(settings: Settings) -> Backend:
        backend: Backend = config.hook.pytest_greenllm_make_backend(config=config, settings=settings)
        return backend

    try:
        sweep = prepare_sweep(
            settings,
            config.rootpath,
            make_backend=make_backend,
            extra_problems=plugin_problems,
            allow_mismatch=bool(config.getoption("greenllm_allow_mismatch")),
            flag_prefix=PYTEST_PREFIX,
            worker=parallel.is_worker(config),
            idle=parallel.idle_from(config),
        )
    except HintedError as e:
        raise pytest.UsageError(render_error(e, PYTEST_PREFIX)) from None
    # What the sweep measures: an endpoint's model and collapsed axes, once connected.
    settings = config.stash[settings_key] = sweep.settings
    try:
        driver: Driver = config.hook.pytest_greenllm_make_driver(config=config, settings=settings)
    except HintedError as e:
        sweep.close()
        raise pytest.UsageError(render_error(e, PYTEST_PREFIX)) from None
    except BaseException:
        sweep.close()
        raise
    role = "worker" if parallel.is_worker(config) else "controller" if parallel.distributes(config) else None
    session = GreenLLMSession(sweep, driver, builtin_sweep=builtin_sweep, role=role)
    config.stash[session_key] = session
    config.pluginmanager.register(session, SESSION_PLUGIN)
    if settings.junit_properties != "testcase" and role != "worker":
        config.pluginmanager.register(junit.SuiteProperties(sweep), junit.PLUGIN)
    if role == "worker":
        config.pluginmanager.register(parallel.ParallelWorker(), PARALLEL_PLUGIN)
    elif role == "controller":
        if config.getoption("dist") != "load":  # what -n alone gives
            sweep.notes.append(
                f"pytest-xdist: --dist {config.getoption('dist')} set aside: each engine configuration's "
                "points run on one worker"
            )
        config.pluginmanager.register(parallel.ParallelController(session, config), PARALLEL_PLUGIN)


def builtin_sweep_on(config: pytest.Config) -> bool:
    """Whether the built-in sweep runs: the flag, else the ini key, else on."""
    given = config.getoption("greenllm_builtin_sweep")
    if given is not None:
        return bool(given == "on")
    text = str(config.getini(BUILTIN_SWEEP_INI)).strip().lower()
    if text in ("", "on", "true", "1", "yes"):
        return True
    if text in ("off", "false", "0", "no"):
        return False
    raise pytest.UsageError(f"ini {BUILTIN_SWEEP_INI} = {text}: use on or off")


def pytest_report_header(config: pytest.Config) -> list[str]:
    if session_key in config.stash:
        return []  # the session's own header says what runs
    return [f"greenllm: off (pass {ENABLE_FLAG} to run the knob sweep)"]


# First: the session's own (registered later, so called earlier) adds the built-in sweep,
# and both must come before -k and -m select among the items.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    on = session_key in config.stash
    for item in items:
        if POINT_FIXTURE in getattr(item, "fixturenames", ()):
            item.add_marker(MARKER)
        if not on and item.get_closest_marker(MARKER) is not None:
            item.add_marker(pytest.mark.skip(reason=SKIP_REASON))


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(session_key, None)
    if session is not None:
        config.pluginmanager.unregister(session)
        del config.stash[session_key]
        session.close()
    if settings_key in config.stash:
        del config.stash[settings_key]
