"""Train the tiny reward model on the shapes world and measure how well it learned to judge.

  python -m launch.shapes_demo [--workdir=shapes_run] [--steps=N]

Generates the shapes data (train and held-out splits, all four tasks in both modes), trains `configs/demo.py` from
scratch on this machine's CPU with the real pipeline, step, checkpoints and metrics (`launch.train`), then judges the
held-out records:
  - pairwise: the verdict whose continuation the model finds most likely (teacher-forced log-probabilities of each
    official verdict sentence), against the known winner; chance is 50 %;
  - pointwise: the model's greedy answer, parsed for "Final Score:", rank-correlated with the known score (Spearman);
    chance is 0. Unparseable answers are counted, not scored.
Re-running resumes training where it stopped and evaluates again.
"""

from __future__ import annotations

import copy
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import tokenizers  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from configs import demo as demo_config  # noqa: E402
from launch.train import model_config, train  # noqa: E402
from ureward_jax.data import shapes  # noqa: E402
from ureward_jax.data.examples import ExampleConfig, make_example, visual_inputs  # noqa: E402
from ureward_jax.data.pipeline import MODEL_KEYS  # noqa: E402
from ureward_jax.data.sources import load_mixture  # noqa: E402
from ureward_jax.models.llava_onevision import LlavaOnevision  # noqa: E402
from ureward_jax.processing.chat import prompt_ids  # noqa: E402
from ureward_jax.processing.feature_layout import splice_markers  # noqa: E402
from ureward_jax.reward import prompts  # noqa: E402
from ureward_jax.reward.parsing import parse_pointwise  # noqa: E402
from ureward_jax.runners.llava import LlavaOnevisionForConditionalGeneration  # noqa: E402
from ureward_jax.train.step import completion_logprobs  # noqa: E402

# Held-out pairs are cheap to judge (one forward per verdict), so there are enough for accuracy to be read to a few
# points; pointwise answers are decoded token by token, so fewer of them.
TRAIN_PER_TASK, EVAL_PAIRS, EVAL_POINTS = 1000, 200, 48

_WORKDIR = flags.DEFINE_string("workdir", "shapes_run", "where data, checkpoints and metrics go (resumed if present)")
_STEPS = flags.DEFINE_integer("steps", None, "training steps (default: configs/demo.py)")


def prepare_data(workdir: str) -> tuple[str, str, str]:
  """(train mixture, held-out mixture, tokenizer file) under workdir/data, generated once."""
  root = os.path.join(workdir, "data")
  tokenizer_file = os.path.join(root, "tokenizer.json")
  if not os.path.exists(tokenizer_file):
    shapes.generate(root, num_per_task=TRAIN_PER_TASK, split="train", seed=0)
    shapes.generate(root, num_per_task=EVAL_PAIRS, split="eval", seed=1)
    shapes.shapes_tokenizer().save(tokenizer_file)
  return os.path.join(root, "train.yaml"), os.path.join(root, "eval.yaml"), tokenizer_file


def pairwise_accuracy(module, params, records, cfg: ExampleConfig, tokenizer, batch_size: int = 16) -> float:
  """Share of pair records whose known winner's verdict is the most likely continuation among the official ones."""
  score = jax.jit(lambda p, b: completion_logprobs(module, p, b, logits_chunk=cfg.max_length))
  rows, owners = [], []
  for n, record in enumerate(records):
    for winner, verdict in prompts.template(record.data["task"], "pair").verdicts.items():
      candidate = copy.deepcopy(record)
      candidate.data["conversations"][-1]["value"] = verdict
      rows.append(make_example(candidate, n, cfg, tokenizer))
      owners.append((n, winner))
  logps = []
  for start in range(0, len(rows), batch_size):
    chunk = rows[start:start + batch_size]
    chunk += [chunk[-1]] * (batch_size - len(chunk))   # a fixed batch shape: one compile
    batch = {k: jnp.asarray(np.stack([r[k] for r in chunk])) for k in MODEL_KEYS}
    logps += np.asarray(score(params, batch)).tolist()
  best = {}
  for (n, winner), logp in zip(owners, logps):
    if n not in best or logp > best[n][1]:
      best[n] = (winner, logp)
  return float(np.mean([best[n][0] == r.data["winner"] for n, r in enumerate(records)]))


