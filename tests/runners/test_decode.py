"""Greedy decoding equals transformers' `generate` token for token; sampling honours its settings."""

import numpy as np
import pytest
import torch

from tests import tiny_llava as T
from tests.tiny_llava import image_inputs

NEW = 24
PAD = 0


def hf_generate(hf, eos=None, **inputs):
  torch_inputs = {k: torch.tensor(v) for k, v in inputs.items() if v is not None}
  with torch.no_grad():
    out = hf.generate(**torch_inputs, max_new_tokens=NEW, do_sample=False, eos_token_id=eos, pad_token_id=PAD)
  return out[:, inputs["input_ids"].shape[1]:].numpy()


def _pad_to(new):
  return np.pad(new, ((0, 0), (0, NEW - new.shape[1])), constant_values=PAD)


def test_greedy_text(pair):
  hf, ours = pair
  ids = np.random.RandomState(0).randint(1, T.IMAGE_TOKEN, (1, 50))
  ref = hf_generate(hf, input_ids=ids, attention_mask=np.ones_like(ids))
  np.testing.assert_array_equal(ours.generate(ids, max_new_tokens=NEW), _pad_to(ref))


def test_greedy_image(pair):
  hf, ours = pair
  inputs = image_inputs(hf, [(300, 200)], seed=5)
  inputs["attention_mask"] = np.ones_like(inputs["input_ids"])
  ref = hf_generate(hf, **inputs)
  np.testing.assert_array_equal(ours.generate(**inputs, max_new_tokens=NEW), _pad_to(ref))


def test_greedy_left_padded_batch_with_end_token(pair):
  hf, ours = pair
  rng = np.random.RandomState(2)
  ids = np.full((2, 40), PAD)
  mask = np.zeros((2, 40), np.int64)
  ids[0], mask[0] = rng.randint(1, T.IMAGE_TOKEN, 40), 1
  ids[1, 15:], mask[1, 15:] = rng.randint(1, T.IMAGE_TOKEN, 25), 1
  # An end token that the first row produces mid-way, so one row stops early and is padded.
  free = hf_generate(hf, input_ids=ids, attention_mask=mask)
  eos = int(free[0, NEW // 2])
  ref = hf_generate(hf, eos=eos, input_ids=ids, attention_mask=mask)
  ours_tokens = ours.generate(ids, mask, max_new_tokens=NEW, eos_token_id=eos, pad_token_id=PAD)
  np.testing.assert_array_equal(ours_tokens, _pad_to(ref))
  assert (ours_tokens[0] == eos).any()


def test_sampling_is_seeded_and_respects_top_k(pair):
  _, ours = pair
  ids = np.random.RandomState(3).randint(1, T.IMAGE_TOKEN, (2, 12))
  kw = dict(max_new_tokens=16, temperature=1.0, seed=7)
  a, b = ours.generate(ids, **kw), ours.generate(ids, **kw)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, ours.generate(ids, **{**kw, "seed": 8}))
  greedy = ours.generate(ids, max_new_tokens=1)
  np.testing.assert_array_equal(ours.generate(ids, max_new_tokens=1, temperature=1.0, top_k=1, seed=3), greedy)
  np.testing.assert_array_equal(ours.generate(ids, max_new_tokens=1, temperature=5.0, top_p=1e-6, seed=4), greedy)


def test_bad_settings_are_refused(pair):
  _, ours = pair
  with pytest.raises(ValueError, match="max_new_tokens"):
    ours.generate(np.ones((1, 3), np.int64), max_new_tokens=0)
