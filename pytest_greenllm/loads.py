"""Built-in loads for ``greenllm doctor``: whatever makes the GPUs work while it looks.

A torch matmul loop on every visible GPU where torch with CUDA imports; on the fake device a
CPU spin (the fake's load follows this machine's CPU use); else none, and the doctor says so.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any

MATMUL_SIZE = 8192  # fp16 matrices: compute-bound on any data-center GPU


class Load:
    """A background load, started and stopped as a context manager."""

    description = "a load"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.error: str | None = None  # why a worker stopped early

    def _workers(self) -> list[tuple[str, Any]]:
        """(thread name, target) pairs; each target runs until ``self._stop`` is set."""
        raise NotImplementedError

    def __enter__(self) -> Load:
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._guarded, args=(target,), name=name, daemon=True)
            for name, target in self._workers()
        ]
        for thread in self._threads:
            thread.start()
        return self

    def _guarded(self, target: Any) -> None:
        try:
            target()
        except Exception as e:  # a load that dies must not take the doctor with it
            self.error = f"{type(e).__name__}: {e}"

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


class CpuSpinLoad(Load):
    """One spinning thread: the fake device's load follows this machine's CPU use."""

    description = "a CPU spin loop (the fake device's load follows this machine's CPU use)"

    def _workers(self) -> list[tuple[str, Any]]:
        def spin() -> None:
            while not self._stop.is_set():
                sum(range(10_000))

        return [("greenllm-doctor-spin", spin)]


class TorchMatmulLoad(Load):
    """fp16 matmuls on each of the first ``gpus`` CUDA devices, one thread each."""

    def __init__(self, torch: Any, gpus: int) -> None:
        super().__init__()
        self._torch = torch
        self._gpus = gpus
        self.description = f"a torch fp16 {MATMUL_SIZE}x{MATMUL_SIZE} matmul loop on cuda:0..{gpus - 1}"

    def _workers(self) -> list[tuple[str, Any]]:
        torch = self._torch

        def matmuls(index: int) -> None:
            device = torch.device(f"cuda:{index}")
            a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device, dtype=torch.float16)
            while not self._stop.is_set():
                for _ in range(10):
                    a = (a @ a).clamp_(-1.0, 1.0)
                # Bounded queue: stop within a few matmuls of being asked to.
                torch.cuda.synchronize(device)

        return [(f"greenllm-doctor-cuda{i}", lambda i=i: matmuls(i)) for i in range(self._gpus)]


def gpu_load(gpus: int) -> tuple[Load | None, str]:
    """A torch load on the visible GPUs, or None and why not."""
    try:
        import torch
    except ImportError:
        return None, "no load: torch is not installed, so the checks under load are skipped"
    if not torch.cuda.is_available():
        return None, "no load: torch has no CUDA here, so the checks under load are skipped"
    usable = min(gpus, torch.cuda.device_count())
    return TorchMatmulLoad(torch, usable), ""


def settle(seconds: float) -> None:
    """Let a load ramp the GPUs up before measuring (clocks and power follow within ~1 s)."""
    time.sleep(seconds)
