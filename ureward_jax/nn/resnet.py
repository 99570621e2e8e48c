"""The convolutional blocks that diffusers' UNets and VAEs share, channels-last: a GroupNorm resnet block with an
optional time embedding, and the ×2 down- and up-samplers. Parameter names follow diffusers' state dict."""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from ureward_jax.errors import UserError
from ureward_jax.nn.linear import conv, dense
from ureward_jax.nn.norms import group_norm
from ureward_jax.parallel import constrain


class ResnetNames(NamedTuple):
  """The names of a resnet block's layers in its source's state dict."""
  norm1: str = "norm1"
  conv1: str = "conv1"
  time_emb_proj: str = "time_emb_proj"
  norm2: str = "norm2"
  conv2: str = "conv2"
  shortcut: str = "conv_shortcut"


# The openai / latent-diffusion `ResBlock` (VideoCrafter2): `nn.Sequential` indices, and `skip_connection`.
OPENAI_RESNET_NAMES = ResnetNames("in_layers_0", "in_layers_2", "emb_layers_1", "out_layers_0", "out_layers_3",
                                  "skip_connection")


class ResnetBlock2D(nn.Module):
  """GN → SiLU → conv3×3 (→ + Linear(SiLU(temb)) when given) → GN → SiLU → conv3×3, plus a 1×1 shortcut conv when
  the width changes; output_scale_factor 1, dropout off. x (B, H, W, C_in), temb (B, E) or None → (B, H, W, features).
  Layer names: diffusers' by default, or another source's (`names`)."""
  features: int
  groups: int
  eps: float
  names: ResnetNames = ResnetNames()
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, temb=None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    names = self.names
    x = checkpoint_name(x, "layer_input")
    h = jax.nn.silu(group_norm(self.groups, self.eps, name=names.norm1, **kw)(x))
    h = conv(self.features, 3, name=names.conv1, **kw)(h)
    if temb is not None:
      embed = dense(self.features, ("embed", "conv_out"), name=names.time_emb_proj, **kw)
      h = h + embed(jax.nn.silu(temb))[:, None, None]
    h = jax.nn.silu(group_norm(self.groups, self.eps, name=names.norm2, **kw)(h))
    h = conv(self.features, 3, name=names.conv2, **kw)(h)
    if x.shape[-1] != self.features:
      x = conv(self.features, 1, name=names.shortcut, **kw)(x)
    return constrain(x + h, ("batch", None, None, "act_embed"))


class Downsample2D(nn.Module):
  """A 3×3 stride-2 conv. (B, H, W, C) → (B, ⌈H/2⌉, ⌈W/2⌉, C) symmetric, (B, ⌊H/2⌋, ⌊W/2⌋, C) bottom-right.

  padding "symmetric": one zero on every side (the UNet; never Flax's one-sided "SAME"); "bottom_right": one zero
  row at the bottom and column at the right, then no padding (the VAE's `padding=0` variant).
  """
  padding: str = "symmetric"
  conv_name: str = "conv"   # the openai UNet's: "op"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.padding not in ("symmetric", "bottom_right"):
      raise UserError(f"unknown Downsample2D padding {self.padding!r}")
    if self.padding == "bottom_right":
      x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    pad = 1 if self.padding == "symmetric" else 0
    return conv(x.shape[-1], 3, stride=2, padding=pad, name=self.conv_name, dtype=self.dtype,
                param_dtype=self.param_dtype)(x)


class Upsample2D(nn.Module):
  """Nearest-neighbour ×2, then a 3×3 conv. (B, H, W, C) → (B, 2H, 2W, C)."""
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return conv(x.shape[-1], 3, name="conv", dtype=self.dtype, param_dtype=self.param_dtype)(x)
