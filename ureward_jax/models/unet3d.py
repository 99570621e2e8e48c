"""Video UNets in Flax, channels-last, frames folded into the batch for every 2-D operation.

`UNet3DConditionModel` is diffusers' (the ModelScope text-to-video layout, T2V-Turbo-MS): conv_in → a temporal
transformer → down blocks of [resnet, temporal conv, spatial transformer, temporal transformer] → mid block → up
blocks that concatenate the skips in reverse → GroupNorm → SiLU → conv_out. The timestep embedding optionally adds
an LCM guidance embedding through `time_embedding/cond_proj` (`time_cond_proj_dim`).

Names mirror diffusers' state dict (`down_blocks_0/temp_attentions_1/transformer_blocks_0/attn2/to_q`), so the
converter derives its table from the parameter tree. `attention_head_dim` is the width of a head (64), unlike the
SDXL UNet's config: a block of C channels has C / attention_head_dim heads; the first temporal transformer has 8.
Every transformer projects with Linear layers (diffusers builds the 3-D blocks with `use_linear_projection`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ureward_jax.nn.embeddings import TimestepEmbedding, timestep_embedding
from ureward_jax.nn.linear import conv
from ureward_jax.nn.norms import group_norm
from ureward_jax.nn.remat import remat
from ureward_jax.nn.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from ureward_jax.nn.spatial_transformer import Transformer2DModel
from ureward_jax.nn.temporal import TemporalConvLayer, TransformerTemporalModel

_DOWN = ("DownBlock3D", "CrossAttnDownBlock3D")
_UP = ("UpBlock3D", "CrossAttnUpBlock3D")
FIRST_TEMPORAL_HEADS = 8   # diffusers' `transformer_in`


@dataclasses.dataclass(frozen=True)
class UNet3DConditionConfig:
  """diffusers' `UNet3DConditionModel` defaults (ModelScope's text-to-video UNet)."""
  in_channels: int = 4
  out_channels: int = 4
  block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
  down_block_types: tuple[str, ...] = ("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",)
  up_block_types: tuple[str, ...] = ("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3
  layers_per_block: int = 2
  attention_head_dim: int = 64
  cross_attention_dim: int = 1024
  norm_num_groups: int = 32
  norm_eps: float = 1e-5
  time_cond_proj_dim: int | None = None
  sample_size: int | None = None

  @property
  def time_embed_dim(self) -> int:
    return self.block_out_channels[0] * 4

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "UNet3DConditionConfig":
    """From a diffusers `unet/config.json` dict; refuses every option this port does not implement."""
    unsupported = {"num_attention_heads": None, "act_fn": "silu", "downsample_padding": 1,
                   "mid_block_scale_factor": 1}
    for key, default in unsupported.items():
      if d.get(key, default) != default:
        raise ValueError(f"UNet3D config {key}={d[key]!r} is not supported (only {default!r} is implemented)")
    if d.get("norm_num_groups", 32) is None:
      raise ValueError("UNet3D config norm_num_groups=None is not supported")
    for key, allowed in (("down_block_types", _DOWN), ("up_block_types", _UP)):
      bad = [t for t in d.get(key, ()) if t not in allowed]
      if bad:
        raise ValueError(f"UNet3D {key} {bad} are not supported; expected blocks from {allowed}")
    head_dim = d.get("attention_head_dim", cls.attention_head_dim)
    if isinstance(head_dim, (list, tuple)):
      if len(set(head_dim)) != 1:
        raise ValueError(f"a per-block attention_head_dim {head_dim} is not supported (diffusers' first temporal "
                         "transformer needs one width)")
      head_dim = head_dim[0]
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in fields}
    return cls(**{**kwargs, "attention_head_dim": head_dim})

  def to_dict(self) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass(frozen=True)
class _BlockSpec:
  features: int
  num_resnets: int
  attends: bool
  resample: bool


class _Block3D(nn.Module):
  """A down block (or an up block, each resnet fed the next skip concatenated on channels): per layer a resnet and a
  temporal conv, then, when it attends, a spatial and a temporal transformer; an optional ×2 resample.
  Returns (x, the skips it produced)."""
  spec: _BlockSpec
  up: bool
  config: UNet3DConditionConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: str = "none"
  attention_backend: str = "xla"

  @nn.compact
  def __call__(self, x, emb, context, num_frames: int, skips: Sequence[jax.Array] = ()):
    cfg, spec = self.config, self.spec
    layers = _Layers(cfg, self.remat, self.attention_backend, dict(dtype=self.dtype, param_dtype=self.param_dtype))
    skips, produced = list(skips), []
    for j in range(spec.num_resnets):
      if self.up:
        x = jnp.concatenate([x, skips.pop()], axis=-1)
      x = layers.resnet(spec.features, f"resnets_{j}")(x, emb)
      x = layers.temporal_conv(f"temp_convs_{j}")(x, num_frames)
      if spec.attends:
        x = layers.spatial(spec.features, f"attentions_{j}")(x, context)
        x = layers.temporal(spec.features, f"temp_attentions_{j}")(x, num_frames)
      produced.append(x)
    if spec.resample:
      kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
      x = (Upsample2D if self.up else Downsample2D)(name="upsamplers_0" if self.up else "downsamplers_0", **kw)(x)
      produced.append(x)
    return x, produced


class _MidBlock3D(nn.Module):
  """resnet, temporal conv, spatial transformer, temporal transformer, resnet, temporal conv."""
  config: UNet3DConditionConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: str = "none"
  attention_backend: str = "xla"

  @nn.compact
  def __call__(self, x, emb, context, num_frames: int):
    cfg = self.config
    layers = _Layers(cfg, self.remat, self.attention_backend, dict(dtype=self.dtype, param_dtype=self.param_dtype))
    features = cfg.block_out_channels[-1]
    x = layers.temporal_conv("temp_convs_0")(layers.resnet(features, "resnets_0")(x, emb), num_frames)
    x = layers.spatial(features, "attentions_0")(x, context)
    x = layers.temporal(features, "temp_attentions_0")(x, num_frames)
    return layers.temporal_conv("temp_convs_1")(layers.resnet(features, "resnets_1")(x, emb), num_frames)


@dataclasses.dataclass(frozen=True)
class _Layers:
  """Builds a block's layers with the config's groups, epsilons, head width, remat policy and dtypes."""
  config: UNet3DConditionConfig
  policy: str
  backend: str
  kw: dict

  def resnet(self, features, name):
    cfg = self.config
    return remat(ResnetBlock2D, self.policy)(features, cfg.norm_num_groups, cfg.norm_eps, name=name, **self.kw)

  def temporal_conv(self, name):
    return remat(TemporalConvLayer, self.policy)(self.config.norm_num_groups, name=name, **self.kw)

  def spatial(self, features, name):
    cfg = self.config
    return Transformer2DModel(features // cfg.attention_head_dim, 1, cfg.norm_num_groups, remat=self.policy,
                              attention_backend=self.backend, name=name, **self.kw)

  def temporal(self, features, name):
    cfg = self.config
    return TransformerTemporalModel(features // cfg.attention_head_dim, cfg.attention_head_dim, cfg.norm_num_groups,
                                    remat=self.policy, attention_backend=self.backend, name=name, **self.kw)


class UNet3DConditionModel(nn.Module):
  """sample (B, T, H, W, C_in) channels-last, timesteps (B,) or a scalar, encoder_hidden_states (B, S, D), and with
  `time_cond_proj_dim` a timestep_cond (B, time_cond_proj_dim) → the prediction (B, T, H, W, C_out).

  H and W must be multiples of 2^(number of blocks − 1).
  """
  config: UNet3DConditionConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: str = "none"
  attention_backend: str = "xla"

  @nn.compact
  def __call__(self, sample, timesteps, encoder_hidden_states, timestep_cond=None):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    blocks = dict(config=cfg, remat=self.remat, attention_backend=self.attention_backend, **kw)
    batch, frames, height, width, _ = sample.shape
    factor = 2 ** (len(cfg.block_out_channels) - 1)
    if height % factor or width % factor:
      raise ValueError(f"latent size {(height, width)} must be a multiple of {factor} for this UNet")
    if (timestep_cond is None) != (cfg.time_cond_proj_dim is None):
      raise ValueError("pass timestep_cond exactly when the UNet has time_cond_proj_dim "
                       f"(here {cfg.time_cond_proj_dim})")
    timesteps = jnp.broadcast_to(jnp.asarray(timesteps, jnp.float32), (batch,))
    t_emb = timestep_embedding(timesteps, cfg.block_out_channels[0]).astype(self.dtype)
    condition = None if timestep_cond is None else timestep_cond.astype(self.dtype)
    emb = TimestepEmbedding(cfg.time_embed_dim, name="time_embedding", **kw)(t_emb, condition)
    emb = jnp.repeat(emb, frames, axis=0)                                    # per frame, video-major
    context = jnp.repeat(encoder_hidden_states.astype(self.dtype), frames, axis=0)

    x = sample.astype(self.dtype).reshape(batch * frames, height, width, -1)
    x = conv(cfg.block_out_channels[0], 3, name="conv_in", **kw)(x)
    x = TransformerTemporalModel(FIRST_TEMPORAL_HEADS, cfg.attention_head_dim, cfg.norm_num_groups, remat=self.remat,
                                 attention_backend=self.attention_backend, name="transformer_in", **kw)(x, frames)
    last = len(cfg.block_out_channels) - 1
    skips = [x]
    for i, kind in enumerate(cfg.down_block_types):
      spec = _BlockSpec(cfg.block_out_channels[i], cfg.layers_per_block, kind.startswith("CrossAttn"), i < last)
      x, produced = _Block3D(spec, up=False, name=f"down_blocks_{i}", **blocks)(x, emb, context, frames)
      skips += produced
    x = _MidBlock3D(name="mid_block", **blocks)(x, emb, context, frames)
    for i, kind in enumerate(cfg.up_block_types):
      spec = _BlockSpec(cfg.block_out_channels[last - i], cfg.layers_per_block + 1, kind.startswith("CrossAttn"),
                        i < last)
      x, _ = _Block3D(spec, up=True, name=f"up_blocks_{i}", **blocks)(x, emb, context, frames,
                                                                     skips[-spec.num_resnets:])
      del skips[-spec.num_resnets:]
    x = jax.nn.silu(group_norm(cfg.norm_num_groups, cfg.norm_eps, name="conv_norm_out", **kw)(x))
    x = conv(cfg.out_channels, 3, name="conv_out", **kw)(x)
    return x.reshape(batch, frames, height, width, -1)


def init_params(config: UNet3DConditionConfig, rng: jax.Array, param_dtype=jnp.float32):
  """Randomly initialised params (boxed with logical axis names), from a dummy 2-frame latent of the least size."""
  side = 2 ** (len(config.block_out_channels) - 1)
  cond = None if config.time_cond_proj_dim is None else jnp.zeros((1, config.time_cond_proj_dim))
  module = UNet3DConditionModel(config, param_dtype=param_dtype)
  return module.init(rng, jnp.zeros((1, 2, side, side, config.in_channels)), jnp.zeros((1,)),
                     jnp.zeros((1, 1, config.cross_attention_dim)), cond)["params"]


def param_shapes(config: UNet3DConditionConfig, boxed: bool = False) -> dict:
  """The parameter tree as `jax.ShapeDtypeStruct`s, without allocating anything (boxed: keep logical names)."""
  shapes = jax.eval_shape(lambda rng: init_params(config, rng), jax.random.key(0))
  return shapes if boxed else nn.unbox(shapes)


@dataclasses.dataclass
class UNet3D:
  """A loaded video UNet: `config`, `params`, the Flax `module`, and diffusers-compatible `forward`."""
  config: UNet3DConditionConfig
  params: Any
  module: UNet3DConditionModel

  @classmethod
  def from_params(cls, config: UNet3DConditionConfig, params, dtype=jnp.float32, **module_kwargs):
    return cls(config, params, UNet3DConditionModel(config, dtype=dtype, **module_kwargs))

  @functools.cached_property
  def _jitted(self):
    return jax.jit(self.module.apply)

  def forward(self, sample, timestep, encoder_hidden_states, timestep_cond=None) -> np.ndarray:
    """The prediction (B, C, T, H, W) for diffusers' arguments: sample (B, C, T, H, W), timestep a number or (B,),
    encoder_hidden_states (B, S, D), timestep_cond (B, time_cond_proj_dim) when the UNet has one."""
    sample = np.asarray(sample).transpose(0, 2, 3, 4, 1)
    cond = None if timestep_cond is None else np.asarray(timestep_cond)
    out = self._jitted({"params": self.params}, sample, np.asarray(timestep, np.float32),
                       np.asarray(encoder_hidden_states), cond)
    return np.asarray(out).transpose(0, 4, 1, 2, 3)
