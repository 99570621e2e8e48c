"""The SDXL VAE (diffusers `AutoencoderKL`) in Flax, channels-last inside.

Encoder: conv_in → down blocks (resnets, then a stride-2 conv on a bottom/right-padded input) → mid block (resnet,
single-head self-attention over the H·W positions, resnet) → GroupNorm → SiLU → conv_out to 2 · latent channels →
`quant_conv` (1×1), split into the mean and log-variance of a diagonal Gaussian. Decoder: `post_quant_conv` (1×1) →
conv_in → mid block → up blocks (one more resnet than the encoder's, then nearest ×2 and a 3×3 conv) → GroupNorm →
SiLU → conv_out. No time embedding anywhere; every GroupNorm has diffusers' hard-coded eps of 1e-6 (it is not a
config key), the mid-block attention's included.

Names mirror diffusers' state dict (`encoder/down_blocks_0/resnets_1/conv1`, `decoder/up_blocks_0/upsamplers_0/conv`,
`encoder/mid_block/attentions_0/to_out_0`), so the converter derives its table from the parameter tree.

As in diffusers, `scaling_factor` (and `shift_factor`) is NOT applied by `encode` or `decode`: a diffusion model's
latent is `(encode(x) - shift) · scaling_factor`, and it is decoded as `decode(z / scaling_factor + shift)`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from ureward_jax.errors import UserError
from ureward_jax.nn.attention import dot_product_attention
from ureward_jax.nn.linear import conv, dense
from ureward_jax.nn.norms import group_norm
from ureward_jax.nn.resnet import Downsample2D, ResnetBlock2D, Upsample2D

# diffusers' Encoder and Decoder pass eps=1e-6 to every GroupNorm (resnets, mid attention, conv_norm_out).
NORM_EPS = 1e-6
# DiagonalGaussianDistribution clamps the log-variance to this range.
LOGVAR_RANGE = (-30.0, 20.0)
_DOWN = "DownEncoderBlock2D"
_UP = "UpDecoderBlock2D"


@dataclasses.dataclass(frozen=True)
class AutoencoderKLConfig:
  """The SDXL VAE's defaults (`stabilityai/stable-diffusion-xl-base-1.0/vae/config.json`).

  Every down block is a `DownEncoderBlock2D` and every up block an `UpDecoderBlock2D`, one per entry of
  `block_out_channels`; `from_dict` refuses anything else. `latents_mean` / `latents_std` are carried for the
  pipelines that use them (SDXL does not); the model never reads them, nor `scaling_factor` / `shift_factor`.
  """
  in_channels: int = 3
  out_channels: int = 3
  latent_channels: int = 4
  block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
  layers_per_block: int = 2
  norm_num_groups: int = 32
  act_fn: str = "silu"
  sample_size: int | tuple[int, ...] = 1024
  scaling_factor: float = 0.13025
  shift_factor: float | None = None
  latents_mean: tuple[float, ...] | None = None
  latents_std: tuple[float, ...] | None = None
  force_upcast: bool = True
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  mid_block_add_attention: bool = True

  @property
  def downsample_factor(self) -> int:
    """Pixels per latent position along each side (8 for SDXL)."""
    return 2 ** (len(self.block_out_channels) - 1)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "AutoencoderKLConfig":
    """From a diffusers `vae/config.json` dict (or `AutoencoderKL.config`); unknown keys are ignored, every option
    this port does not implement is refused with a ValueError naming it."""
    if d.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
      raise UserError(f"a {d['_class_name']} config is not an AutoencoderKL config")
    blocks = len(d.get("block_out_channels", cls.block_out_channels))
    for key, allowed in (("down_block_types", _DOWN), ("up_block_types", _UP)):
      kinds = list(d.get(key, [allowed] * blocks))
      # get_down_block / get_up_block read "UNetResX" as "X".
      bad = [k for k in kinds if k.removeprefix("UNetRes") != allowed]
      if bad:
        raise UserError(f"VAE {key} {bad} are not supported; only {allowed!r} blocks are implemented")
      if len(kinds) != blocks:
        raise UserError(f"VAE {key} has {len(kinds)} entries but block_out_channels has {blocks}")
    if d.get("act_fn", "silu") != "silu":
      raise UserError(f"VAE act_fn {d['act_fn']!r} is not supported (only 'silu' is implemented)")
    if d.get("norm_type", "group") != "group":
      raise UserError(f"VAE norm_type {d['norm_type']!r} is not supported (only 'group' GroupNorm is implemented)")
    if not isinstance(d.get("layers_per_block", 2), int):
      raise UserError("a per-block layers_per_block list is not supported; expected one integer")
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in fields}
    config = cls(**kwargs)
    odd = [c for c in config.block_out_channels if c % config.norm_num_groups]
    if odd:
      raise UserError(f"VAE block_out_channels {odd} are not divisible by norm_num_groups={config.norm_num_groups}")
    return config

  def to_dict(self) -> dict[str, Any]:
    """The diffusers `config.json` fields, block types included."""
    d = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
    blocks = len(self.block_out_channels)
    d.update(_class_name="AutoencoderKL", down_block_types=[_DOWN] * blocks, up_block_types=[_UP] * blocks)
    return d


# VideoCrafter2's VAE, latent-diffusion's AutoencoderKL: ddconfig ch 128, ch_mult (1, 2, 4, 4), 2 res blocks, z 4;
# scale_factor 0.18215.
LDM_VAE = AutoencoderKLConfig(block_out_channels=(128, 256, 512, 512), scaling_factor=0.18215, sample_size=512,
                              force_upcast=False)


class Attention(nn.Module):
  """The mid block's self-attention: GN → q, k, v (with biases) → one head as wide as the channels over the H·W
  positions → `to_out_0` → + input. x (B, H, W, C) → (B, H, W, C)."""
  groups: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_backend: str = "xla"

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    batch, height, width, channels = x.shape
    x = checkpoint_name(x, "layer_input")
    h = group_norm(self.groups, NORM_EPS, name="group_norm", **kw)(x).reshape(batch, height * width, 1, channels)
    q = checkpoint_name(dense(channels, ("embed", "heads"), name="to_q", **kw)(h), "query_proj")
    k = checkpoint_name(dense(channels, ("embed", "heads"), name="to_k", **kw)(h), "key_proj")
    v = checkpoint_name(dense(channels, ("embed", "heads"), name="to_v", **kw)(h), "value_proj")
    out = dot_product_attention(q, k, v, backend=self.attention_backend)
    out = dense(channels, ("heads", "embed"), name="to_out_0", **kw)(out.reshape(batch, height * width, channels))
    return checkpoint_name(out, "attention_out").reshape(x.shape) + x


class _Block(nn.Module):
  """A `DownEncoderBlock2D` (resnets, then an optional `downsamplers_0`) or an `UpDecoderBlock2D` (resnets, then an
  optional `upsamplers_0`). (B, H, W, C_in) → (B, H', W', features)."""
  features: int
  num_resnets: int
  resample: bool
  up: bool
  groups: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for j in range(self.num_resnets):
      x = ResnetBlock2D(self.features, self.groups, NORM_EPS, name=f"resnets_{j}", **kw)(x)
    if self.resample:
      x = Upsample2D(name="upsamplers_0", **kw)(x) if self.up else \
          Downsample2D("bottom_right", name="downsamplers_0", **kw)(x)
    return x


class _MidBlock(nn.Module):
  """`UNetMidBlock2D`: resnet → attention (unless `add_attention` is off) → resnet, all at the same width."""
  groups: int
  add_attention: bool
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_backend: str = "xla"

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = ResnetBlock2D(x.shape[-1], self.groups, NORM_EPS, name="resnets_0", **kw)(x)
    if self.add_attention:
      x = Attention(self.groups, attention_backend=self.attention_backend, name="attentions_0", **kw)(x)
    return ResnetBlock2D(x.shape[-1], self.groups, NORM_EPS, name="resnets_1", **kw)(x)


class Encoder(nn.Module):
  """pixels (B, H, W, C_in) → the Gaussian's moments (B, H/f, W/f, 2 · latent_channels), before `quant_conv`."""
  config: AutoencoderKLConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_backend: str = "xla"

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    groups, last = cfg.norm_num_groups, len(cfg.block_out_channels) - 1
    x = conv(cfg.block_out_channels[0], 3, name="conv_in", **kw)(x)
    for i, features in enumerate(cfg.block_out_channels):
      x = _Block(features, cfg.layers_per_block, resample=i < last, up=False, groups=groups,
                 name=f"down_blocks_{i}", **kw)(x)
    x = _MidBlock(groups, cfg.mid_block_add_attention, attention_backend=self.attention_backend, name="mid_block",
                  **kw)(x)
    x = jax.nn.silu(group_norm(groups, NORM_EPS, name="conv_norm_out", **kw)(x))
    return conv(2 * cfg.latent_channels, 3, name="conv_out", **kw)(x)


