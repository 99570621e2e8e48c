"""Judging: the logits path equals transformers' probabilities of the verdict and score continuations, every task ×
mode × method runs, swap debiasing is symmetric, and bad rows are reported without stopping the others."""

import numpy as np
import pytest
import torch

from tests import tiny_llava as T
from ureward_jax.processing.chat import prompt_ids
from ureward_jax.processing.feature_layout import splice_markers
from ureward_jax.reward import prompts
from ureward_jax.reward.inputs import InputOptions
from ureward_jax.reward.scoring import Continuations, Judge
from ureward_jax.runners.llava import layout_config

TEXT = {"prompt": "a red circle and a blue square", "question": "What color is the circle?",
        "response": "The circle is red.", "responses": ["The circle is red.", "The circle is blue."]}


@pytest.fixture(scope="module")
def setup(checkpoint):
  hf, model, tokenizer, _, media = checkpoint
  return hf, model, tokenizer, media


def row(task, mode, first="a.png", second="b.jpg"):
  video = task.startswith("video")
  one = "clip" if video else first
  if task.endswith("generation"):
    media = {("videos" if video else "images"): ["clip", "clip"] if video else [first, second]} if mode == "pair" \
        else {("video" if video else "image"): one}
    return {"prompt": TEXT["prompt"], **media}
  out = {"question": TEXT["question"], ("video" if video else "image"): one}
  return out | ({"responses": TEXT["responses"]} if mode == "pair" else {"response": TEXT["response"]})


def reference_logprobs(hf, tokenizer, judge, r, root, continuations):
  """Summed log p of each continuation after the prompt, and log p(next token is not a digit) after it, by
  transformers' model on the full sequence."""
  text, visuals = judge.prepare(r, root)
  config = judge.model.config
  ids, _, _ = splice_markers([prompt_ids(tokenizer, text)], [item for item, _ in visuals], layout_config(config),
                             config.image_token_id, config.video_token_id)
  patches = max(len(p) for _, p in visuals)
  pixel_values = np.zeros((len(visuals), patches, *visuals[0][1].shape[1:]), np.float32)
  for i, (_, p) in enumerate(visuals):
    pixel_values[i, :len(p)] = p
  image_sizes = np.array([item.size for item, _ in visuals])
  digits = [tokenizer.token_to_id(str(d)) for d in range(10)]
  out, stops = [], []
  for text in continuations:
    cont = tokenizer.encode(text, add_special_tokens=False).ids
    full = torch.tensor([ids[0].tolist() + cont])
    with torch.no_grad():
      logits = hf(input_ids=full, pixel_values=torch.tensor(pixel_values), image_sizes=torch.tensor(image_sizes),
                  attention_mask=torch.ones_like(full)).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    start = ids.shape[1] - 1
    out.append(sum(float(logp[start + j, t]) for j, t in enumerate(cont)))
    stops.append(float(torch.log1p(-logp[-1, digits].exp().sum())))
  return np.array(out), np.array(stops)


def test_continuation_trie_shares_prefixes():
  trie = Continuations.build([[5, 6, 7], [5, 6, 8], [5, 9], [5]])
  np.testing.assert_array_equal(trie.tokens, [5, 6, 7, 8, 9])
  np.testing.assert_array_equal(trie.parents, [-1, 0, 1, 1, 0])
  np.testing.assert_array_equal(trie.ends, [2, 3, 4, 0])
  np.testing.assert_array_equal(trie.depth, [0, 1, 2, 2, 1])
  np.testing.assert_array_equal(trie.paths, [[1, 1, 1, 0, 0], [1, 1, 0, 1, 0], [1, 0, 0, 0, 1], [1, 0, 0, 0, 0]])
  assert trie.visible[3].tolist() == [True, True, False, True, False]
  with pytest.raises(ValueError, match="nothing"):
    Continuations.build([[1], []])


def test_pair_probabilities_equal_transformers(setup):
  hf, model, tokenizer, root = setup
  judge = Judge(model, tokenizer, "image_generation", "pair")
  r = row("image_generation", "pair")
  ours = judge.judge([r], root)[0]
  verdicts = prompts.template("image_generation", "pair").verdicts
  logp, _ = reference_logprobs(hf, tokenizer, judge, r, root, [verdicts[k] for k in (1, 2, 0)])
  want = np.exp(logp - logp.max())
  want /= want.sum()
  got = np.array([ours["probs"][k] for k in ("1", "2", "tie")])
  assert np.max(np.abs(got - want)) <= 1e-4, (got, want)
  got_logp = np.array([ours["logprobs"][k] for k in ("1", "2", "tie")])
  assert T.max_rel(got_logp, logp) <= T.FULL, (got_logp, logp)
  assert ours["winner"] == [1, 2, 0][int(np.argmax(want))]
  assert abs(got.sum() - 1) < 1e-6


