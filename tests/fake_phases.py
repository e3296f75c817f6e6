"""A simulated engine and energy counter with a known truth, for the prefill/decode split
(``phases.py``).

Every step draws ``a * prefill tokens + b * decode tokens + c * seconds`` (plus, with
``noise_w``, white noise: a deviation of its own, even over the step), and the counter shows the exact
integral of that power as of its last update, on a periodic grid (with ``jitter_s``, each
update off it by up to that much). The run loop's :class:`CounterLog` reads the counter
after every step, as a measured run does, through the ``EnergySource`` interface.
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pytest_greenllm.devices.base import INSTANT, Reading
from pytest_greenllm.driver import Step
from pytest_greenllm.phases import CounterLog, PhaseSplit, split_phases

if TYPE_CHECKING:
    from pytest_greenllm.devices.base import EnergySource

# The example: a prefill token costs 0.107 of a decode token (decode re-reads the
# weights for a handful of tokens; prefill shares one read among thousands).
DECODE_J = 0.12
NOISE_TIME_S = 0.01  # the time over which a step's power strays by ``noise_w``. Units: s.


@dataclass(frozen=True)
class Truth:
    """What the simulated engine draws. Units: J/token, J/token, W."""

    j_per_prefill_token: float = 0.107 * DECODE_J
    j_per_decode_token: float = DECODE_J
    static_power_w: float = 90.0


class SimulatedEngine:
    """Steps of known energy, and a counter that updates every ``period_s`` from
    ``phase_s`` on; the log reads it at the start and after every step."""

    def __init__(
        self,
        truth: Truth = Truth(),
        period_s: float = 0.1,
        noise_w: float = 0.0,
        jitter_s: float = 0.0,
        seed: int = 0,
        start_s: float = 0.237,
        phase_s: float = 0.0137,
    ) -> None:
        self.truth = truth
        self.rng = random.Random(seed)
        self.period_s = period_s
        self.noise_w = noise_w
        self.jitter_s = jitter_s
        self.now_s = start_s
        self.start_s = start_s
        # Power is piecewise constant: from starts_s[k] on it is powers_w[k], and the
        # energy at starts_s[k] is energies_j[k]. Before the run the engine idles.
        self.starts_s = [0.0]
        self.powers_w = [truth.static_power_w]
        self.energies_j = [0.0]
        self.phase_s = phase_s
        self.updates_s = [phase_s]
        self.label = "sim0"
        source: EnergySource = self
        self.log = CounterLog([source], self.clock)
        self.log.start()

    def clock(self) -> float:
        """The simulated monotonic clock. Units: s."""
        return self.now_s

    def energy_j(self, t_s: float) -> float:
        """The true energy from time 0 to ``t_s``. Units: J."""
        k = bisect.bisect_right(self.starts_s, t_s) - 1
        return self.energies_j[k] + self.powers_w[k] * (t_s - self.starts_s[k])

    def energy_mj(self) -> float | None:
        """The counter: whole mJ, as of its last update. Units: mJ."""
        while self.updates_s[-1] <= self.now_s:
            on_grid = self.phase_s + len(self.updates_s) * self.period_s
            self.updates_s.append(on_grid + self.rng.uniform(-self.jitter_s, self.jitter_s))
        # Jitter under half a period keeps the updates in order: the one before the first
        # still to come is the last.
        return math.floor(self.energy_j(self.updates_s[-2]) * 1000)

    def read(self) -> Reading:
        """The power now (the split reads only the counter)."""
        return Reading(power_mw=self.powers_w[-1] * 1000, power_kind=INSTANT)

    def step(self, seconds: float, prefill: int, decode: int) -> None:
        """One step of ``seconds`` that scheduled these tokens; the log reads as it returns."""
        truth = self.truth
        joules = truth.j_per_prefill_token * prefill + truth.j_per_decode_token * decode
        # White noise: a step's mean strays by noise_w over NOISE_TIME_S, less over a
        # longer step, so that intervals' errors are independent, of variance in
        # proportion to their length (the split's assumption).
        stray_w = self.rng.gauss(0.0, self.noise_w * math.sqrt(NOISE_TIME_S / seconds))
        power_w = joules / seconds + truth.static_power_w + stray_w
        self.energies_j.append(self.energy_j(self.now_s))
        self.starts_s.append(self.now_s)
        self.powers_w.append(power_w)
        self.now_s += seconds
        self.log.step(Step(self.now_s, prefill, decode, "scheduler"))

    def split(self) -> PhaseSplit:
        """The split of the run so far, from the log's steps and reads."""
        result = split_phases(self.log.steps, self.log.reads, self.start_s)
        assert result is not None
        return result


def step_seconds(prefill: int, decode: int) -> float:
    """How long an H100-class engine takes over a step's tokens. Units: s."""
    return 0.004 + 2e-5 * prefill + 3e-4 * decode


def all_mixed(engine: SimulatedEngine, seconds: float, constant: bool = False) -> None:
    """Chunked prefill under load: every step shares a prompt chunk with the running
    decodes. Unless ``constant``, the chunk and the batch of decodes drift from step to
    step, so the mix varies between counter intervals; with it, every step is alike."""
    rng = engine.rng
    batch = 32
    while engine.now_s < engine.start_s + seconds:
        if constant:
            prefill, decode = 1024, 32
        else:
            batch = min(96, max(4, batch + rng.randint(-6, 6)))
            prefill, decode = rng.randint(64, 2048), batch
        engine.step(step_seconds(prefill, decode) * rng.uniform(0.9, 1.1), prefill, decode)


def alternating(engine: SimulatedEngine, seconds: float, jitter: float) -> None:
    """10 ms prefill steps and 10 ms decode steps in turn, each ``jitter`` (a fraction)
    longer or shorter at random."""
    rng = engine.rng
    prefill = True
    while engine.now_s < engine.start_s + seconds:
        tokens = (512, 0) if prefill else (0, 48)
        engine.step(0.01 * (1 + rng.uniform(-jitter, jitter)), *tokens)
        prefill = not prefill


def serving(engine: SimulatedEngine, rounds: int) -> None:
    """Batches as a server without chunked prefill runs them: prefill steps, decode steps
    and a wait for the next arrivals, each batch a different size."""
    rng = engine.rng
    for _ in range(rounds):
        batch = rng.randint(4, 64)
        for _ in range(rng.randint(1, 4)):
            engine.step(step_seconds(2048, 0), 2048, 0)
        for _ in range(rng.randint(20, 60)):
            engine.step(step_seconds(0, batch), 0, batch)
        engine.step(rng.uniform(0.05, 0.3), 0, 0)
