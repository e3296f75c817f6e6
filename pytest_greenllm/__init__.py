"""pytest-greenllm: energy as a tested property of LLM inference."""

from importlib.metadata import version

from pytest_greenllm.warning_types import (
    ClockStrayedWarning,
    CounterDisagreementWarning,
    DroppedRepeatWarning,
    GreenLLMWarning,
    IdleWarning,
    InconclusiveWarning,
    ShortWindowWarning,
)

__version__ = version("pytest-greenllm")

__all__ = [
    "ClockStrayedWarning",
    "CounterDisagreementWarning",
    "DroppedRepeatWarning",
    "GreenLLMWarning",
    "IdleWarning",
    "InconclusiveWarning",
    "ShortWindowWarning",
    "__version__",
]
