"""Hooks that pytest-greenllm calls, for conftest files and other plugins."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest

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
