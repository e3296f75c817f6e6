"""Each point's figures as testsuite-level JUnit properties (``--greenllm-junit-properties``).

pytest writes a test's ``user_properties`` as ``<properties>`` inside its ``<testcase>``;
pytest's own ``junit-10.xsd`` allows ``<properties>`` only inside ``<testsuite>``, under
every ``junit_family``, so a schema-checking reader refuses such a file. ``suite`` writes the
figures where that schema allows them instead, as ``record_testsuite_property`` does, one
property per point and figure, named ``<figure>[<point id>]``; ``both`` writes them in both
places. The controller of a pytest-xdist run holds the JUnit file and every point's record,
so the properties are added there, once, at the end of the session.
"""

from __future__ import annotations

import pytest

# The key under which pytest keeps its JUnit writer; record_testsuite_property, the public
# way in, is a fixture, and a session hook has no fixtures.
from _pytest.junitxml import xml_key

from pytest_greenllm.runner import result_properties
from pytest_greenllm.sweep import Sweep

PLUGIN = "greenllm-junit-suite"


class SuiteProperties:
    """Registered where ``--junitxml`` is written and the figures go to the suite."""

    def __init__(self, sweep: Sweep) -> None:
        self._sweep = sweep

    @pytest.hookimpl(tryfirst=True)  # before pytest's own sessionfinish writes the file
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        xml = session.config.stash.get(xml_key, None)
        if xml is None:
            return
        points = self._sweep.results.all_points([p.id for p in self._sweep.matrix.points])
        for record in points:
            for name, value in result_properties(record):
                xml.add_global_property(f"{name}[{record.id}]", value)
