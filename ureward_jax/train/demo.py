"""The shapes world's demos, measured: the tiny reward model — a base VLM pretrained on the world's captions and
questions, then fine-tuned on all four tasks — judged on held-out records (`make demo`, `python -m
launch.shapes_demo`), and DPO of the tiny policy on preference records (`python -m launch.dpo_shapes`).

Reward model, on the held-out records of all four tasks:
  - pairwise: the verdict the model finds most likely (teacher-forced log-probability of each official verdict
    sentence after the prompt, laid out as in training), against the known winner; chance is 50 %, and the 95 %
    interval is Wilson's;
  - pointwise: the model's greedy answer, parsed for "Final Score:", rank-correlated with the known score (Spearman,
    95 % interval by bootstrap); chance is 0. Unparseable answers are counted, not scored.
DPO: per understanding task, the share of held-out pairs whose chosen answer gains more log-probability over the
reference than the rejected one (chance 50 %; 0 % before training, when every margin is 0), and the mean margin β·Δ.
"""

from __future__ import annotations

import copy
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import tokenizers

from ureward_jax import parallel
from ureward_jax.data import shapes, shapes_base
from ureward_jax.data.examples import ExampleConfig, make_example, make_preference_example, visual_inputs
from ureward_jax.data.pipeline import MODEL_KEYS
from ureward_jax.data.sources import load_mixture
from ureward_jax.models.llava_onevision import LlavaOnevision, init_params
from ureward_jax.processing.chat import IGNORE, prompt_ids
from ureward_jax.processing.feature_layout import splice_markers
from ureward_jax.reward import prompts
from ureward_jax.reward.parsing import parse_pointwise
from ureward_jax.runners.llava import LlavaOnevisionForConditionalGeneration
from ureward_jax.train.tasks.reward_sft import completion_logprobs, model_config
from ureward_jax.train.tasks.vlm_dpo import sequence_logps

DPO_TRAIN_PER_TASK, DPO_EVAL_PER_TASK = 2000, 100
# The chat wrapper around an answer in a labelled assistant turn: "<|im_start|>assistant\n" before, "<|im_end|>\n"
# after (`processing.chat`), one token each piece in the Qwen and the shapes tokenizers.
_ANSWER_HEAD, _ANSWER_TAIL = 3, 2


@dataclasses.dataclass(frozen=True)
class DemoSize:
  """How much data the demo draws. The defaults are `make demo`'s; tests run the same path smaller.

  base_per_kind: base-VLM dialogues per kind (image, video, image pair, video pair); train_per_task: reward records
  per task × mode; eval_pairs / eval_points: held-out pair / point records per task judged at the end;
  curve_pairs: held-out pairs per task judged at every checkpoint for the accuracy curve.
  """
  base_per_kind: int = 4000
  train_per_task: int = 2000
  eval_pairs: int = 200
  eval_points: int = 100
  curve_pairs: int = 100


@dataclasses.dataclass(frozen=True)
class DemoData:
  """Mixture files (UnifiedReward's train_data.yaml form) and the tokenizer, under workdir/data."""
  base: str
  train: str
  eval: str
  tokenizer: str


def prepare_data(workdir: str, size: DemoSize = DemoSize()) -> DemoData:
  """The base, reward-train and held-out mixtures and the tokenizer under workdir/data, generated once (the
  tokenizer, written last, marks them complete)."""
  root = os.path.join(workdir, "data")
  tokenizer_file = os.path.join(root, "tokenizer.json")
  if not os.path.exists(tokenizer_file):
    shapes_base.generate_base(root, num_per_kind=size.base_per_kind, split="train", seed=0)
    shapes.generate(root, num_per_task=size.train_per_task, split="train", seed=0)
    shapes.generate(root, num_per_task=max(size.eval_pairs, size.eval_points), split="eval", seed=1)
    shapes.shapes_tokenizer().save(tokenizer_file)
  return DemoData(*(os.path.join(root, f) for f in ("train_base.yaml", "train.yaml", "eval.yaml")), tokenizer_file)


def held_out_records(data: DemoData, task: str, mode: str, count: int) -> list:
  """The first `count` held-out records of one task × mode."""
  return [r for r in load_mixture(data.eval) if r.data["task"] == task and r.data["mode"] == mode][:count]


def answer_labels(labels: np.ndarray) -> np.ndarray:
  """`labels` (T,) of an assistant-only example with only the answer's own tokens kept: the labelled run less the
  chat wrapper around it."""
  labelled = np.flatnonzero(labels != IGNORE)
  out = np.full_like(labels, IGNORE)
  keep = labelled[_ANSWER_HEAD:len(labelled) - _ANSWER_TAIL]
  out[keep] = labels[keep]
  return out


def verdict_logprobs(module, params, records, cfg: ExampleConfig, tokenizer,
                     batch_size: int = 32) -> tuple[list[int], np.ndarray]:
  """(verdicts [1, 2(, 0 the tie)], log p(verdict sentence | prompt) (N, K) fp64): each of the template's verdicts
  teacher-forced after each pair record's prompt, laid out as the training examples are."""
  sentences = prompts.template(records[0].data["task"], "pair").verdicts
  verdicts = sorted(sentences, key=lambda k: (k == 0, k))
  score = jax.jit(lambda p, b: completion_logprobs(module, p, b, logits_chunk=cfg.max_length))
  rows = []
  for record in records:
    for verdict in verdicts:
      candidate = copy.deepcopy(record)
      candidate.data["conversations"][-1]["value"] = sentences[verdict]
      example = make_example(candidate, 0, cfg, tokenizer)
      rows.append(example | {"labels": answer_labels(example["labels"])})
  logps = []
  for start in range(0, len(rows), batch_size):
    chunk = rows[start:start + batch_size]
    chunk += [chunk[-1]] * (batch_size - len(chunk))   # a fixed batch shape: one compile
    batch = {k: jnp.asarray(np.stack([r[k] for r in chunk])) for k in MODEL_KEYS}
    logps += np.asarray(score(params, batch), np.float64).tolist()
  return verdicts, np.asarray(logps[:len(rows)]).reshape(len(records), len(verdicts))


