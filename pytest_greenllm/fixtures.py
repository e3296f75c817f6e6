"""The fixtures that benchmark tests are written with."""

from __future__ import annotations

import pytest

from pytest_greenllm.config import Settings, settings_key
from pytest_greenllm.knobs import KnobPoint

@pytest.fixture
def greenllm_point(request: pytest.FixtureRequest) -> KnobPoint:
    """The knob point of this test item; one item is generated per point of the matrix."""
    point: KnobPoint = request.param
    return point


@pytest.fixture(scope="session")
def greenllm_settings(pytestconfig: pytest.Config) -> Settings:
    """The validated knob settings of this session."""
    return pytestconfig.stash[settings_key]
