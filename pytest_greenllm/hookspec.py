"""Hooks that pytest-greenllm calls, for conftest files and other plugins."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_greenllm.config import Settings
    from pytest_greenllm.devices.base import Backend
    from pytest_greenllm.driver import Driver
    from pytest_greenllm.knobs import KnobPoint


def pytest_greenllm_point_problems(config: pytest.Config, point: KnobPoint) -> str | None:
    """Say why ``point`` should not run, or return None to keep it.

    Called once per point while the matrix is expanded in ``pytest_configure``, so implement
    it in a plugin or in the rootdir's conftest.py. A point that any implementation objects
    to is removed, and the reason is printed in the session header. Example::

        def pytest_greenllm_point_problems(config, point):
            if point.batch > 32 and point.workload.name == "L":
                return "L at batch > 32 does not fit our GPUs"
            return None
    """


@pytest.hookspec(firstresult=True)
def pytest_greenllm_make_backend(config: pytest.Config, settings: Settings) -> Backend | None:
    """Open the device a ``--greenllm`` session measures with, or return None to let the
    next implementation (in the end the plugin's: NVML, RAPL, fake or none, as
    the device option says) open it.

    Called once in ``pytest_configure``. The first non-None result is used; implement it
    in a plugin or in the rootdir's conftest.py to plug in a third-party energy source (a
    DCGM exporter, a PDU, a board meter) without touching the meter. The result must
    satisfy :class:`pytest_greenllm.devices.base.Backend`; a ``DeviceError`` raised here
    becomes a one-line usage error. Example::

        def pytest_greenllm_make_backend(config, settings):
            if settings.device == "auto" and os.environ.get("PDU_HOST"):
                return PduBackend(os.environ["PDU_HOST"])
            return None
    """


@pytest.hookspec(firstresult=True)
def pytest_greenllm_make_driver(config: pytest.Config, settings: Settings) -> Driver | None:
    """Supply what builds engines and runs each point's requests, or return None to let the
    next implementation (in the end the plugin's offline vLLM engine) do it.

    Called once in ``pytest_configure``, after the device is open. The first non-None
    result is used; it must satisfy :class:`pytest_greenllm.driver.Driver`. Example::

        def pytest_greenllm_make_driver(config, settings):
            return MyServerDriver(url=os.environ["MY_SERVER"])
    """
