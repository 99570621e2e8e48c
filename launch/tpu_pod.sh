#!/usr/bin/env bash
# Run launch.train on every worker of a Cloud TPU slice at once.
#
#   launch/tpu_pod.sh TPU_NAME ZONE configs/reward_llava_ov_7b.py gs://bucket/runs/rm7b [--config.x=y ...]
#
# Each worker needs this repository at the same path with its venv (`make install`); the workdir must be storage
# every worker sees (a gs:// bucket or a shared file system), since Orbax writes one checkpoint from all hosts.
# jax.distributed.initialize() finds the other workers from the TPU metadata. Re-running the command resumes.
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG WORKDIR [--config.overrides ...]" >&2
  exit 2
fi
tpu=$1 zone=$2 config=$3 workdir=$4
shift 4
repo=${REPO_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
overrides=$(printf " %q" "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="
  cd $repo && JAX_PLATFORMS=tpu .venv/bin/python -m launch.train --config=$config --config.workdir=$workdir$overrides"
