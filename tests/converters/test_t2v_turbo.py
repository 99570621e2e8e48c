"""The VideoCrafter2 / T2V-Turbo converter. The OpenCLIP text tower: its checkpoint tensors become our CLIP text
encoder, whose "penultimate" output equals the re-statement of VideoCrafter2's embedder, and export restores every
tensor bit for bit. The latent-diffusion VAE: our names for it are the ones diffusers' own conversion reads, and
they round-trip. (The UNet's tensors: tests/models/test_videocrafter.py.)"""

import diffusers
import jax
import numpy as np
import pytest
import torch
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

from converters import sdxl, t2v_turbo
from converters.common import ConversionError
from tests.parity import max_rel
from tests.video_reference import OpenCLIPText
from ureward_jax.models import clip_text, vae

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


def test_ldm_vae_names_match_diffusers_conversion_and_round_trip():
  torch.manual_seed(1)
  ref = diffusers.AutoencoderKL(block_out_channels=(32, 64), layers_per_block=2, norm_num_groups=32,
                                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
  theirs = {k: v.numpy() for k, v in ref.state_dict().items()}
  config = vae.AutoencoderKLConfig.from_dict(dict(ref.config))
  params = sdxl.params_from_tensors(theirs, vae.param_shapes(config))
  ldm = t2v_turbo.export_vae(params, config)
  assert "first_stage_model.decoder.up.1.block.2.nin_shortcut.weight" not in ldm   # same width: no shortcut
  assert ldm["first_stage_model.encoder.down.1.block.0.nin_shortcut.weight"].shape == (64, 32, 1, 1)
  assert ldm["first_stage_model.decoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)
  # diffusers' own latent-diffusion conversion reads our names back into its state dict exactly.
  back = convert_ldm_vae_checkpoint({k: torch.from_numpy(v) for k, v in ldm.items()}, dict(ref.config))
  assert set(back) == set(theirs)
  assert all(np.array_equal(back[k].numpy().reshape(theirs[k].shape), theirs[k]) for k in theirs)
  again = t2v_turbo.vae_params(ldm, config)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(params)))
  assert all(np.array_equal(v, ldm[k]) for k, v in t2v_turbo.export_vae(again, config).items())
  with pytest.raises(ConversionError, match="not a latent-diffusion VAE"):
    t2v_turbo.vae_params(ldm, config, prefix="vae.")
