"""The whole loop on the shapes world (`make demo`): pretrain a tiny VLM, fine-tune it into the reward model, measure
how well it judges held-out records, export it, and judge held-out pairs with `ureward score`.

  python -m launch.shapes_demo [--workdir=shapes_run] [--base_steps=N] [--steps=N]

Stages, each through the runner and configs a user trains with, each resumed when re-run:
  1. data      the world's base dialogues, reward records of all four tasks, held-out records (workdir/data);
  2. base      `configs/demo_base.py`: the base VLM learns to describe and answer questions (workdir/base), and is
               exported as a model folder (workdir/base_model);
  3. reward    `configs/demo.py` fine-tunes that folder on the reward records (workdir/reward);
  4. measure   held-out pairwise accuracy and pointwise Spearman per task with 95 % intervals (printed, and in
               workdir/results.json), and pairwise accuracy at every checkpoint (workdir/accuracy.png);
  5. use       the reward model exported (workdir/model), `ureward score` on held-out image-generation pairs, and
               the HTML report of its judgements beside the ground truth (workdir/report.html).
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags, logging  # noqa: E402

from configs import demo as demo_config  # noqa: E402
from configs import demo_base  # noqa: E402
from launch import entry  # noqa: E402
from ureward_jax import cli, pretrained  # noqa: E402
from ureward_jax.reward import prompts  # noqa: E402
from ureward_jax.train import chart, demo, export, runner  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "shapes_run", "where data, checkpoints and results go (resumed if present)")
_BASE_STEPS = flags.DEFINE_integer("base_steps", None, "base VLM steps (default: configs/demo_base.py)", lower_bound=1)
_STEPS = flags.DEFINE_integer("steps", None, "reward fine-tuning steps (default: configs/demo.py)", lower_bound=1)


def stage_configs(workdir: str, data: demo.DemoData, base_steps: int | None = None, steps: int | None = None):
  """(base config, reward config) of a demo run in `workdir`: the configs' files, data and folders filled in."""
  base = demo_base.get_config()
  base.workdir = os.path.join(workdir, "base")
  base.data.update(train=data.base, tokenizer=data.tokenizer)
  base.train.num_steps = base_steps or base.train.num_steps
  reward = demo_config.get_config()
  reward.workdir = os.path.join(workdir, "reward")
  reward.model.checkpoint = os.path.join(workdir, "base_model")
  reward.data.update(train=data.train)
  reward.train.num_steps = steps or reward.train.num_steps
  # Every checkpoint is kept: the accuracy curve is read from them.
  reward.checkpoint.keep = reward.train.num_steps // reward.checkpoint.every + 1
  return base, reward


def score_rows(data: demo.DemoData, count: int, path: str) -> str:
  """Writes the first `count` held-out image-generation pairs as `ureward score` rows, each with its known winner
  as "expected", to `path`; returns it."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    for record in demo.held_out_records(data, "image_generation", "pair", count):
      caption = record.data["conversations"][0]["value"].rsplit("[", 1)[1].rsplit("]", 1)[0]
      f.write(json.dumps({"id": record.data["id"], "prompt": caption, "images": record.data["images"],
                          "expected": record.data["winner"]}) + "\n")
  return path


def run_demo(workdir: str, size: demo.DemoSize = demo.DemoSize(), base_steps: int | None = None,
             steps: int | None = None, report_pairs: int = 24) -> dict:
  """All five stages (module docstring); returns what workdir/results.json holds: {"step", "tasks": the held-out
  results per task, "curve": {step: pairwise accuracy per task}}."""
  workdir = os.path.abspath(workdir)
  data = demo.prepare_data(workdir, size)
  base, reward = stage_configs(workdir, data, base_steps, steps)
  print("base VLM: describing and answering questions about the shapes world")
  runner.train(base)
  export.export(base.workdir, reward.model.checkpoint)
  print("reward model: fine-tuning the base on all four tasks, pairwise and pointwise")
  state = runner.train(reward)

  curve = {}
  for step in [0, *export.checkpoint_steps(reward.workdir)]:
    params = (export.restore_params(reward.workdir, step)[1] if step else
              pretrained.load_params(reward.model.checkpoint))
    curve[step] = demo.pairwise_by_task(reward, params, data, size.curve_pairs)
  chart.line_chart(os.path.join(workdir, "accuracy.png"), list(curve),
                   {task: [curve[s][task] for s in curve] for task in prompts.TASKS},
                   title=f"held-out pairwise accuracy ({size.curve_pairs} pairs per task)", y_range=(0.0, 1.0),
                   reference=0.5, reference_label="chance")
  results = {"step": int(state.step), "tasks": demo.evaluate(reward, state.params, data, size), "curve": curve}
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=1)

  model = os.path.join(workdir, "model")
  export.export(reward.workdir, model)
  rows = score_rows(data, report_pairs, os.path.join(workdir, "judged", "image_generation_pairs.jsonl"))
  scores = os.path.join(workdir, "judged", "image_generation_scores.jsonl")
  if os.path.exists(scores):
    os.remove(scores)   # judged afresh: the model may have trained further since
  cli.main(["score", "--model", model, "--task", "image_generation", "--mode", "pair", "--input", rows,
            "--output", scores, "--pair-layout", "pad", "--media-root", os.path.dirname(data.eval),
            "--report", os.path.join(workdir, "report.html")])
  return results


def print_table(results: dict, step: int) -> None:
  print(f"\nheld-out judgements after {step} fine-tuning steps (95 % intervals):")
  print(f"{'task':<21}{'pairs':>6}{'pairwise accuracy':>26}{'chance':>8}{'points':>8}{'Spearman':>21}"
        f"{'chance':>8}{'parsed':>8}")
  for task, r in results.items():
    low, high = r["pair_interval"]
    rho_low, rho_high = r["point_interval"]
    print(f"{task:<21}{r['pairs']:>6}{r['pair_accuracy']:>9.1%} [{low:.1%}, {high:.1%}]{0.5:>8.0%}{r['points']:>8}"
          f"{r['point_spearman']:>8.2f} [{rho_low:.2f}, {rho_high:.2f}]{0.0:>8.2f}{r['parsed'] / r['points']:>8.0%}")


def main(_):
  logging.set_verbosity(logging.ERROR)   # Orbax warns of every checkpoint the curve reads; skipped records are counted
  workdir = os.path.abspath(_WORKDIR.value)
  results = run_demo(workdir, base_steps=_BASE_STEPS.value, steps=_STEPS.value)
  print_table(results["tasks"], results["step"])
  print(f"\naccuracy over training: {os.path.join(workdir, 'accuracy.png')}")
  print(f"the exported reward model: {os.path.join(workdir, 'model')}")
  print(f"its judgements of held-out image-generation pairs: {os.path.join(workdir, 'report.html')}")


if __name__ == "__main__":
  entry.run(main)
