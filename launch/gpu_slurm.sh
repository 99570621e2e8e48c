#!/usr/bin/env bash
# Multi-node GPU training under Slurm: one process per node, each driving all of its node's GPUs.
#
#   sbatch --nodes=4 --gpus-per-node=8 launch/gpu_slurm.sh configs/reward_llava_ov_7b.py /shared/runs/rm7b [--config.x=y]
#
# Needs the `cuda` extra in .venv on a file system all nodes share, and a workdir they all see. jax.distributed
# reads the coordinator, process count and process id from the Slurm environment. Re-submitting resumes.
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: sbatch [slurm options] $0 CONFIG WORKDIR [--config.overrides ...]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
export JAX_PLATFORMS=cuda
# Let XLA take the GPU memory it needs instead of a fixed 75 % preallocation, and overlap collectives with compute.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
srun --kill-on-bad-exit=1 .venv/bin/python -m launch.train --config="$config" --config.workdir="$workdir" "$@"
