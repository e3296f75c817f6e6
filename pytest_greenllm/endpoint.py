"""Measuring a server that runs already (``--greenllm-endpoint``): what it is, and what of
the matrix still applies to it.

The server is asked once, before any point, which models it serves; an endpoint that does
not answer is a usage error of one line. Its engine axes collapse to the server as it is:
TP and ``max_num_seqs`` are its own (the batch knob is the client's concurrency only), and
energy, clocks and power limits are those of the local GPUs the user names.
"""

from __future__ import annotations

from dataclasses import replace

from pytest_greenllm.config import Settings
from pytest_greenllm.devices.base import Backend
from pytest_greenllm.devices.selection import SelectedBackend, SelectionError, select
from pytest_greenllm.hints import Hint, HintedError
from pytest_greenllm.model_info import unresolved_model
from pytest_greenllm.serve_client import EndpointError, connect

NAME_GPUS = Hint("endpoint-gpus", "0,1", "; name the local GPUs it runs on with {flag} (or all)")


class EndpointUnusable(HintedError):
    """The endpoint cannot be measured as asked; the message says why in one line."""


def attach_endpoint(
    settings: Settings, backend: Backend, flag_prefix: str
) -> tuple[Settings, SelectedBackend, list[str]]:
    """The settings and device for measuring ``settings.endpoint``, and notes for the header
    (flags spelled with ``flag_prefix``)."""
    url = settings.endpoint
    assert url is not None
    subject = Hint("endpoint", url)
    try:
        endpoint, context = connect(url, settings.endpoint_model)
    except EndpointError as e:
        raise EndpointUnusable(f"cannot measure it: {e}", subject=subject) from None
    try:
        selected = select(backend, settings.endpoint_gpus)
    except SelectionError as e:
        raise EndpointUnusable(str(e), subject=Hint("endpoint-gpus", _spelled(settings))) from None
    tp = max(1, len(selected.gpus))
    notes = [
        f"endpoint {endpoint.url} serves {endpoint.model}"
        + (f" (context {context} tokens)" if context is not None else "")
        + ", started and stopped outside greenllm",
        f"the server's TP and max_num_seqs are its own, not swept: points say tp{tp} "
        f"({'the GPUs named' if selected.gpus else 'no GPUs named'}), and the batch size is "
        "the client's concurrency only",
    ]
    attached = replace(
        settings, model=unresolved_model(endpoint.model, context), endpoint_model=endpoint.model, tps=(tp,)
    )
    if selected.sources:
        labels = ", ".join(source.label for source in selected.sources)
        notes.append(f"the endpoint's energy is measured on {labels}")
    else:
        notes.append("the endpoint's energy is not measured" + NAME_GPUS.render(flag_prefix))
        # Nothing here is the server's: no clock or power limit of it can be set.
        attached = replace(attached, freqs=(None,), power_limits_w=(None,))
    return attached, selected, notes


def _spelled(settings: Settings) -> str:
    gpus = settings.endpoint_gpus
    return gpus if isinstance(gpus, str) else ",".join(map(str, gpus))
