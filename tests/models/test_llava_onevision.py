"""Parity of the Flax LLaVA-OneVision with transformers, through the real conversion and loading path (fp32)."""

import numpy as np
import pytest
import torch

import ureward_jax
from converters.llava_onevision import convert_folder
from tests import tiny_llava as T
from tests.tiny_llava import FULL, MODULE, image_inputs, random_text, reference_logits


@pytest.mark.parametrize("length", [640, 2200], ids=["640", "2200_chunked_attention"])
def test_long_text(pair, length):
  hf, ours = pair
  ids = np.array([random_text(np.random.RandomState(1), length)])
  assert T.max_rel(ours.forward(ids), reference_logits(hf, input_ids=ids)) <= FULL


@pytest.mark.parametrize("size", [(700, 700), (90, 260), (150, 100)], ids=["cap", "odd_aspect", "small"])
def test_single_image(pair, size):
  hf, ours = pair
  inputs = image_inputs(hf, [size])
  ref = reference_logits(hf, **inputs)
  assert T.max_rel(ours.forward(**inputs), ref) <= FULL


def test_cap_case_is_resized():
  """The 'cap' size above really takes the anyres_max_9 interpolation branch (4×4 tiles → 20×20 map)."""
  from ureward_jax.processing import anyres
  pinpoints = T.hf_config().image_grid_pinpoints
  (top, bottom, left, right), final = anyres.tiled_feature_shape((700, 700), pinpoints, T.TILE, 5, "anyres_max_9")
  assert (bottom - top, right - left) == (20, 20) and final == (15, 15)


def test_two_images_one_sample(pair):
  hf, ours = pair
  inputs = image_inputs(hf, [(100, 200), (210, 140)], batch_num_images=[2])
  assert T.max_rel(ours.forward(**inputs), reference_logits(hf, **inputs)) <= FULL


def test_two_tiled_images(pair):
  hf, ours = pair
  inputs = image_inputs(hf, [(100, 200), (210, 140)])
  assert T.max_rel(ours.forward(**inputs), reference_logits(hf, **inputs)) <= FULL


def test_video(pair):
  hf, ours = pair
  rng = np.random.RandomState(3)
  frames = 4
  videos = rng.randn(1, frames, 3, T.TILE, T.TILE).astype(np.float32)
  n_tokens = frames * 3 * 3 + 1   # 5×5 tokens pooled to ceil(5/2)² per frame, one newline
  ids = np.array([random_text(rng, 5) + [T.VIDEO_TOKEN] * n_tokens + random_text(rng, 6)])
  ref = reference_logits(hf, input_ids=ids, pixel_values_videos=videos)
  assert T.max_rel(ours.forward(input_ids=ids, pixel_values_videos=videos), ref) <= FULL


def test_left_padded_batch(pair):
  hf, ours = pair
  rng = np.random.RandomState(4)
  lengths = [30, 22]
  ids = np.zeros((2, 30), np.int64)
  mask = np.zeros((2, 30), np.int64)
  for row, n in enumerate(lengths):
    ids[row, 30 - n:] = random_text(rng, n)
    mask[row, 30 - n:] = 1
  positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
  ref = reference_logits(hf, input_ids=ids, attention_mask=mask, position_ids=positions)
  ours_logits = ours.forward(input_ids=ids, attention_mask=mask, position_ids=positions)
  real = mask.astype(bool)
  assert T.max_rel(ours_logits[real], ref[real]) <= FULL


def test_vision_tower_and_projector_modules(pair):
  """Per-module parity: SigLIP features (last kept layer, pre post-LN), last_hidden_state, projector."""
  hf, ours = pair
  pixels = np.random.RandomState(5).randn(3, 3, T.TILE, T.TILE).astype(np.float32)
  with torch.no_grad():
    out = hf.model.vision_tower(torch.tensor(pixels), output_hidden_states=True)
    ref_features = out.hidden_states[-1].numpy()
    ref_projected = hf.model.multi_modal_projector(out.hidden_states[-1]).numpy()
  params = {"params": ours.params}
  tower = ours.module.apply(params, pixels.transpose(0, 2, 3, 1),
                            method=lambda m, x: m.vision_tower(x))
  assert T.max_rel(tower["features"], ref_features) <= MODULE
  assert T.max_rel(tower["last_hidden_state"], out.last_hidden_state.numpy()) <= MODULE
  projected = ours.module.apply(params, pixels.transpose(0, 2, 3, 1), method="visual_features")
  assert T.max_rel(projected, ref_projected) <= MODULE


def test_language_model_module(pair):
  """Per-module parity of the Qwen2 stack's final hidden states on a long sequence (RoPE far from identity)."""
  import jax.numpy as jnp

  from ureward_jax.nn.attention import causal_mask
  hf, ours = pair
  ids = np.array([random_text(np.random.RandomState(6), 700)])
  with torch.no_grad():
    ref = hf.model.language_model(input_ids=torch.tensor(ids)).last_hidden_state.numpy()
  positions = np.arange(700)[None]

  def hidden(m, ids):
    lm = m.language_model
    out, _ = lm(lm.embed(ids), positions, causal_mask(jnp.arange(700), jnp.ones((1, 700), bool)),
                return_hidden=True)
    return out
  assert T.max_rel(ours.module.apply({"params": ours.params}, ids, method=hidden), ref) <= MODULE


def test_bf16_close_to_fp32(tmp_path):
  hf = T.hf_model(seed=2)
  convert_folder(T.save_hf(hf, tmp_path / "hf"), tmp_path / "ours", "float32")
  import jax.numpy as jnp
  fp32 = ureward_jax.load(tmp_path / "ours")
  bf16 = ureward_jax.load(tmp_path / "ours", dtype=jnp.bfloat16)
  inputs = image_inputs(hf, [(150, 220)], seed=7)
  err = T.max_rel(bf16.forward(**inputs), fp32.forward(**inputs))
  assert err <= 2e-2


def test_mismatched_inputs_are_explained(pair):
  hf, ours = pair
  inputs = image_inputs(hf, [(150, 100)])
  short = dict(inputs, input_ids=inputs["input_ids"][:, 3:-12])   # drops some image placeholders
  with pytest.raises(ValueError, match="image features and image tokens do not match"):
    ours.forward(**short)
  with pytest.raises(ValueError, match="needs image_sizes"):
    ours.forward(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"])
  with pytest.raises(ValueError, match="batch_num_images sums to 2 but 1 images"):
    ours.forward(**dict(inputs, batch_num_images=np.array([2])))
