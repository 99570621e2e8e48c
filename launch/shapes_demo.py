"""Train the tiny reward model on the shapes world and measure how well it learned to judge (`make demo`).

  python -m launch.shapes_demo [--workdir=shapes_run] [--steps=N]

Generates the shapes data (train and held-out splits, all four tasks in both modes), trains `configs/demo.py` from
scratch on this machine's CPU with the real runner, then prints held-out pairwise accuracy and pointwise rank
correlation per task against chance (`ureward_jax.train.demo`). Re-running resumes training and evaluates again.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags, logging  # noqa: E402

from configs import demo as demo_config  # noqa: E402
from launch import entry  # noqa: E402
from ureward_jax.train import demo, runner  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "shapes_run", "where data, checkpoints and metrics go (resumed if present)")
_STEPS = flags.DEFINE_integer("steps", None, "training steps (default: configs/demo.py)", lower_bound=1)


def main(_):
  workdir = os.path.abspath(_WORKDIR.value)
  train_mixture, eval_mixture, tokenizer_file = demo.prepare_data(workdir)
  config = demo_config.get_config()
  config.workdir = workdir
  config.data.update(train=train_mixture, tokenizer=tokenizer_file)
  config.train.num_steps = _STEPS.value or config.train.num_steps
  logging.set_verbosity(logging.WARNING)
  state = runner.train(config)
  results = demo.evaluate(config, state.params, eval_mixture, tokenizer_file)
  print(f"\nheld-out judgements after {state.step} steps:")
  print(f"{'task':<22}{'pairs':>6}{'pairwise accuracy':>19}{'chance':>8}{'pointwise Spearman':>20}{'chance':>8}"
        f"{'parsed':>9}")
  for task, r in results.items():
    print(f"{task:<22}{r['pairs']:>6}{r['pair_accuracy']:>18.1%}{0.5:>8.0%}{r['point_spearman']:>20.2f}{0.0:>8.2f}"
          f"{r['parsed']:>5}/{r['points']}")
  print(f"metrics: {os.path.join(workdir, 'metrics.jsonl')}; TensorBoard: {os.path.join(workdir, 'tensorboard')}")


if __name__ == "__main__":
  entry.run(main)
