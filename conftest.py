"""Settings shared by the plugin's own tests and the shipped benchmarks."""

from __future__ import annotations

import os

from hypothesis import settings

pytest_plugins = ["pytester"]

# CI machines are shared and noisy: no deadlines there, more examples on demand.
settings.register_profile("ci", deadline=None, max_examples=200)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
