"""DPO on the shapes world, measured: train the tiny policy on preference records and judge held-out pairs.

  python -m launch.dpo_shapes [--workdir=dpo_shapes_run] [--steps=N]

Generates 2,000 preference records per understanding task (train) and 100 (held out), trains `configs/dpo_demo.py`
with the runner, then prints, per task, the held-out preference accuracy (chance 50 %) and the mean margin β·Δ
(`ureward_jax.train.demo.held_out`).
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags, logging  # noqa: E402

from configs import dpo_demo  # noqa: E402
from launch import entry  # noqa: E402
from ureward_jax.train import demo, runner  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "dpo_shapes_run", "where data, checkpoints and metrics go")
_STEPS = flags.DEFINE_integer("steps", None, "training steps (default: configs/dpo_demo.py)", lower_bound=1)


def main(_):
  workdir = os.path.abspath(_WORKDIR.value)
  train_mixture, eval_mixture, tokenizer_file = demo.prepare_preference_data(workdir)
  config = dpo_demo.get_config()
  config.workdir = workdir
  config.data.update(train=train_mixture, tokenizer=tokenizer_file)
  config.train.num_steps = _STEPS.value or config.train.num_steps
  logging.set_verbosity(logging.WARNING)
  state = runner.train(config)
  print(f"\nheld-out preference pairs after {state.step} DPO steps:")
  print(f"{'task':<22}{'accuracy':>10}{'chance':>8}{'mean margin':>13}")
  for task, (accuracy, margin) in demo.held_out(config, state.params, eval_mixture, tokenizer_file).items():
    print(f"{task:<22}{accuracy:>10.1%}{0.5:>8.0%}{margin:>13.3f}")


if __name__ == "__main__":
  entry.run(main)
