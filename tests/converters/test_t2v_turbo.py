"""The VideoCrafter2 / T2V-Turbo converter. The OpenCLIP text tower: its checkpoint tensors become our CLIP text
encoder, whose "penultimate" output equals the re-statement of VideoCrafter2's embedder, and export restores every
tensor bit for bit."""

import numpy as np
import pytest
import torch

from converters import t2v_turbo
from converters.common import ConversionError
from tests.parity import max_rel
from tests.video_reference import OpenCLIPText
from ureward_jax.models import clip_text

PREFIX = "cond_stage_model.model."


@pytest.fixture(scope="module")
def openclip():
  torch.manual_seed(0)
  model = OpenCLIPText(vocab_size=1000, width=128, layers=3, embed_dim=96).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  tensors = {PREFIX + k: v.numpy() for k, v in model.state_dict().items()}
  return model, tensors


def token_ids(batch, lengths, vocab=1000):
  """open_clip.tokenize's layout: start 49406-like id, tokens, end id, zeros after (here within the toy vocab)."""
  rng = np.random.default_rng(0)
  ids = np.zeros((batch, 77), np.int64)
  for row, n in enumerate(lengths):
    ids[row, 0], ids[row, 1:n + 1], ids[row, n + 1] = vocab - 2, rng.integers(1, vocab - 2, n), vocab - 1
  return ids


def test_openclip_text_tower_converts_and_matches_the_penultimate_embedder(openclip):
  model, tensors = openclip
  config, params = t2v_turbo.openclip_text_params(tensors, PREFIX)
  assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.projection_dim) == \
      (128, 3, 2, 96)
  ids = token_ids(3, [5, 40, 75])   # the last fills the context
  with torch.no_grad():
    want = model.penultimate(torch.from_numpy(ids)).numpy()
  got = clip_text.CLIPTextModel(config).apply({"params": params}, ids.astype(np.int32),
                                               output_hidden_states=True)["penultimate_normed"]
  assert max_rel(got, want) <= 1e-5


def test_openclip_text_export_is_bit_exact_and_failures_name_the_tensor(openclip):
  _, tensors = openclip
  config, params = t2v_turbo.openclip_text_params(tensors, PREFIX)
  back = t2v_turbo.export_openclip_text(params, config, PREFIX)
  assert set(back) == set(tensors) - {PREFIX + "logit_scale"}
  assert all(np.array_equal(back[k], tensors[k]) for k in back)

  broken = {k: v for k, v in tensors.items() if not k.endswith("resblocks.1.mlp.c_fc.bias")}
  with pytest.raises(ConversionError, match=r"missing tensor 'cond_stage_model.model.transformer.resblocks.1.mlp.c_fc.bias'"):
    t2v_turbo.openclip_text_params(broken, PREFIX)
  extra = {**tensors, PREFIX + "transformer.resblocks.0.attn.extra": np.zeros(3, np.float32)}
  with pytest.raises(ConversionError, match=r"unexpected tensors.*'cond_stage_model.model.transformer.resblocks.0.attn.extra'"):
    t2v_turbo.openclip_text_params(extra, PREFIX)
  wrong = {**tensors, PREFIX + "transformer.resblocks.2.attn.in_proj_weight": np.zeros((3 * 128, 64), np.float32)}
  with pytest.raises(ConversionError, match=r"'cond_stage_model.model.transformer.resblocks.2.attn.in_proj_weight \(k rows\)' has shape"):
    t2v_turbo.openclip_text_params(wrong, PREFIX)
  with pytest.raises(ConversionError, match="not an OpenCLIP text tower"):
    t2v_turbo.openclip_text_params(tensors, "model.")
