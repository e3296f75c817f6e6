"""pytest-greenllm: energy as a tested property of LLM inference."""

from importlib.metadata import version

__version__ = version("pytest-greenllm")
