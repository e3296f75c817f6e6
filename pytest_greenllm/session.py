"""Run-wide state of a pytest session: the matrix, test generation, ordering and header."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable

import pytest

from pytest_greenllm.config import Settings
from pytest_greenllm.devices.base import DeviceUnavailable
from pytest_greenllm.devices.probe import probe_capabilities
from pytest_greenllm.knobs import KnobPoint, Matrix, expand, group_by_engine
from pytest_greenllm.options import ENABLE_FLAG, POINT_FIXTURE

MARKER = "greenllm"
SKIP_REASON = f"greenllm benchmark: pass {ENABLE_FLAG} to run the knob sweep"
NO_POINTS_REASON = "greenllm: every knob point was removed; the session header says why"


def build_matrix(
    settings: Settings,
    device_flag: str,
    extra_problems: Callable[[KnobPoint], Iterable[str]] = lambda point: (),
) -> Matrix:
    """Expand the settings against the device; ``device_flag`` names the option in errors."""
    try:
        caps = probe_capabilities(settings.device)
    except DeviceUnavailable as e:
        raise pytest.UsageError(f"{device_flag}={settings.device}: {e}") from None
    return expand(
        model=settings.model,
        tps=settings.tps,
        batches=settings.batches,
        workloads=settings.workloads,
        freqs=settings.freqs,
        caps=caps,
        extra_problems=extra_problems,
    )


def _point_of(item: pytest.Item) -> KnobPoint | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    point = callspec.params.get(POINT_FIXTURE)
    return point if isinstance(point, KnobPoint) else None


def _engine_key(item: pytest.Item) -> Hashable | None:
    point = _point_of(item)
    return None if point is None else point.engine


class GreenLLMSession:
    """Registered in ``pytest_configure``; its methods are hook implementations."""

    def __init__(self, settings: Settings, matrix: Matrix | None) -> None:
        self.settings = settings
        self.matrix = matrix

    def pytest_report_header(self) -> list[str]:
        if self.matrix is None:
            return [f"greenllm: off (pass {ENABLE_FLAG} to run the knob sweep)"]
        s = self.settings
        requests = "auto" if s.requests is None else str(s.requests)
        return [
            *self.matrix.header_lines(),
            f"greenllm: model={s.model.name}, repeats={s.repeats}, requests={requests}, "
            f"seed={s.seed}",
        ]

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if POINT_FIXTURE not in metafunc.fixturenames or self.matrix is None:
            return
        points = self.matrix.points
        if not points:
            skipped = pytest.param(None, marks=pytest.mark.skip(reason=NO_POINTS_REASON))
            metafunc.parametrize(POINT_FIXTURE, [skipped], ids=["no-points"], indirect=True)
            return
        metafunc.parametrize(
            POINT_FIXTURE, points, ids=[p.id for p in points], indirect=True
        )

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            if POINT_FIXTURE in getattr(item, "fixturenames", ()):
                item.add_marker(MARKER)
            if self.matrix is None and item.get_closest_marker(MARKER) is not None:
                item.add_marker(pytest.mark.skip(reason=SKIP_REASON))
        items[:] = group_by_engine(items, _engine_key)
