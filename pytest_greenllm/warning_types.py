"""The warnings pytest-greenllm issues, as categories a team can filter or promote to errors.

pytest-benchmark's ``PytestBenchmarkWarning`` is the model: a ``pytest.PytestWarning``
subclass, so ``-W error::pytest_greenllm.GreenLLMWarning`` (all of them) or
``-W error::pytest_greenllm.ShortWindowWarning`` (one kind) fails a run on it, and
``filterwarnings`` in the ini file silences one kind.

A measurement warning is stored in the report as text beside its kind (``EnergyFigures``'s
``warnings`` and ``warning_kinds``); ``category`` maps the stored kind back to its class.
"""

from __future__ import annotations

import pytest


class GreenLLMWarning(pytest.PytestWarning):
    """Base of every warning pytest-greenllm issues."""


class ShortWindowWarning(GreenLLMWarning):
    """A window, or a sub-window (the steady state), too short for the energy counter's
    update period: its energy is unreliable or left out."""


class ClockStrayedWarning(GreenLLMWarning):
    """The clock held during a window left the one locked (power or thermal capping)."""


class CounterDisagreementWarning(GreenLLMWarning):
    """The energy counter and the integrated power disagree, or the counter moved backwards
    (a driver reset): the repeat's energy cannot be trusted."""


class IdleWarning(GreenLLMWarning):
    """Energy above idle came out negative, or idle was measured in another state than the
    point ran in: the static share and the energy above idle are suspect."""


class InconclusiveWarning(GreenLLMWarning):
    """A verdict (an SLO, the energy gate) the measurements cannot settle at the stated error
    rates: more requests or repeats would."""


class DroppedRepeatWarning(GreenLLMWarning):
    """A repeat was left out of a verdict (no energy measured, a counter reset)."""


# The kind each warning is stored under in a report, and its class.
KINDS: dict[str, type[GreenLLMWarning]] = {
    "short-window": ShortWindowWarning,
    "clock-strayed": ClockStrayedWarning,
    "counter": CounterDisagreementWarning,
    "idle": IdleWarning,
    "inconclusive": InconclusiveWarning,
    "dropped-repeat": DroppedRepeatWarning,
    "other": GreenLLMWarning,
}


def category(kind: str | None) -> type[GreenLLMWarning]:
    """The class of a stored warning kind; the base class for an unknown or missing one (a
    report written before kinds were stored)."""
    return KINDS.get(kind or "other", GreenLLMWarning)
