"""Shards: one sweep split across nodes by the schedulers teams already run.

``--greenllm-shard=K/N`` keeps the engine configurations of shard K (1-based) of N. The
split never cuts an engine configuration (its points share one engine build), is the same
on every node (it depends on the matrix alone), and balances an estimated cost: the
configurations, costliest first, each go to the shard with the least cost so far (the
longest-processing-time rule, within 4/3 of the best split). ``auto`` reads the
scheduler's own variables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from pytest_greenllm.knobs import EngineConfig, KnobPoint, Matrix, count_of

# What building and shutting down an engine costs, as seconds of points: vLLM's start-up
# (weights, compile, CUDA graphs) is of the order of a minute on a GPU. Units: s.
ENGINE_BUILD_S = 60.0
# Warm-up, judging and writing around each repeat's window. Units: s.
POINT_OVERHEAD_S = 5.0


class ShardError(ValueError):
    """A shard that cannot be read or found; the message says what is accepted."""


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based
    total: int

    @property
    def label(self) -> str:
        return f"{self.index}/{self.total}"


def parse_shard(text: str, env: Mapping[str, str]) -> Shard | None:
    """'' (no shard), 'K/N', or 'auto' (from ``env``)."""
    text = text.strip()
    if not text:
        return None
    if text.lower() == "auto":
        return shard_from_env(env)
    index, sep, total = text.partition("/")
    if not (sep and index.strip().isdigit() and total.strip().isdigit()):
        raise ShardError("give the shard as K/N, e.g. 2/4 (shard 2 of 4, counted from 1), or 'auto'")
    return _checked(int(index), int(total))


def _checked(index: int, total: int, where: str | None = None) -> Shard:
    if not 1 <= index <= total:
        prefix = "" if where is None else f"{where}: "
        raise ShardError(f"{prefix}shard {index} of {total} does not exist; shards count from 1 to {total}")
    return Shard(index, total)


def _int(env: Mapping[str, str], name: str) -> int:
    text = env[name].strip()
    if not text.lstrip("-").isdigit():
        raise ShardError(f"${name}={env[name]!r} is not a whole number")
    return int(text)


def shard_from_env(env: Mapping[str, str]) -> Shard:
    """The shard a scheduler's variables say this node runs: a Slurm array task, a
    Kubernetes indexed Job's pod, or a CI matrix job (GREENLLM_SHARD_INDEX, from 1)."""
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        first = _int(env, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in env else 0
        task, count = _int(env, "SLURM_ARRAY_TASK_ID"), _int(env, "SLURM_ARRAY_TASK_COUNT")
        if "SLURM_ARRAY_TASK_STEP" in env and _int(env, "SLURM_ARRAY_TASK_STEP") != 1:
            raise ShardError("a Slurm array with a step other than 1 cannot number shards; use --array=1-N")
        return _checked(task - first + 1, count, "Slurm's array task")
    if "JOB_COMPLETION_INDEX" in env:
        if "GREENLLM_SHARD_TOTAL" not in env:
            raise ShardError(
                "$JOB_COMPLETION_INDEX is set but not $GREENLLM_SHARD_TOTAL: set it to the Job's completions"
            )
        index = _int(env, "JOB_COMPLETION_INDEX") + 1
        return _checked(index, _int(env, "GREENLLM_SHARD_TOTAL"), "the Kubernetes completion index")
    if "GREENLLM_SHARD_INDEX" in env and "GREENLLM_SHARD_TOTAL" in env:
        return _checked(
            _int(env, "GREENLLM_SHARD_INDEX"), _int(env, "GREENLLM_SHARD_TOTAL"), "$GREENLLM_SHARD_INDEX"
        )
    raise ShardError(
        "'auto' found no scheduler's variables: SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT "
        "(Slurm arrays), JOB_COMPLETION_INDEX and GREENLLM_SHARD_TOTAL (Kubernetes indexed "
        "Jobs), or GREENLLM_SHARD_INDEX and GREENLLM_SHARD_TOTAL (a CI matrix)"
    )


def point_cost_s(repeats: int, min_window_s: float, cooldown_s: float) -> float:
    """The estimated time of one point: each repeat's window, with a cool-down of half
    the longest wait before it. Units: s."""
    return repeats * (max(min_window_s, 1.0) + POINT_OVERHEAD_S + cooldown_s / 2)


def split(
    configs: Sequence[EngineConfig], points: Sequence[KnobPoint], point_s: float, total: int
) -> list[int]:
    """The shard (1-based) of each configuration: the costliest first, each to the shard
    with the least cost so far; ties go to the earlier configuration and the lower shard."""
    counts = {config: 0 for config in configs}
    for point in points:
        counts[point.engine] += 1
    cost = [ENGINE_BUILD_S + counts[config] * point_s for config in configs]
    loads = [0.0] * total
    owner = [0] * len(configs)
    for i in sorted(range(len(configs)), key=lambda i: (-cost[i], i)):
        shard = min(range(total), key=lambda s: (loads[s], s))
        loads[shard] += cost[i]
        owner[i] = shard + 1
    return owner


def shard_matrix(matrix: Matrix, shard: Shard, point_s: float) -> Matrix:
    """The part of ``matrix`` that ``shard`` runs, with a line for the header among its
    notes, and the ids of the whole matrix."""
    configs = matrix.engine_configs
    owner = split(configs, matrix.points, point_s, shard.total)
    mine = {config for config, index in zip(configs, owner) if index == shard.index}
    points = tuple(p for p in matrix.points if p.engine in mine)
    line = (
        f"shard {shard.label}: {count_of(len(points), 'point')} of {len(matrix.points)}, "
        f"{count_of(len(mine), 'engine configuration')} of {len(configs)}"
    )
    planned = tuple(p.id for p in matrix.points)
    return replace(matrix, points=points, notes=(*matrix.notes, line), planned=planned)
