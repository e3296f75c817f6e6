"""One setup path, and the run-wide state of a sweep; no pytest hooks here.

``prepare_sweep`` opens the device, builds the knob matrix and prepares the reports; the
plugin calls it from ``pytest_configure`` and ``greenllm knobs`` calls its first two steps.
A :class:`Sweep` then holds what every point shares: the device, the meter, the clock and
power limit a point sets. Errors are :class:`SetupError` or :class:`PointSkipped`, whose
hints each front end renders with its own flag names.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from pytest_greenllm.config import Settings
from pytest_greenllm.devices.backend import NO_METER, TRY_FAKE
from pytest_greenllm.devices.base import Backend, Capabilities, EnergySource, Gpu
from pytest_greenllm.devices.errors import DeviceError, NoPermission, NotSupported
from pytest_greenllm.devices.leases import GpuLeases
from pytest_greenllm.driver import EngineSpec
from pytest_greenllm.endpoint import attach_endpoint
from pytest_greenllm.engine import cpu_build_installed
from pytest_greenllm.hints import CLI_PREFIX, Hint, HintedError
from pytest_greenllm.knobs import KnobPoint, Matrix, expand
from pytest_greenllm.meter import AS_FOUND, DeviceState, EnergyMeter, IdleState
from pytest_greenllm.noise import noise_line, read_profile
from pytest_greenllm.report import Journal, ReportError, fingerprint, git_info, machine_info
from pytest_greenllm.reporting import ReportContext, journal_path, settings_record
from pytest_greenllm.results import AUTOSAVE_DIR, Results, check_writable, load_baseline
from pytest_greenllm.shards import point_cost_s, shard_matrix

MakeBackend = Callable[[Settings], Backend]
SET_SLO = Hint("slo", template="; set {flag} to check yours")
LEAVE_CLOCKS_ALONE = Hint("freqs", "default", "; pass {flag}")
CUDA_VISIBLE = "CUDA_VISIBLE_DEVICES"
LEAVE_POWER_LIMIT = Hint("power-limits", "default", "; pass {flag} to leave the power limit alone")


class SetupError(HintedError):
    """The sweep cannot start as asked; the message says why and what to change."""


class PointSkipped(HintedError):
    """A point (or a test) cannot run here as asked; the message says what to do."""


def open_device(settings: Settings, make_backend: MakeBackend) -> Backend:
    """Open the settings' device."""
    try:
        return make_backend(settings)
    except DeviceError as e:
        raise SetupError(e.message, e.hint, subject=Hint("device", settings.device)) from None


def open_setup(
    settings: Settings, make_backend: MakeBackend, flag_prefix: str
) -> tuple[Settings, Backend, list[str]]:
    """Open the device; where the settings name an endpoint, connect to it, and return the
    settings and the part of the device that measure it, with notes for the header."""
    backend = open_device(settings, make_backend)
    if settings.endpoint is None:
        return settings, backend, []
    try:
        return attach_endpoint(settings, backend, flag_prefix)
    except BaseException:
        backend.close()
        raise


WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf")
RANDOM_WEIGHTS = Hint("engine-arg", "load_format=dummy", "; pass {flag} to run it with random weights")


def check_weights(settings: Settings) -> None:
    """A local model directory with a config but no weights: every engine build would fail,
    with the cause only in a worker's log. Refused here, before the sweep starts."""
    model = settings.model
    if model.embedded or settings.endpoint is not None or not Path(model.path).is_dir():
        return  # an endpoint's model is the server's: its weights are none of ours
    if dict(settings.engine_args).get("load_format") == "dummy":
        return
    directory = Path(model.path)
    if not any(next(directory.glob(pattern), None) for pattern in WEIGHT_FILES):
        raise SetupError(
            f"{directory} has a config.json but no model weights ({', '.join(WEIGHT_FILES)})",
            RANDOM_WEIGHTS,
            subject=Hint("model", model.name),
        )


