"""The temporal layers of video UNets (ModelScope / diffusers `UNet3DConditionModel`, VideoCrafter2), channels-last
on frames folded into the batch: x (B·T, H, W, C), frame-major within each video, with `num_frames` = T.

`TemporalConvLayer`: 4 × [GroupNorm, SiLU, (dropout), Conv3d kernel (3, 1, 1) over time] plus the input.
`TransformerTemporalModel`: GroupNorm over (T, H, W, C/G), then every pixel's T frames as a sequence through
transformer blocks whose both attentions are self-attention (no positional encoding), plus the input.
Names follow diffusers' state dicts (`conv1_0`, `conv2_3`, `proj_in`, `transformer_blocks_0`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from ureward_jax.errors import UserError
from ureward_jax.nn.linear import dense, logical
from ureward_jax.nn.norms import group_norm
from ureward_jax.nn.remat import remat
from ureward_jax.nn.spatial_transformer import BasicTransformerBlock
from ureward_jax.parallel import constrain


def _frames(x: jax.Array, num_frames: int) -> jax.Array:
  """(B·T, H, W, C) → (B, T, H, W, C)."""
  if x.shape[0] % num_frames:
    raise ValueError(f"{x.shape[0]} rows are not whole videos of {num_frames} frames")
  return x.reshape(x.shape[0] // num_frames, num_frames, *x.shape[1:])


class TemporalConvLayer(nn.Module):
  """x (B·T, H, W, C) → x + conv4(conv3(conv2(conv1(x)))), each conv_i = GN (eps 1e-5) → SiLU → Conv3d (3, 1, 1)
  zero-padded in time; sub-module names are the source `nn.Sequential` indices. conv2–4 drop activations before
  their convolution with probability `dropout` (index 2) unless `deterministic` (evaluation); the rng stream is
  "dropout". Both sources use 0.1."""
  groups: int
  dropout: float = 0.1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, num_frames: int, deterministic: bool = True):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = checkpoint_name(x, "layer_input")
    video = _frames(x, num_frames)
    h = video
    for i, conv_index in enumerate((2, 3, 3, 3), start=1):
      h = jax.nn.silu(group_norm(self.groups, 1e-5, name=f"conv{i}_0", **kw)(h))
      if i > 1:
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
      h = nn.Conv(video.shape[-1], (3, 1, 1), padding=((1, 1), (0, 0), (0, 0)), name=f"conv{i}_{conv_index}",
                  kernel_init=logical(nn.initializers.lecun_normal(), (None, None, None, "conv_in", "conv_out")),
                  bias_init=logical(nn.initializers.zeros, ("conv_out",)), **kw)(h)
    return constrain((video + h).reshape(x.shape), ("batch", None, None, "act_embed"))


class TransformerTemporalModel(nn.Module):
  """x (B·T, H, W, C) → x + proj_out(blocks(proj_in(GN(x)))) with attention across the T frames of each pixel.

  heads × head_dim is the blocks' width (the projections map C to it and back). `projection` "linear" (diffusers,
  VideoCrafter2's block transformers) or "conv1d" (VideoCrafter2's first one: Conv1d with kernel 1, the same map
  stored as a (1, C_in, C_out) kernel).
  """
  heads: int
  head_dim: int
  groups: int
  depth: int = 1
  projection: str = "linear"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: str = "none"
  attention_backend: str = "xla"

  @nn.compact
  def __call__(self, x, num_frames: int):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if self.projection not in ("linear", "conv1d"):
      raise UserError(f"unknown TransformerTemporalModel projection {self.projection!r}")
    video = _frames(x, num_frames)
    batch, frames, height, width, channels = video.shape
    h = group_norm(self.groups, 1e-6, name="norm", **kw)(video)
    h = h.transpose(0, 2, 3, 1, 4).reshape(batch * height * width, frames, channels)   # each pixel's frames
    h = self._project(self.heads * self.head_dim, "proj_in", ("embed", "embed_out"), kw)(h)
    block = remat(BasicTransformerBlock, self.remat)
    for i in range(self.depth):
      h = block(self.heads, attention_backend=self.attention_backend, name=f"transformer_blocks_{i}", **kw)(h, None)
    h = self._project(channels, "proj_out", ("embed_out", "embed"), kw)(h)
    h = h.reshape(batch, height, width, frames, channels).transpose(0, 3, 1, 2, 4).reshape(x.shape)
    return h + x

  def _project(self, features, name, axes, kw):
    if self.projection == "linear":
      return dense(features, axes, name=name, **kw)
    return nn.Conv(features, (1,), padding="VALID", name=name,
                   kernel_init=logical(nn.initializers.lecun_normal(), (None, *axes)),
                   bias_init=logical(nn.initializers.zeros, axes[-1:]), **kw)
