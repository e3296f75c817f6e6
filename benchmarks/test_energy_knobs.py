"""The shipped sweep: one test per point of the knob matrix (``pytest --greenllm benchmarks``).

For now each point checks what can be checked before anything runs: that its workload
builds exactly the requests the point asks for. The engine run, the energy meter and the
verdicts come with the measurement, engine and report issues; until then this test measures
nothing and records no result.
"""

from __future__ import annotations

from pytest_greenllm.config import Settings
from pytest_greenllm.knobs import KnobPoint
from pytest_greenllm.workloads import build_requests, request_count


def test_energy_knob_point(greenllm_point: KnobPoint, greenllm_settings: Settings) -> None:
    workload = greenllm_point.workload
    count = request_count(greenllm_point.batch, greenllm_settings.requests)
    requests = build_requests(workload, count, greenllm_settings.seed, greenllm_settings.trace)
    assert len(requests) == count
    if not workload.replay:
        assert {len(r.prompt_token_ids) for r in requests} == {workload.input_tokens}
        assert {r.output_tokens for r in requests} == {workload.output_tokens}