def build_matrix(
    settings: Settings,
    caps: Capabilities,
    extra_problems: Callable[[KnobPoint], Iterable[str]] = lambda point: (),
) -> Matrix:
    """Expand the settings against the device's capabilities, and against the CPU cores
    where vLLM's CPU build runs the engine (whatever device measures)."""
    check_weights(settings)
    if cpu_build_installed() and caps.unit_name != "CPU cores" and settings.endpoint is None:
        cores = len(os.sched_getaffinity(0))
        caps = replace(
            caps,
            parallel_units=min(caps.parallel_units, cores),
            unit_name="CPU cores (vLLM's CPU build runs the engine)"
            if cores < caps.parallel_units
            else caps.unit_name,
        )
    matrix = expand(
        model=settings.model,
        tps=settings.tps,
        batches=settings.batches,
        workloads=settings.workloads,
        freqs=settings.freqs,
        power_limits_w=settings.power_limits_w,
        caps=caps,
        loads=settings.loads,
        trace_time_scale=settings.trace_time_scale,
        extra_problems=extra_problems,
    )
    matrix = replace(matrix, endpoint=settings.endpoint)
    if settings.shard is not None:
        point_s = point_cost_s(settings.planned_repeats, settings.min_window_s, settings.cooldown_s)
        matrix = shard_matrix(matrix, settings.shard, point_s)
    return matrix


def prepare_reports(
    settings: Settings,
    backend: Backend,
    root: Path,
    allow_mismatch: bool,
    flag_prefix: str,
    planned: Sequence[str] = (),
    worker: bool = False,
) -> tuple[Results, ReportContext, list[str]]:
    """The session's Results and ReportContext, and notes for the header (their flags
    spelled with ``flag_prefix``); bad baselines and journals are SetupErrors. ``planned``:
    the ids of the whole sweep, which a shard's report keeps for ``greenllm merge``. A
    parallel ``worker`` reads the journal but leaves writing it to its controller."""
    journal_file = journal_path(settings, root)
    outputs: list[tuple[Path, Hint | None]] = []
    if settings.json_path is not None:
        outputs.append(
            (settings.json_path.parent, Hint("json", template="; give another path with {flag}=PATH"))
        )
    outputs += [(journal_file.parent, None), (root / AUTOSAVE_DIR, None)]
    for directory, hint in outputs:
        # Hours of measurement must not end in a report that cannot be written.
        why = check_writable(directory)
        if why is not None:
            raise SetupError(f"cannot write in {directory} ({why})", hint)
    machine = machine_info(backend)
    git = git_info(root)
    print_ = fingerprint(backend, machine, settings.model.name, None, settings.mode)
    journal = Journal(journal_file, print_)
    notes: list[str] = []
    results = Results(settings, journal, default_slos_apply=bool(backend.gpus), writes_journal=not worker)
    if not backend.gpus and not settings.slos_given:
        notes.append(
            "the default SLOs describe GPU serving and are not checked on the CPU"
            + SET_SLO.render(flag_prefix)
        )
    try:
        if settings.resume_path is not None:
            results.resumed = journal.read()
            notes.append(f"resuming {settings.resume_path}: {len(results.resumed)} points kept from before")
        elif journal.path.exists() and not worker:
            # A journal of an earlier run at the same place: start it afresh.
            journal.path.unlink()
        if settings.baseline_path is not None:
            history, baseline_notes = load_baseline(settings.baseline_path, print_, allow_mismatch)
            results.baseline = history.report
            notes.extend(baseline_notes)
        if settings.noise_path is not None:
            results.noise = read_profile(settings.noise_path, print_, allow_mismatch)
            notes.append(f"noise profile {settings.noise_path}: {noise_line(results.noise)}")
    except ReportError as e:
        raise SetupError(e.message, e.hint, e.subject) from None
    context = ReportContext(
        backend.kind, machine, git, print_, settings_record(settings, planned), settings.json_path, root
    )
    return results, context, notes


