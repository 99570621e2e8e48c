"""Parity of the Flax CLIP text encoders (SDXL's text_encoder and text_encoder_2) with transformers, fp32."""

import jax
import numpy as np
import pytest
import torch
import transformers

from converters.sdxl import params_from_tensors
from tests.parity import max_rel
from ureward_jax.models.clip_text import CLIPTextConfig, eos_positions, param_shapes
from ureward_jax.runners.clip_text import CLIPTextEncoder

TOL = 1e-5
LENGTH = 77
EOS = 500          # the current convention: the first occurrence of this id is pooled
LEGACY_EOS = 2     # the legacy one: the (first) largest id of each row is pooled


def full_ids() -> np.ndarray:
  """Two full-length rows on which the two EOS rules pick different tokens.

  Row 0: the largest id 999 at 7 and 50, `EOS` at 12 and 40. Row 1: 999 only at 30, `EOS` only at the last slot.
  """
  ids = np.random.RandomState(0).randint(3, 999, size=(2, LENGTH))
  ids[ids == EOS] = EOS + 1
  ids[0, [7, 50]] = 999
  ids[0, [12, 40]] = EOS
  ids[1, 30] = 999
  ids[1, LENGTH - 1] = EOS
  return ids


FULL_POOLED = {LEGACY_EOS: [7, 30], EOS: [12, LENGTH - 1]}


def padded_ids(eos: int) -> tuple[np.ndarray, np.ndarray]:
  """Row 0 right-padded after 20 tokens (as the CLIP tokenizer pads), row 1 left-padded by 30 (its first queries
  see no key at all); pad id 1, bos 0, a 999 before each EOS so that the legacy rule pools a real token too."""
  rng = np.random.RandomState(1)
  ids = np.ones((2, LENGTH), np.int64)
  mask = np.zeros((2, LENGTH), np.int64)
  for row, (start, stop) in enumerate([(0, 20), (30, LENGTH)]):
    ids[row, start:stop] = rng.randint(3, EOS, size=stop - start)
    ids[row, start], ids[row, stop - 2], ids[row, stop - 1] = 0, 999, eos
    mask[row, start:stop] = 1
  return ids, mask


# SDXL's text_encoder (with its legacy EOS id) and text_encoder_2 (here with the current EOS convention).
CASES = {
    "vit_l_quick_gelu_legacy_eos": ("quick_gelu", False, LEGACY_EOS),
    "bigg_gelu_projection_eos": ("gelu", True, EOS),
}


@pytest.fixture(scope="module", params=list(CASES))
def pair(request):
  """(perturbed tiny transformers encoder, ours converted from its state dict)."""
  act, projection, eos = CASES[request.param]
  hf_config = transformers.CLIPTextConfig(
      vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=5, num_attention_heads=4,
      max_position_embeddings=LENGTH, projection_dim=24, hidden_act=act, layer_norm_eps=1e-5, bos_token_id=0,
      pad_token_id=1, eos_token_id=eos, attn_implementation="eager")
  torch.manual_seed(0)
  cls = transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel
  hf = cls(hf_config).eval()
  with torch.no_grad():
    for p in hf.parameters():   # LayerNorms start at exactly 1 and 0, biases at 0: move every one of them
      p.add_(0.02 * torch.randn_like(p))
  tensors = {k: v.numpy() for k, v in hf.state_dict().items()}
  if not projection:   # transformers 5 names a bare CLIPTextModel's tensors without the checkpoint files' prefix
    tensors = {f"text_model.{k}": v for k, v in tensors.items()}
  config = CLIPTextConfig.from_dict({**hf_config.to_dict(), "with_projection": projection})
  params = params_from_tensors(tensors, param_shapes(config), ignore=(r"position_ids$",))
  return hf, CLIPTextEncoder.from_params(config, params)


