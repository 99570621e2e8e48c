"""The training objectives, one module each; `train.objective` picks one. A new objective is one more module here
and one more entry below."""

from ureward_jax.errors import UserError
from ureward_jax.train.tasks.diffusion_dpo import DiffusionDPO
from ureward_jax.train.tasks.reward_sft import RewardSFT
from ureward_jax.train.tasks.video_dpo import VideoDPO
from ureward_jax.train.tasks.vlm_dpo import VlmDPO

TASKS = {"sft": RewardSFT, "dpo": VlmDPO, "diffusion_dpo": DiffusionDPO, "video_dpo": VideoDPO}


def task_class(config):
  """The task `config.train.objective` names."""
  objective = config.train.objective
  if objective not in TASKS:
    raise UserError(f"train.objective {objective!r} is not one of {tuple(TASKS)}")
  return TASKS[objective]