def test_point_score_equals_transformers(setup):
  hf, model, tokenizer, root = setup
  judge = Judge(model, tokenizer, "image_generation", "point")
  r = row("image_generation", "point", first="a.png")
  ours = judge.judge([r], root)[0]
  values = np.arange(1, 6)
  logp, stop = reference_logprobs(hf, tokenizer, judge, r, root, [f"Final Score: {v}" for v in values])
  p = np.exp(logp + stop)
  assert abs(ours["score"] - np.dot(values, p) / p.sum()) <= 1e-4 * 5
  assert abs(ours["mass"] - p.sum()) <= 1e-4 * max(p.sum(), 1e-6) + 1e-9
  assert 1 <= ours["score"] <= 5


@pytest.mark.parametrize("task", prompts.TASKS)
@pytest.mark.parametrize("mode", prompts.MODES)
def test_every_task_and_mode_runs_both_methods(setup, task, mode):
  _, model, tokenizer, root = setup
  options = InputOptions(num_frames=3)
  rows = [row(task, mode), row(task, mode, first="c.png", second="a.png")]
  by_logits = Judge(model, tokenizer, task, mode, options=options, batch_size=2).judge(rows, root)
  by_text = Judge(model, tokenizer, task, mode, method="generate", max_new_tokens=6, options=options,
                  batch_size=2).judge(rows, root)
  low, high = prompts.template(task, mode).score_range or (0, 0)
  for logit_result, text_result in zip(by_logits, by_text):
    assert "error" not in logit_result and "error" not in text_result
    assert isinstance(text_result["text"], str)
    if mode == "pair":
      assert logit_result["winner"] in (0, 1, 2) and abs(sum(logit_result["probs"].values()) - 1) < 1e-6
      assert text_result["winner"] in (0, 1, 2, None)
    else:
      assert low <= logit_result["score"] <= high and 0 < logit_result["mass"] <= 1 + 1e-6
      assert text_result["score"] is None or isinstance(text_result["score"], float)


@pytest.mark.parametrize("task", ["image_generation", "image_understanding"])
def test_swap_debiasing_is_symmetric(setup, task):
  _, model, tokenizer, root = setup
  judge = Judge(model, tokenizer, task, "pair", swap=True)
  forward, backward = judge.judge([row(task, "pair"), row(task, "pair", first="b.jpg", second="a.png")]
                                  if task == "image_generation" else
                                  [row(task, "pair"), row(task, "pair") | {"responses": TEXT["responses"][::-1]}],
                                  root)
  assert forward["probs"]["1"] == backward["probs"]["2"] and forward["probs"]["2"] == backward["probs"]["1"]
  assert forward["probs"].get("tie") == backward["probs"].get("tie")
  plain = Judge(model, tokenizer, task, "pair").judge([row(task, "pair")], root)[0]
  assert plain["probs"] != forward["probs"]   # both orders really went in


def test_bad_rows_get_errors_and_the_rest_are_judged(setup):
  _, model, tokenizer, root = setup
  rows = [row("image_generation", "pair"), row("image_generation", "pair", second="missing.png"),
          row("image_generation", "pair") | {"prompt": "  "}, row("image_generation", "pair", first="broken.png"),
          {"prompt": "a red circle", "images": ["a.png"]}, row("image_generation", "pair", first="c.png")]
  results = Judge(model, tokenizer, "image_generation", "pair", batch_size=2).judge(rows, root)
  assert "error" not in results[0] and "error" not in results[5]
  assert "not found" in results[1]["error"] and "missing.png" in results[1]["error"]
  assert "'prompt'" in results[2]["error"]
  assert "broken.png" in results[3]["error"]
  assert "two" in results[4]["error"]
  # A row judged alongside bad ones is judged as it would be alone.
  alone = Judge(model, tokenizer, "image_generation", "pair", batch_size=2).judge([rows[5]], root)[0]
  assert alone["probs"] == pytest.approx(results[5]["probs"], abs=1e-6)


def test_bad_settings_are_refused(setup):
  _, model, tokenizer, _ = setup
  with pytest.raises(ValueError, match="method"):
    Judge(model, tokenizer, "image_generation", "pair", method="vote")
  with pytest.raises(ValueError, match="swap"):
    Judge(model, tokenizer, "image_generation", "point", swap=True)
  with pytest.raises(ValueError, match="image_editing"):
    Judge(model, tokenizer, "image_editing", "pair")
  with pytest.raises(ValueError, match="video_layout"):
    InputOptions(video_layout="tubes")
