"""Train (or resume) the run an ml_collections config describes: `ureward_jax.train.runner.train`.

  python -m launch.train --config=configs/demo.py --config.workdir=/tmp/run [--config.train.num_steps=200 ...]

`train.objective` picks the task: "sft" (the reward model), "dpo" (a LLaVA policy), "diffusion_dpo" (an SDXL UNet),
"video_dpo" (T2V-Turbo's UNet). The workdir receives `config.json`, `checkpoints/`, `metrics.jsonl` and
`tensorboard/`; re-running the same command resumes from the latest checkpoint, and SIGTERM finishes the current
step, saves and exits. On a TPU slice or a GPU cluster the same command runs on every host (`launch/tpu_pod.sh`,
`launch/gpu_slurm.sh`).
"""

from absl import flags
from ml_collections import config_flags

from launch import entry
from ureward_jax.train import runner

_CONFIG = config_flags.DEFINE_config_file("config", None, "training config file, e.g. configs/demo.py")


def main(_):
  runner.train(_CONFIG.value)   # a returned value would be the exit status


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  entry.run(main)
