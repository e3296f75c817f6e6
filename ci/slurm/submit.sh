#!/usr/bin/env bash
# pytest-greenllm on Slurm: submit the sweep as an array of shards, one GPU node each, then
# the merge and the energy gate, which starts when every task has ended, whether it
# succeeded or not (afterany): a failed shard shows as missing points in the merge instead
# of leaving the gate pending forever.
#
#   ci/slurm/submit.sh [SHARDS]   # default 4
#
# Run it from your repository's root, in an environment that has pytest-greenllm[gpu]. The
# jobs inherit GREENLLM_DIR, GREENLLM_PYTEST_ARGS, GREENLLM_BASELINE and
# GREENLLM_KEEP_BASELINE (see sweep-array.sbatch and merge.sbatch).
set -euo pipefail

shards="${1:-4}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if ! command -v greenllm >/dev/null; then
  echo "greenllm not found: activate an environment with pytest-greenllm[gpu] first" >&2
  exit 2
fi

# --parsable prints the job id, followed by ";cluster" on a multi-cluster setup.
sweep="$(sbatch --parsable --array="1-$shards" "$here/sweep-array.sbatch")"
sweep="${sweep%%;*}"

# The merge job learns which run to merge from GREENLLM_SWEEP_JOB: the reports' folder.
merge="$(sbatch --parsable --dependency="afterany:$sweep" \
  --export="ALL,GREENLLM_SWEEP_JOB=$sweep" "$here/merge.sbatch")"
merge="${merge%%;*}"

echo "sweep: array job $sweep ($shards shards); merge and gate: job $merge"
echo "reports: ${GREENLLM_DIR:-greenllm-out}/$sweep/; the gate's verdict: sacct -j $merge"