class Decoder(nn.Module):
  """latents (B, h, w, latent_channels), after `post_quant_conv` → pixels (B, h·f, w·f, C_out)."""
  config: AutoencoderKLConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_backend: str = "xla"

  @nn.compact
  def __call__(self, z):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    groups, last = cfg.norm_num_groups, len(cfg.block_out_channels) - 1
    x = conv(cfg.block_out_channels[-1], 3, name="conv_in", **kw)(z)
    x = _MidBlock(groups, cfg.mid_block_add_attention, attention_backend=self.attention_backend, name="mid_block",
                  **kw)(x)
    for i, features in enumerate(reversed(cfg.block_out_channels)):
      x = _Block(features, cfg.layers_per_block + 1, resample=i < last, up=True, groups=groups,
                 name=f"up_blocks_{i}", **kw)(x)
    x = jax.nn.silu(group_norm(groups, NORM_EPS, name="conv_norm_out", **kw)(x))
    return conv(cfg.out_channels, 3, name="conv_out", **kw)(x)


class AutoencoderKL(nn.Module):
  """The VAE; everything channels-last. Params: `encoder/...`, `decoder/...`, and when enabled `quant_conv`,
  `post_quant_conv`.

  `encode(pixels)`: pixels (B, H, W, in_channels) in [-1, 1] → (mean, logvar), each (B, H/f, W/f, latent_channels)
  in fp32 with logvar clamped to [-30, 20] (f = `config.downsample_factor`; each stride-2 step floors odd sizes,
  as in diffusers).
  `decode(latents)`: (B, h, w, latent_channels), unscaled → pixels (B, h·f, w·f, out_channels) in fp32.
  `__call__(pixels)`: decode(mean), which touches every parameter (for `init`).
  """
  config: AutoencoderKLConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_backend: str = "xla"

  def setup(self):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    parts = dict(attention_backend=self.attention_backend, **kw)
    self.encoder = Encoder(cfg, **parts)
    self.decoder = Decoder(cfg, **parts)
    if cfg.use_quant_conv:
      self.quant_conv = conv(2 * cfg.latent_channels, 1, name="quant_conv", **kw)
    if cfg.use_post_quant_conv:
      self.post_quant_conv = conv(cfg.latent_channels, 1, name="post_quant_conv", **kw)

  def encode(self, pixels: jax.Array) -> tuple[jax.Array, jax.Array]:
    moments = self.encoder(pixels.astype(self.dtype))
    if self.config.use_quant_conv:
      moments = self.quant_conv(moments)
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    return mean, jnp.clip(logvar, *LOGVAR_RANGE)

  def decode(self, latents: jax.Array) -> jax.Array:
    z = latents.astype(self.dtype)
    if self.config.use_post_quant_conv:
      z = self.post_quant_conv(z)
    return self.decoder(z).astype(jnp.float32)

  def __call__(self, pixels: jax.Array) -> jax.Array:
    mean, _ = self.encode(pixels)
    return self.decode(mean)


def init_params(config: AutoencoderKLConfig, rng: jax.Array, param_dtype=jnp.float32):
  """Randomly initialised params (boxed with logical axis names), from the least image the blocks take."""
  side = config.downsample_factor
  module = AutoencoderKL(config, param_dtype=param_dtype)
  return module.init(rng, jnp.zeros((1, side, side, config.in_channels)))["params"]


def param_shapes(config: AutoencoderKLConfig, boxed: bool = False) -> dict:
  """The parameter tree as `jax.ShapeDtypeStruct`s, without allocating anything (boxed: keep logical names)."""
  shapes = jax.eval_shape(lambda rng: init_params(config, rng), jax.random.key(0))
  return shapes if boxed else nn.unbox(shapes)
