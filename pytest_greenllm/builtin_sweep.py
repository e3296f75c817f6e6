"""The built-in knob sweep: one test per point of the matrix, shipped with the plugin.

With ``--greenllm``, the plugin adds this module to every session, in any folder (see
``session.GreenLLMSession.pytest_collection_modifyitems``); the builtin-sweep option set to off
leaves it out for projects that sweep with their own tests only.

Each point runs its workload on the engine of its configuration (reused across points that
share it), at its clock, inside an energy window where the device has a meter, and checks
that the run is complete: every request got exactly the tokens the workload forces, and its
first token came before its last. Its SLO and energy-regression verdicts fail it after this
body has run.
"""

from __future__ import annotations

import math

from pytest_greenllm.config import Settings
from pytest_greenllm.knobs import KnobPoint
from pytest_greenllm.record import PointResult
from pytest_greenllm.workloads import request_count


def test_energy_knob_point(
    greenllm_point: KnobPoint, greenllm_settings: Settings, greenllm_result: PointResult
) -> None:
    expected_requests = request_count(greenllm_point.batch, greenllm_settings.requests)
    repeats = len(greenllm_result.repeats)
    if greenllm_settings.auto_repeats:
        assert greenllm_settings.repeats <= repeats <= greenllm_settings.max_repeats
    else:
        assert repeats == greenllm_settings.repeats
    for repeat in greenllm_result.repeats:
        metrics = repeat.metrics
        # Failed requests are in the point's record (and its goodput); the point fails.
        assert metrics.failed == 0, (
            f"{metrics.failed} of {metrics.requests} requests failed: {'; '.join(metrics.errors)}"
        )
        # A short window ran the requests again, back to back: every pass completely.
        assert metrics.requests == expected_requests * repeat.passes
        # Unless the server ignored the forced length: then the point is flagged instead.
        if not greenllm_point.workload.replay and not repeat.unforced:
            per_pass = expected_requests * greenllm_point.workload.output_tokens
            assert metrics.output_tokens == per_pass * repeat.passes
        assert metrics.ttft_ms.p99 <= metrics.e2el_ms.p99
        assert metrics.output_throughput > 0
        # A window shorter than the minimum is flagged in the report and may read 0 J (the
        # counter had not updated yet); one long enough to trust must have measured energy.
        if repeat.energy is not None and not repeat.energy.short_window:
            why = "; ".join(repeat.energy.warnings) or "no warning"
            assert repeat.energy.energy_j > 0, f"the window read {repeat.energy.energy_j} J: {why}"
            assert math.isfinite(repeat.energy.j_per_output_token), why