def compare(hf, ours, ids, mask=None) -> dict:
  """Our outputs for (ids, mask), after checking every one against transformers'."""
  projection = ours.config.with_projection
  kwargs = dict(attention_mask=None if mask is None else torch.from_numpy(mask))
  with torch.no_grad():
    ref = hf(torch.from_numpy(ids), output_hidden_states=True, **kwargs)
    # The projection variant's output has no pooler_output: take it from its inner CLIPTextModel.
    pooled = (hf.text_model(torch.from_numpy(ids), **kwargs) if projection else ref).pooler_output
    # transformers 5's plain CLIPTextModel is its text transformer (no `text_model` attribute).
    penultimate_normed = (hf.text_model if projection else hf).final_layer_norm(ref.hidden_states[-2])
  with jax.default_matmul_precision("highest"):
    out = ours.forward(ids, mask, output_hidden_states=True)
  assert set(out) == {"last_hidden_state", "pooler_output", "hidden_states", "penultimate_normed"} | (
      {"text_embeds"} if projection else set())
  assert len(out["hidden_states"]) == len(ref.hidden_states) == ours.config.num_hidden_layers + 1
  errors = {"last_hidden_state": max_rel(out["last_hidden_state"], ref.last_hidden_state),
            "pooler_output": max_rel(out["pooler_output"], pooled),
            "penultimate_normed": max_rel(out["penultimate_normed"], penultimate_normed)}
  if projection:
    errors["text_embeds"] = max_rel(out["text_embeds"], ref.text_embeds)
  errors |= {f"hidden_states[{i}]": max_rel(a, b) for i, (a, b) in enumerate(zip(out["hidden_states"],
                                                                                 ref.hidden_states))}
  assert all(e <= TOL for e in errors.values()), errors
  return out


def test_full_length_batch(pair):
  hf, ours = pair
  ids = full_ids()
  out = compare(hf, ours, ids)
  expected = FULL_POOLED[ours.config.eos_token_id]
  np.testing.assert_array_equal(np.asarray(eos_positions(ids, ours.config.eos_token_id)), expected)
  np.testing.assert_array_equal(out["pooler_output"], out["last_hidden_state"][[0, 1], expected])
  # The penultimate entry, which SDXL reads, is a block's output before the final LayerNorm.
  assert max_rel(out["hidden_states"][-2], out["last_hidden_state"]) > 0.1


def test_padding_mask(pair):
  hf, ours = pair
  ids, mask = padded_ids(ours.config.eos_token_id)
  out = compare(hf, ours, ids, mask)
  unmasked = ours.forward(ids, output_hidden_states=True)["last_hidden_state"]
  # Right padding changes only the padded queries; left padding changes every position.
  np.testing.assert_allclose(out["last_hidden_state"][0, :20], unmasked[0, :20], rtol=0, atol=1e-5)
  assert max_rel(out["last_hidden_state"][0, 20:], unmasked[0, 20:]) > 1e-2
  assert max_rel(out["last_hidden_state"][1, 30:], unmasked[1, 30:]) > 1e-2


def test_outputs_only_when_asked(pair):
  _, ours = pair
  assert ("text_projection" in ours.params) == ours.config.with_projection
  out = jax.eval_shape(lambda p, i: ours.module.apply({"params": p}, i), ours.params, full_ids()[:1, :9])
  assert set(out) == {"last_hidden_state", "pooler_output"} | ({"text_embeds"} if ours.config.with_projection else set())
  assert out["last_hidden_state"].shape == (1, 9, 32) and out["pooler_output"].shape == (1, 32)
  with pytest.raises(ValueError, match="exceeds max_position_embeddings"):
    jax.eval_shape(lambda p, i: ours.module.apply({"params": p}, i), ours.params, np.zeros((1, LENGTH + 1), np.int32))


def test_config_from_dict():
  config = CLIPTextConfig.from_dict({"architectures": ["CLIPTextModelWithProjection"], "hidden_act": "gelu",
                                     "hidden_size": 1280, "num_attention_heads": 20, "torch_dtype": "float16"})
  assert config.with_projection and config.head_dim == 64
  assert not CLIPTextConfig.from_dict({"architectures": ["CLIPTextModel"]}).with_projection
  assert CLIPTextConfig.from_dict(config.to_dict()) == config
  with pytest.raises(ValueError, match=r"hidden_act 'relu' is not supported.*quick_gelu"):
    CLIPTextConfig.from_dict({"hidden_act": "relu"})