@dataclass
class Sweep:
    """What every point of a session shares: settings, device, matrix, results, meter."""

    settings: Settings
    backend: Backend
    matrix: Matrix
    results: Results
    report_context: ReportContext
    notes: list[str] = field(default_factory=list)  # for the header
    flag_prefix: str = CLI_PREFIX
    leases: GpuLeases | None = None  # where engines run on GPUs that others may share
    idle: IdleState | None = None  # measured before (by a parallel run's controller)
    _leased: list[Gpu] | None = None  # the GPUs of the engine now; None: the first tp
    _cuda_visible: str | None = None  # CUDA_VISIBLE_DEVICES as it was before any lease
    _meter: EnergyMeter | None = None
    _closed: bool = False

    def lease(self, tp: int, on_wait: Callable[[str], None] = lambda message: None) -> list[Gpu]:
        """Lease ``tp`` free GPUs for the next engine (waiting while others hold them, said
        once to ``on_wait``), after giving back the ones leased before, and make them the
        only ones CUDA shows the engine; returns them. The caller shuts the engine of the
        old lease down first."""
        if self.leases is None:
            raise ValueError("this sweep does not lease GPUs")
        if self._leased is None:
            self._cuda_visible = os.environ.get(CUDA_VISIBLE)
        self.leases.on_wait = on_wait
        indices = self.leases.acquire(tp)
        self._leased = [self.backend.gpus[i] for i in indices]
        # NVML's order is the PCI bus order; CUDA numbers by speed unless told otherwise.
        os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        os.environ[CUDA_VISIBLE] = ",".join(str(gpu.index) for gpu in self._leased)
        return self._leased

    def _gpus(self, tp: int | None) -> list[Gpu]:
        """A point's GPUs: the leased ones, else the first ``tp`` (None: all)."""
        return list(self._leased) if self._leased is not None else list(self.backend.gpus[:tp])

    def engine_spec(self, point: KnobPoint) -> EngineSpec:
        """What the point's engine is built from."""
        return EngineSpec(point.engine, self.settings.model, self.settings.engine_args)

    def meter(self) -> EnergyMeter:
        """The energy meter, with the idle power of every state the sweep has set the
        devices in so far (``lock_clocks``, ``set_power_limit``): each state is measured
        once, at rest, the first time the meter is asked for in it, so that a point's energy
        above idle is against its own clock and power limit. PointSkipped without one."""
        meter = self._meter_as_found()
        meter.measure_state_idle(self._idle_s())
        return meter

    def _meter_as_found(self) -> EnergyMeter:
        """The energy meter, with idle power as found measured the first time (or handed
        in by a parallel run's controller, whose workers' neighbours would load it)."""
        if not self.backend.sources:
            raise PointSkipped(f"energy not measured: {NO_METER}", TRY_FAKE)
        if self._meter is None:
            s = self.settings
            self._meter = EnergyMeter(
                self.backend.sources,
                sample_hz=s.sample_hz,
                min_window_s=s.min_window_s,
                flag_prefix=self.flag_prefix,
            )
            if self.idle is not None:
                self._meter.idle = self.idle
            else:
                self._meter.measure_idle(self._idle_s())
        return self._meter

    def _idle_s(self) -> float:
        return max(self.settings.min_window_s, 1.0)

    def meter_or_none(self) -> EnergyMeter | None:
        """The meter where the device has one; latency is measured either way."""
        return self.meter() if self.backend.sources else None

    def point_sources(self, point: KnobPoint) -> tuple[list[EnergySource], str | None]:
        """What to measure for a point, and a note where that is more than its own devices
        (a backend that cannot tell which sources the engine uses)."""
        if self._leased is not None:
            return list(self._leased), None
        own = self.backend.point_sources(point.tp)
        if own is not None:
            return list(own), None
        labels = ", ".join(s.label for s in self.backend.sources)
        return list(self.backend.sources), (
            f"device={self.backend.kind} cannot tell which of its sources tp{point.tp} uses: "
            f"measured all of them ({labels})"
        )

    def _measure_idle_first(self) -> None:
        # Idle power as found is measured before the session changes any clock or power
        # limit; the state a change makes is measured when a point asks for the meter, once
        # both of its changes are made (a clock and a limit would otherwise measure twice).
        if self.backend.sources:
            self._meter_as_found()

    def _set_state(self, gpus: Sequence[Gpu], change: Callable[[DeviceState], DeviceState]) -> None:
        """Tell the meter what was set on ``gpus``, for the idle power of their state."""
        if self._meter is not None:
            states = self._meter.states
            for gpu in gpus:
                states[gpu.label] = change(states.get(gpu.label, AS_FOUND))

    def lock_clocks(self, mhz: int | None, tp: int | None = None) -> int | None:
        """Lock the first ``tp`` GPUs (None: all) at ``mhz`` for one point; returns the
        clock locked (None: left alone). PointSkipped where the clocks cannot be locked."""
        self._measure_idle_first()
        if mhz is None:
            return None
        guard = self.backend.guard
        if guard is None:
            raise PointSkipped(f"device={self.backend.kind} cannot lock clocks", LEAVE_CLOCKS_ALONE)
        guard.install()
        gpus = self._gpus(tp)
        try:
            locked, _ = guard.lock_clocks(gpus, mhz)
        except (NoPermission, NotSupported) as e:
            self.restore()  # the GPUs locked before the one that refused
            raise PointSkipped(f"clocks not locked: {e.message}", e.hint) from None
        self._set_state(gpus, lambda state: replace(state, clock_mhz=locked))
        return locked

    def set_power_limit(self, watts: int | None, tp: int | None = None) -> float | None:
        """Set the power limit of the first ``tp`` GPUs (None: all) to ``watts`` for one
        point; returns the lowest limit they report after (None: left alone), which the
        driver may have rounded. PointSkipped where the limit cannot be set. Units: W."""
        self._measure_idle_first()
        if watts is None:
            return None
        guard, gpus = self.backend.guard, self._gpus(tp)
        if guard is None or not gpus:
            raise PointSkipped(f"device={self.backend.kind} cannot set power limits", LEAVE_POWER_LIMIT)
        guard.install()
        try:
            guard.set_power_limit(gpus, watts * 1000)
            self._set_state(gpus, lambda state: replace(state, power_limit_w=watts))
            # With tensor parallelism the most limited GPU paces the others.
            return min(gpu.power_limit_mw() for gpu in gpus) / 1000
        except (NoPermission, NotSupported) as e:
            self.restore()  # the GPUs limited before the one that refused
            raise PointSkipped(f"power limit not set: {e.message}", LEAVE_POWER_LIMIT) from None
        except DeviceError:
            self.restore()  # the point fails here, before its fixture could put them back
            raise

    def restore(self) -> None:
        """Put back the clocks and power limits a point changed."""
        if self._meter is not None:
            self._meter.states.clear()
        if self.backend.guard is not None:
            self.backend.guard.restore()

    def cool_down(self, tp: int | None = None) -> None:
        """Wait (up to the cool-down setting) for a point's GPUs (see ``lock_clocks``) to
        cool before it; every source where there are no GPUs."""
        if self.backend.sources and self.settings.cooldown_s > 0:
            sources: list[EnergySource] = [*self._gpus(tp)] or list(self.backend.sources)
            self._meter_as_found().cool_down(self.settings.cooldown_s, sources=sources)

    def meter_method(self) -> str | None:
        """How the session's energy was measured: counter, sampled, mixed or None."""
        methods = {
            r.energy.method for record in self.results.records for r in record.repeats if r.energy is not None
        }
        return methods.pop() if len(methods) == 1 else ("mixed" if methods else None)

    def close(self) -> None:
        """Stop the meter and give the device back with its clocks reset (DeviceError if a
        GPU could not be put back). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._meter is not None:
            self._meter.close()
        try:
            self.backend.close()
        finally:
            if self.leases is not None:
                self.leases.close()
            if self._leased is not None:
                self._leased = None
                if self._cuda_visible is None:
                    os.environ.pop(CUDA_VISIBLE, None)
                else:
                    os.environ[CUDA_VISIBLE] = self._cuda_visible


def prepare_sweep(
    settings: Settings,
    root: Path,
    *,
    make_backend: MakeBackend,
    extra_problems: Callable[[KnobPoint], Iterable[str]] = lambda point: (),
    allow_mismatch: bool = False,
    flag_prefix: str = CLI_PREFIX,
    worker: bool = False,
    idle: IdleState | None = None,
) -> Sweep:
    """Open the device, build the matrix, prepare the reports; the device is closed again if
    a later step fails. A parallel ``worker`` leaves the journal to its controller and
    takes the ``idle`` power the controller measured."""
    settings, backend, endpoint_notes = open_setup(settings, make_backend, flag_prefix)
    try:
        matrix = build_matrix(settings, backend.capabilities, extra_problems)
        results, context, notes = prepare_reports(
            settings, backend, root, allow_mismatch, flag_prefix, matrix.sweep_ids, worker
        )
    except BaseException:
        backend.close()
        raise
    # An endpoint's GPUs are its server's; greenllm builds no engine there to lease for.
    leases = None
    if backend.gpus and settings.endpoint is None:
        leases = GpuLeases([gpu.info.uuid for gpu in backend.gpus])
    sweep = Sweep(settings, backend, matrix, results, context, endpoint_notes + notes, flag_prefix, leases)
    sweep.idle = idle
    return sweep
