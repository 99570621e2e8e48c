"""The shapes world's demos, measured: the tiny reward model trained from scratch and judged on held-out records
(`make demo`, `python -m launch.shapes_demo`), and DPO of the tiny policy on preference records
(`python -m launch.dpo_shapes`).

Reward model, on the held-out records of all four tasks:
  - pairwise: the verdict whose continuation the model finds most likely (teacher-forced log-probabilities of each
    official verdict sentence), against the known winner; chance is 50 %;
  - pointwise: the model's greedy answer, parsed for "Final Score:", rank-correlated with the known score (Spearman);
    chance is 0. Unparseable answers are counted, not scored.
DPO: per understanding task, the share of held-out pairs whose chosen answer gains more log-probability over the
reference than the rejected one (chance 50 %; 0 % before training, when every margin is 0), and the mean margin β·Δ.
"""

from __future__ import annotations

import copy
import os

import jax
import jax.numpy as jnp
import numpy as np
import tokenizers

from ureward_jax import parallel
from ureward_jax.data import shapes
from ureward_jax.data.examples import ExampleConfig, make_example, make_preference_example, visual_inputs
from ureward_jax.data.pipeline import MODEL_KEYS
from ureward_jax.data.sources import load_mixture
from ureward_jax.models.llava_onevision import LlavaOnevision, init_params
from ureward_jax.processing.chat import prompt_ids
from ureward_jax.processing.feature_layout import splice_markers
from ureward_jax.reward import prompts
from ureward_jax.reward.parsing import parse_pointwise
from ureward_jax.runners.llava import LlavaOnevisionForConditionalGeneration
from ureward_jax.train.tasks.reward_sft import completion_logprobs, model_config
from ureward_jax.train.tasks.vlm_dpo import sequence_logps

# Held-out pairs are cheap to judge (one forward per verdict), so there are enough for accuracy to be read to a few
# points; pointwise answers are decoded token by token, so fewer of them.
TRAIN_PER_TASK, EVAL_PAIRS, EVAL_POINTS = 1000, 200, 48
DPO_TRAIN_PER_TASK, DPO_EVAL_PER_TASK = 2000, 100


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
  """{task: pair_accuracy, pairs, point_spearman, parsed, points} of the reward model `params` on held-out records."""
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


def prepare_preference_data(workdir: str, train_per_task: int = DPO_TRAIN_PER_TASK,
                            eval_per_task: int = DPO_EVAL_PER_TASK) -> tuple[str, str, str]:
  """(train mixture, held-out mixture, tokenizer file) of preference records under workdir/data, generated once."""
  root = os.path.join(workdir, "data")
  tokenizer_file = os.path.join(root, "tokenizer.json")
  if not os.path.exists(tokenizer_file):
    shapes.generate_preference(root, train_per_task, "train", seed=0)
    shapes.generate_preference(root, eval_per_task, "eval", seed=1)
    shapes.shapes_tokenizer().save(tokenizer_file)
  return os.path.join(root, "train_dpo.yaml"), os.path.join(root, "eval_dpo.yaml"), tokenizer_file


def held_out(config, params, eval_mixture: str, tokenizer_file: str, batch: int = 10) -> dict:
  """{task: (preference accuracy, mean margin)} of `params` against the reference (the seeded initialisation)."""
  tokenizer = tokenizers.Tokenizer.from_file(tokenizer_file)
  model = model_config(config, tokenizer)
  module = LlavaOnevision(model)
  reference, _ = parallel.init_sharded(lambda r: init_params(model, r), jax.random.key(config.seed),
                                       parallel.make_mesh(**config.mesh))
  cfg = ExampleConfig.for_model(model, config.data.max_length, config.data.patches_per_sample,
                                video_frames=config.data.video_frames)
  logps = jax.jit(lambda p, b: sequence_logps(module, p, b)[0])
  records = load_mixture(eval_mixture)
  out = {}
  for task in ("image_understanding", "video_understanding"):
    examples = [make_preference_example(r, i, cfg, tokenizer) for i, r in enumerate(records)
                if r.data["id"].split("-")[3] == task]
    margins = []
    for start in range(0, len(examples), batch):
      rows = {k: jnp.asarray(np.concatenate([e[k] for e in examples[start:start + batch]])) for k in MODEL_KEYS}
      gain = np.asarray(logps(params, rows)) - np.asarray(logps(reference, rows))
      margins += (config.dpo.beta * (gain[0::2] - gain[1::2])).tolist()
    out[task] = (float(np.mean(np.array(margins) > 0)), float(np.mean(margins)))
  return out
