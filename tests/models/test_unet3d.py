"""The video UNet port against diffusers: the temporal layers one by one and a tiny `UNet3DConditionModel`, fp32,
every parameter perturbed (the zero-initialised temporal conv4 and proj_out included)."""

import diffusers
import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
from diffusers.models.resnet import TemporalConvLayer as TorchTemporalConv
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel as TorchTemporalTransformer

from converters import sdxl
from tests.parity import max_rel
from ureward_jax.models import unet3d
from ureward_jax.nn.temporal import TemporalConvLayer, TransformerTemporalModel
from ureward_jax.runners.unet import UNet3D

# The ModelScope layout at toy width: GroupNorm-32, a cross-attention and a plain block each way, LCM's guidance
# embedding; attention_head_dim 8 → 4 and 8 heads in the blocks, 8 in the first temporal transformer.
TINY = dict(block_out_channels=(32, 64), layers_per_block=1, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), attention_head_dim=8, cross_attention_dim=16,
            norm_num_groups=32, time_cond_proj_dim=12)


def perturbed(module, seed):
  torch.manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return module.eval()


def params_of(module, shapes):
  return sdxl.params_from_tensors({k: v.numpy() for k, v in module.state_dict().items()}, nn.unbox(shapes))


def folded(video: torch.Tensor) -> np.ndarray:
  """(B, C, T, H, W) → our (B·T, H, W, C)."""
  b, c, t, h, w = video.shape
  return video.permute(0, 2, 3, 4, 1).reshape(b * t, h, w, c).numpy()


@pytest.mark.parametrize("frames", [3, 16])
def test_temporal_conv_layer_matches_diffusers(frames):
  ref = perturbed(TorchTemporalConv(32, 32, dropout=0.1, norm_num_groups=32), seed=0)
  x = torch.randn(2 * frames, 32, 5, 6, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    want = ref(x, num_frames=frames)
  module = TemporalConvLayer(groups=32)
  ours_in = x.permute(0, 2, 3, 1).numpy()
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), ours_in, frames))["params"]
  got = module.apply({"params": params_of(ref, shapes)}, ours_in, frames)
  assert max_rel(np.asarray(got).transpose(0, 3, 1, 2), want.numpy()) <= 1e-5


@pytest.mark.parametrize("heads,head_dim,frames", [(4, 8, 16), (8, 8, 3)])   # the block's width, and transformer_in's
def test_transformer_temporal_model_matches_diffusers(heads, head_dim, frames):
  ref = perturbed(TorchTemporalTransformer(heads, head_dim, in_channels=32, norm_num_groups=32,
                                           cross_attention_dim=16), seed=2)
  x = torch.randn(2 * frames, 32, 4, 5, generator=torch.Generator().manual_seed(3))
  with torch.no_grad():
    want = ref(x, num_frames=frames).sample
  module = TransformerTemporalModel(heads, head_dim, groups=32)
  ours_in = x.permute(0, 2, 3, 1).numpy()
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), ours_in, frames))["params"]
  with jax.default_matmul_precision("highest"):
    got = module.apply({"params": params_of(ref, shapes)}, ours_in, frames)
  assert max_rel(np.asarray(got).transpose(0, 3, 1, 2), want.numpy()) <= 1e-5


@pytest.fixture(scope="module")
def unet_pair():
  ref = perturbed(diffusers.UNet3DConditionModel(**TINY), seed=4)
  config = unet3d.UNet3DConditionConfig.from_dict(dict(ref.config))
  params = params_of(ref, unet3d.param_shapes(config))
  return ref, UNet3D.from_params(config, params)


# 16 frames: the temporal attentions' full clip; 32 × 32: 1,024 tokens in the first spatial transformer.
@pytest.mark.parametrize("frames,height,width", [(16, 8, 16), (2, 32, 32)])
def test_unet3d_matches_diffusers(unet_pair, frames, height, width):
  ref, ours = unet_pair
  g = torch.Generator().manual_seed(5)
  args = dict(sample=torch.randn(2, 4, frames, height, width, generator=g), timestep=torch.tensor([999, 279]),
              encoder_hidden_states=torch.randn(2, 7, 16, generator=g), timestep_cond=torch.randn(2, 12, generator=g))
  with torch.no_grad():
    want = ref(**args).sample.numpy()
  with jax.default_matmul_precision("highest"):
    got = ours.forward(**{k: v.numpy() for k, v in args.items()})
  assert got.shape == want.shape
  assert max_rel(got, want) <= 1e-4


def test_config_round_trip_and_refusals():
  config = unet3d.UNet3DConditionConfig.from_dict(dict(diffusers.UNet3DConditionModel(**TINY).config))
  assert config.attention_head_dim == 8 and config.time_cond_proj_dim == 12 and config.block_out_channels == (32, 64)
  assert unet3d.UNet3DConditionConfig.from_dict(config.to_dict()) == config
  with pytest.raises(ValueError, match="per-block attention_head_dim"):
    unet3d.UNet3DConditionConfig.from_dict({"attention_head_dim": [8, 16]})
  with pytest.raises(ValueError, match="down_block_types"):
    unet3d.UNet3DConditionConfig.from_dict({"down_block_types": ["CrossAttnDownBlock2D"]})
  with pytest.raises(ValueError, match="act_fn"):
    unet3d.UNet3DConditionConfig.from_dict({"act_fn": "gelu"})
  module = unet3d.UNet3DConditionModel(config)
  params = unet3d.init_params(config, jax.random.key(0))
  x = np.zeros((1, 2, 8, 8, 4), np.float32)
  with pytest.raises(ValueError, match="timestep_cond exactly when"):
    module.apply({"params": params}, x, 1.0, np.zeros((1, 3, 16), np.float32))
  with pytest.raises(ValueError, match="multiple of 2"):
    module.apply({"params": params}, x[:, :, :7], 1.0, np.zeros((1, 3, 16), np.float32), np.zeros((1, 12)))
