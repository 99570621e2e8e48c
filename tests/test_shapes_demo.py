"""`make demo`'s whole loop, shortened (a few dozen records, a few steps) through the same code: both training
stages, the measured table and its curve, the export, `ureward score` on held-out pairs reproducing the verdict
probabilities of the training-time model, and the report rendered in a browser."""

import json

import numpy as np
import pytest
import tokenizers
from PIL import Image

from launch import shapes_demo
from tests.chromium import headless, needs_chromium
from ureward_jax.models.llava_onevision import LlavaOnevision
from ureward_jax.reward import prompts
from ureward_jax.train import chart, demo, export
from ureward_jax.train.tasks.reward_sft import model_config

SIZE = demo.DemoSize(base_per_kind=24, train_per_task=16, eval_pairs=12, eval_points=6, curve_pairs=6)
REPORT_PAIRS = 5


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("shapes_run")
  results = shapes_demo.run_demo(str(workdir), SIZE, base_steps=4, steps=4, report_pairs=REPORT_PAIRS)
  return workdir, results


def test_both_stages_train_and_the_table_is_measured(run):
  workdir, results = run
  assert export.checkpoint_steps(workdir / "base") == [4] and export.checkpoint_steps(workdir / "reward") == [4]
  base_config = json.loads((workdir / "reward" / "config.json").read_text())
  assert base_config["model"]["checkpoint"] == str(workdir / "base_model")   # fine-tuned from the base
  saved = json.loads((workdir / "results.json").read_text())
  assert saved["step"] == results["step"] == 4 and saved["tasks"] == json.loads(json.dumps(results["tasks"]))
  assert set(saved["tasks"]) == set(prompts.TASKS) and list(saved["curve"]) == ["0", "4"]
  for task, r in results["tasks"].items():
    assert r["pairs"] == SIZE.eval_pairs and r["points"] == SIZE.eval_points
    right = round(r["pair_accuracy"] * r["pairs"])
    assert tuple(r["pair_interval"]) == demo.wilson_interval(right, r["pairs"])
    assert 0 <= r["parsed"] <= r["points"]
  image = Image.open(workdir / "accuracy.png")
  assert image.size == (chart.WIDTH, chart.HEIGHT)


def test_export_load_score_reproduces_the_training_time_verdicts(run):
  workdir, _ = run
  config = export.run_config(workdir / "reward")
  data = demo.prepare_data(str(workdir), SIZE)
  tokenizer = tokenizers.Tokenizer.from_file(data.tokenizer)
  records = demo.held_out_records(data, "image_generation", "pair", REPORT_PAIRS)
  _, params = export.restore_params(workdir / "reward")
  verdicts, logps = demo.verdict_logprobs(LlavaOnevision(model_config(config, tokenizer)), params, records,
                                          demo.example_config(config, tokenizer), tokenizer)
  scored = [json.loads(line) for line in (workdir / "judged" / "image_generation_scores.jsonl").read_text().split(
      "\n") if line]
  assert [row["id"] for row in scored] == [r.data["id"] for r in records]
  names = ["tie" if v == 0 else str(v) for v in verdicts]
  served = np.array([[row["logprobs"][name] for name in names] for row in scored])
  np.testing.assert_allclose(served, logps, rtol=0, atol=1e-4)
  assert [row["winner"] for row in scored] == [verdicts[i] for i in np.argmax(logps, axis=1)]


@needs_chromium
def test_the_report_shows_judgements_beside_the_ground_truth(run, tmp_path):
  workdir, _ = run
  page = f"file://{workdir / 'report.html'}"
  dom = headless(tmp_path / "profile", "--dump-dom", page).stdout
  assert dom.count('class="item"') == REPORT_PAIRS and dom.count("expected: Image") == REPORT_PAIRS
  agree = dom.count('class="expected agrees"')
  assert agree + dom.count('class="expected disagrees"') == REPORT_PAIRS
  assert f"agrees with expected on {agree} of {REPORT_PAIRS}" in dom
  shot = tmp_path / "shot.png"
  headless(tmp_path / "profile", f"--screenshot={shot}", "--window-size=1000,900", page)
  pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
  grey = np.sum(np.abs(pixels - 128).max(-1) <= 2)    # the shapes world's background, thumbnails on screen
  assert grey > 20_000, grey
