"""The runner with train.objective = "dpo" on the shapes world's preference records: rewards in the metrics, the
margin grows, and a resumed run keeps the starting model as its reference."""

import json
import os

import numpy as np
import pytest

from configs import demo as demo_config
from ureward_jax.data import shapes
from ureward_jax.train.runner import train

STEPS = 8


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("shapes_dpo")
  shapes.generate_preference(root, num_per_task=32, split="train", seed=0)
  shapes.shapes_tokenizer().save(str(root / "tokenizer.json"))
  return root


def config_for(data, workdir, steps=STEPS):
  c = demo_config.get_config()
  c.workdir = str(workdir)
  c.data.update(train=str(data / "train" / "image_understanding_dpo.json"), image_folder=str(data),
                tokenizer=str(data / "tokenizer.json"),
                batch_size=8, max_length=128, buckets=())   # 16 sequences: one pair per device
  c.train.update(objective="dpo", num_steps=steps, log_every=1)
  c.dpo = dict(beta=0.5, loss_type="sigmoid", label_smoothing=0.0, gamma=0.0, reference="step",
               reference_dtype="float32")
  # A constant rate, so that a run stopped early by a smaller num_steps follows the same schedule.
  c.optim.update(lr=1e-3, warmup_ratio=0.0, schedule="constant")
  c.checkpoint.update(every=4, keep=2)
  return c


def metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def whole(data, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("whole")
  train(config_for(data, workdir))
  return metrics(workdir)


def test_dpo_run_logs_rewards_and_raises_the_margin(whole):
  rows = whole
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
  assert {"rewards_chosen", "rewards_rejected", "rewards_margin", "rewards_accuracy"} <= set(rows[0])
  assert abs(rows[0]["rewards_margin"]) < 1e-6   # step 1: the policy is the reference
  # Each step sees new pairs: the margin on them grows from 0 and the loss falls below log 2.
  assert np.mean([r["rewards_margin"] for r in rows[-4:]]) > 0.25
  assert np.mean([r["loss"] for r in rows[-4:]]) < rows[0]["loss"] - 0.05 and rows[0]["loss"] == pytest.approx(np.log(2))


def test_resumed_dpo_run_matches_an_uninterrupted_one(data, whole, tmp_path):
  train(config_for(data, tmp_path / "split", steps=4))
  train(config_for(data, tmp_path / "split"))
  split = metrics(tmp_path / "split")
  assert [r["step"] for r in split] == list(range(1, STEPS + 1))
  for a, b in zip(whole, split):
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert a["rewards_margin"] == pytest.approx(b["rewards_margin"], rel=1e-4, abs=1e-6)


def test_precomputed_reference_gives_the_same_run(data, whole, tmp_path):
  config = config_for(data, tmp_path / "pre", steps=4)
  config.dpo.reference = "precomputed"
  train(config)
  table = np.load(tmp_path / "pre" / "reference_logps.npy")
  assert table.shape == (32, 2) and np.all(table < 0)
  assert len(metrics(tmp_path / "pre")) == 4
  for a, b in zip(whole, metrics(tmp_path / "pre")):
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert a["rewards_margin"] == pytest.approx(b["rewards_margin"], rel=1e-4, abs=1e-5)
