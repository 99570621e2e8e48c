"""The demo's judging: a pair counts as right exactly when its known winner's verdict is the model's most likely one,
and the rank correlation handles ties."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from configs import demo as demo_config
from ureward_jax.data import shapes
from ureward_jax.data.examples import ExampleConfig, make_example
from ureward_jax.data.pipeline import MODEL_KEYS
from ureward_jax.data.sources import load_mixture
from ureward_jax.models.llava_onevision import LlavaOnevision, init_params
from ureward_jax.processing.chat import IGNORE
from ureward_jax.reward import prompts
from ureward_jax.train.demo import answer_labels, bootstrap_interval, pairwise_accuracy, spearman, wilson_interval
from ureward_jax.train.tasks.reward_sft import completion_logprobs, model_config


def test_spearman_averages_tied_ranks():
  a, b = [1.0, 2.0, 2.0, 3.0, 5.0], [2.0, 1.0, 4.0, 4.0, 9.0]
  ranks_a, ranks_b = np.array([0, 1.5, 1.5, 3, 4]), np.array([1, 0, 2.5, 2.5, 4])
  assert spearman(a, b) == pytest.approx(np.corrcoef(ranks_a, ranks_b)[0, 1], abs=1e-12)
  assert spearman([1, 1, 1], [1, 2, 3]) == 0.0
  assert spearman([3, 2, 1], [1, 2, 3]) == pytest.approx(-1.0)


def test_pairwise_accuracy_scores_the_most_likely_verdict(tmp_path):
  shapes.generate(tmp_path, num_per_task=3, split="eval", seed=2)
  tokenizer = shapes.shapes_tokenizer()
  config = demo_config.get_config()
  model = model_config(config, tokenizer)
  cfg = ExampleConfig.for_model(model, 320, 8, video_frames=4, assistant_only=True)
  module = LlavaOnevision(model)
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(1), p.shape),
                        nn.unbox(init_params(model, jax.random.key(0))))
  records = [r for r in load_mixture(str(tmp_path / "eval.yaml")) if r.data["task"] == "image_generation"
             and r.data["mode"] == "pair"]

  # Each verdict's log-probability, one sample at a time: the reference for the batched, padded scoring.
  score = jax.jit(lambda batch: completion_logprobs(module, params, batch, logits_chunk=320)[0])
  best = []
  for record in records:
    scores = {}
    for winner, verdict in prompts.template("image_generation", "pair").verdicts.items():
      candidate = copy.deepcopy(record)
      candidate.data["conversations"][-1]["value"] = verdict
      example = make_example(candidate, 0, cfg, tokenizer)
      example["labels"] = answer_labels(example["labels"])   # the verdict's own tokens
      assert np.sum(example["labels"] != IGNORE) == 1        # one token, in the shapes tokenizer
      batch = {k: jnp.asarray(example[k][None]) for k in MODEL_KEYS}
      scores[winner] = float(score(batch))
    best.append(max(scores, key=scores.get))

  def with_winners(winners):
    out = copy.deepcopy(records)
    for record, winner in zip(out, winners):
      record.data["winner"] = winner
    return out

  assert pairwise_accuracy(module, params, with_winners(best), cfg, tokenizer, batch_size=4) == 1.0
  assert pairwise_accuracy(module, params, with_winners([1 if b != 1 else 2 for b in best]), cfg, tokenizer,
                           batch_size=4) == 0.0


def test_wilson_interval_covers_the_proportion_and_narrows_with_n():
  low, high = wilson_interval(85, 100)
  assert low < 0.85 < high and high - low == pytest.approx(0.14, abs=0.01)
  low_big, high_big = wilson_interval(850, 1000)
  assert low < low_big < 0.85 < high_big < high
  assert wilson_interval(0, 50)[0] == pytest.approx(0.0, abs=1e-12) and wilson_interval(50, 50)[1] == pytest.approx(1.0)
  # Coverage: the interval holds the true rate in about 95 % of binomial draws.
  rng = np.random.default_rng(0)
  draws = rng.binomial(200, 0.7, size=2000)
  covered = np.mean([lo <= 0.7 <= hi for lo, hi in (wilson_interval(int(k), 200) for k in draws)])
  assert 0.93 <= covered <= 0.97


def test_bootstrap_interval_of_spearman():
  rng = np.random.default_rng(1)
  x = rng.normal(size=200)
  y = x + rng.normal(size=200)
  low, high = bootstrap_interval(spearman, x, y, reps=500)
  assert low < spearman(x, y) < high and 0.05 < high - low < 0.3
  unrelated = bootstrap_interval(spearman, x, rng.normal(size=200), reps=500)
  assert unrelated[0] < 0 < unrelated[1]