def pointwise_scores(model: LlavaOnevisionForConditionalGeneration, records, cfg: ExampleConfig, tokenizer,
                     max_new_tokens: int = 64) -> list[float | None]:
  """The model's greedy pointwise answers, parsed; None where no "Final Score:" could be read."""
  rows = [prompt_ids(tokenizer, r.data["conversations"][0]["value"]) for r in records]
  visuals = [(item, pixels.transpose(0, 3, 1, 2)) for r in records for item, pixels in visual_inputs(r, cfg)]
  ids, mask, _ = splice_markers(rows, [item for item, _ in visuals], cfg.layout, cfg.image_token_id,
                                cfg.video_token_id)
  tokens = model.generate(ids, mask, visuals=visuals, max_new_tokens=max_new_tokens,
                          eos_token_id=tokenizer.token_to_id("<|im_end|>"))
  return [parse_pointwise(tokenizer.decode(row.tolist())) for row in tokens]


def spearman(a, b) -> float:
  """Rank correlation with tied ranks averaged."""
  def ranks(x):
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x))
    for value in np.unique(x):
      r[x == value] = r[x == value].mean()
    return r
  ra, rb = ranks(a), ranks(b)
  if ra.std() == 0 or rb.std() == 0:
    return 0.0
  return float(np.corrcoef(ra, rb)[0, 1])


def evaluate(config, params, eval_mixture: str, tokenizer_file: str) -> dict:
  tokenizer = tokenizers.Tokenizer.from_file(tokenizer_file)
  model = model_config(config, tokenizer)
  cfg = ExampleConfig.for_model(model, config.data.max_length, config.data.patches_per_sample,
                                video_frames=config.data.video_frames, assistant_only=True)
  records = load_mixture(eval_mixture)
  module = LlavaOnevision(model)
  wrapper = LlavaOnevisionForConditionalGeneration.from_params(model, params)
  results = {}
  for task in prompts.TASKS:
    pairs = [r for r in records if r.data["task"] == task and r.data["mode"] == "pair"]
    points = [r for r in records if r.data["task"] == task and r.data["mode"] == "point"][:EVAL_POINTS]
    predicted = pointwise_scores(wrapper, points, cfg, tokenizer)
    parsed = [(p, r.data["score"]) for p, r in zip(predicted, points) if p is not None]
    results[task] = dict(pair_accuracy=pairwise_accuracy(module, params, pairs, cfg, tokenizer), pairs=len(pairs),
                         point_spearman=spearman(*zip(*parsed)) if len(parsed) > 1 else float("nan"),
                         parsed=len(parsed), points=len(points))
  return results


def main(_):
  workdir = os.path.abspath(_WORKDIR.value)
  train_mixture, eval_mixture, tokenizer_file = prepare_data(workdir)
  config = demo_config.get_config()
  config.workdir = workdir
  config.data.train, config.data.tokenizer = train_mixture, tokenizer_file
  if _STEPS.value:
    config.train.num_steps = _STEPS.value
  logging.set_verbosity(logging.WARNING)
  state = train(config)
  results = evaluate(config, state.params, eval_mixture, tokenizer_file)
  print(f"\nheld-out judgements after {state.step} steps:")
  print(f"{'task':<22}{'pairs':>6}{'pairwise accuracy':>19}{'chance':>8}{'pointwise Spearman':>20}{'chance':>8}"
        f"{'parsed':>9}")
  for task, r in results.items():
    print(f"{task:<22}{r['pairs']:>6}{r['pair_accuracy']:>18.1%}{0.5:>8.0%}{r['point_spearman']:>20.2f}{0.0:>8.2f}"
          f"{r['parsed']:>5}/{r['points']}")
  print(f"metrics: {os.path.join(workdir, 'metrics.jsonl')}; TensorBoard: {os.path.join(workdir, 'tensorboard')}")


if __name__ == "__main__":
  app.run(main)