def judged_right(module, params, records, cfg: ExampleConfig, tokenizer, batch_size: int = 32) -> int:
  """How many pair records have their known winner's verdict as the most likely among the official ones."""
  verdicts, logps = verdict_logprobs(module, params, records, cfg, tokenizer, batch_size)
  picked = np.asarray(verdicts)[np.argmax(logps, axis=1)]
  return int(np.sum(picked == np.asarray([r.data["winner"] for r in records])))


def pairwise_accuracy(module, params, records, cfg: ExampleConfig, tokenizer, batch_size: int = 32) -> float:
  """Share of pair records whose known winner's verdict is the most likely among the official ones."""
  return judged_right(module, params, records, cfg, tokenizer, batch_size) / len(records)


def pointwise_scores(model: LlavaOnevisionForConditionalGeneration, records, cfg: ExampleConfig, tokenizer,
                     max_new_tokens: int = 96, batch_size: int = 50) -> list[float | None]:
  """The model's greedy pointwise answers, parsed; None where no "Final Score:" could be read."""
  out = []
  for start in range(0, len(records), batch_size):
    chunk = records[start:start + batch_size]
    rows = [prompt_ids(tokenizer, r.data["conversations"][0]["value"]) for r in chunk]
    visuals = [(item, pixels.transpose(0, 3, 1, 2)) for r in chunk for item, pixels in visual_inputs(r, cfg)]
    ids, mask, _ = splice_markers(rows, [item for item, _ in visuals], cfg.layout, cfg.image_token_id,
                                  cfg.video_token_id)
    tokens = model.generate(ids, mask, visuals=visuals, max_new_tokens=max_new_tokens,
                            eos_token_id=tokenizer.token_to_id("<|im_end|>"))
    out += [parse_pointwise(tokenizer.decode(row.tolist())) for row in tokens]
  return out


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


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
  """The 95 % Wilson score interval of a binomial proportion (sound near 0 and 1, unlike the normal one)."""
  if n == 0:
    return float("nan"), float("nan")
  p = successes / n
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
  return float(centre - half), float(centre + half)


def bootstrap_interval(statistic, a, b, reps: int = 1000, seed: int = 0) -> tuple[float, float]:
  """The 95 % percentile-bootstrap interval of statistic(a, b) over resampled pairs (a_i, b_i)."""
  a, b = np.asarray(a), np.asarray(b)
  if len(a) < 2:
    return float("nan"), float("nan")
  rng = np.random.default_rng(seed)
  draws = [statistic(a[i], b[i]) for i in rng.integers(len(a), size=(reps, len(a)))]
  low, high = np.percentile(draws, [2.5, 97.5])
  return float(low), float(high)


def example_config(config, tokenizer) -> ExampleConfig:
  """The reward run's example layout, answers labelled alone (for teacher-forced verdicts)."""
  return ExampleConfig.for_model(model_config(config, tokenizer), config.data.max_length,
                                 config.data.patches_per_sample, video_frames=config.data.video_frames,
                                 assistant_only=True)


def pairwise_by_task(config, params, data: DemoData, count: int) -> dict[str, float]:
  """{task: held-out pairwise accuracy} of `params` on the first `count` pairs of each task."""
  tokenizer = tokenizers.Tokenizer.from_file(data.tokenizer)
  cfg, module = example_config(config, tokenizer), LlavaOnevision(model_config(config, tokenizer))
  return {task: pairwise_accuracy(module, params, held_out_records(data, task, "pair", count), cfg, tokenizer)
          for task in prompts.TASKS}


def evaluate(config, params, data: DemoData, size: DemoSize = DemoSize()) -> dict:
  """{task: {pair_accuracy, pair_interval, pairs, point_spearman, point_interval, parsed, points}} of the reward
  model `params` on the held-out records."""
  tokenizer = tokenizers.Tokenizer.from_file(data.tokenizer)
  model = model_config(config, tokenizer)
  cfg, module = example_config(config, tokenizer), LlavaOnevision(model)
  wrapper = LlavaOnevisionForConditionalGeneration.from_params(model, params)
  results = {}
  for task in prompts.TASKS:
    pairs = held_out_records(data, task, "pair", size.eval_pairs)
    points = held_out_records(data, task, "point", size.eval_points)
    right = judged_right(module, params, pairs, cfg, tokenizer)
    predicted = pointwise_scores(wrapper, points, cfg, tokenizer)
    parsed = [(p, r.data["score"]) for p, r in zip(predicted, points) if p is not None]
    results[task] = dict(
        pair_accuracy=right / len(pairs), pair_interval=wilson_interval(right, len(pairs)), pairs=len(pairs),
        point_spearman=spearman(*zip(*parsed)) if len(parsed) > 1 else float("nan"),
        point_interval=bootstrap_interval(spearman, *zip(*parsed)) if len(parsed) > 1 else (float("nan"),) * 2,
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
