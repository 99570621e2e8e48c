"""The SDXL UNet (diffusers `UNet2DConditionModel`) in Flax, channels-last inside.

conv_in → down blocks (resnets, linear-projection transformers, stride-2 convs) → mid block → up blocks that
concatenate the skips in reverse → GroupNorm → SiLU → conv_out. The timestep and SDXL's "text_time" conditioning
(pooled text embedding + 6 micro-conditions) are embedded into one vector that every resnet adds.

Names mirror diffusers' state dict (`down_blocks_1/attentions_0/transformer_blocks_1/attn2/to_k`), so the converter
derives its table from the parameter tree. One quirk of the source config is resolved here: SDXL's
`attention_head_dim` ([5, 10, 20]) is really the number of heads; the head width is channels / heads (64).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ureward_jax.errors import UserError
from ureward_jax.nn.embeddings import TimestepEmbedding, timestep_embedding
from ureward_jax.nn.linear import conv
from ureward_jax.nn.norms import group_norm
from ureward_jax.nn.remat import remat
from ureward_jax.nn.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from ureward_jax.nn.spatial_transformer import Transformer2DModel

_DOWN = ("DownBlock2D", "CrossAttnDownBlock2D")
_UP = ("UpBlock2D", "CrossAttnUpBlock2D")


@dataclasses.dataclass(frozen=True)
class UNet2DConditionConfig:
  """The SDXL defaults; `num_attention_heads` and `transformer_layers_per_block` hold one entry per block."""
  in_channels: int = 4
  out_channels: int = 4
  block_out_channels: tuple[int, ...] = (320, 640, 1280)
  down_block_types: tuple[str, ...] = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
  up_block_types: tuple[str, ...] = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
  layers_per_block: int = 2
  transformer_layers_per_block: tuple[int, ...] = (1, 2, 10)
  num_attention_heads: tuple[int, ...] = (5, 10, 20)
  cross_attention_dim: int = 2048
  norm_num_groups: int = 32
  norm_eps: float = 1e-5
  flip_sin_to_cos: bool = True
  freq_shift: int = 0
  use_linear_projection: bool = True
  addition_embed_type: str | None = "text_time"
  addition_time_embed_dim: int | None = 256
  projection_class_embeddings_input_dim: int | None = 2816
  sample_size: int = 128

  @property
  def time_embed_dim(self) -> int:
    return self.block_out_channels[0] * 4

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "UNet2DConditionConfig":
    """From a diffusers `unet/config.json` dict; refuses every option this port does not implement."""
    unsupported = {"time_cond_proj_dim": None, "class_embed_type": None, "encoder_hid_dim": None,
                   "upcast_attention": False, "only_cross_attention": False, "dual_cross_attention": False,
                   "center_input_sample": False, "resnet_time_scale_shift": "default", "act_fn": "silu",
                   "mid_block_type": "UNetMidBlock2DCrossAttn", "class_embeddings_concat": False,
                   "resnet_skip_time_act": False, "resnet_out_scale_factor": 1.0, "time_embedding_type": "positional",
                   "time_embedding_act_fn": None, "timestep_post_act": None, "conv_in_kernel": 3,
                   "conv_out_kernel": 3, "addition_embed_type_num_heads": 64, "attention_type": "default",
                   "mid_block_only_cross_attention": None, "cross_attention_norm": None, "dropout": 0.0,
                   "num_class_embeds": None, "reverse_transformer_layers_per_block": None}
    for key, default in unsupported.items():
      value = d.get(key, default)
      if isinstance(value, list) and len(set(value)) == 1:   # a per-block list of one value
        value = value[0]
      if value != default:
        raise UserError(f"UNet config {key}={value!r} is not supported (only {default!r} is implemented)")
    if d.get("addition_embed_type") not in (None, "text_time"):
      raise UserError(f"addition_embed_type {d['addition_embed_type']!r} is not supported (text_time or none)")
    for key, allowed in (("down_block_types", _DOWN), ("up_block_types", _UP)):
      bad = [t for t in d.get(key, ()) if t not in allowed]
      if bad:
        raise UserError(f"UNet {key} {bad} are not supported; expected blocks from {allowed}")
    if not isinstance(d.get("layers_per_block", 2), int):
      raise UserError("a per-block layers_per_block list is not supported; expected one integer")

    blocks = len(d.get("block_out_channels", cls.block_out_channels))

    def per_block(value):
      return tuple(value) if isinstance(value, (list, tuple)) else (value,) * blocks
    # `num_attention_heads` wins when set; otherwise diffusers reads `attention_head_dim` as the head count.
    heads = d.get("num_attention_heads") or d.get("attention_head_dim", 8)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in d.items() if k in fields}
    kwargs.update(num_attention_heads=per_block(heads),
                  transformer_layers_per_block=per_block(d.get("transformer_layers_per_block", 1)))
    for key in ("block_out_channels", "down_block_types", "up_block_types"):
      if key in kwargs:
        kwargs[key] = tuple(kwargs[key])
    if isinstance(kwargs.get("cross_attention_dim"), (list, tuple)):
      raise UserError("a per-block cross_attention_dim is not supported")
    return cls(**kwargs)

  def to_dict(self) -> dict[str, Any]:
    """The diffusers `config.json` fields (heads written as `attention_head_dim`, as SDXL's own config does)."""
    d = dataclasses.asdict(self)
    d["attention_head_dim"] = list(d.pop("num_attention_heads"))
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@dataclasses.dataclass(frozen=True)
class _BlockSpec:
  """What one down or up block holds: output width, resnet count, attention heads and depth (0 = none)."""
  features: int
  num_resnets: int
  heads: int
  depth: int
  resample: bool


class _Block(nn.Module):
  """A down block (resnets, optional transformers, optional stride-2 conv) or an up block (the same, each resnet fed
  the next skip concatenated on channels, then an optional ×2 upsample). Returns (x, skips it produced)."""
  spec: _BlockSpec
  up: bool
  config: UNet2DConditionConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: str = "none"
  attention_backend: str = "xla"

  @nn.compact
  def __call__(self, x, emb, context, skips: Sequence[jax.Array] = ()):
    cfg, spec = self.config, self.spec
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    skips, produced = list(skips), []
    for j in range(spec.num_resnets):
      if self.up:
        x = jnp.concatenate([x, skips.pop()], axis=-1)
      x = _resnet(cfg, self.remat, spec.features, name=f"resnets_{j}", **kw)(x, emb)
      if spec.depth:
        x = _transformer(cfg, self.remat, self.attention_backend, spec.heads, spec.depth,
                         name=f"attentions_{j}", **kw)(x, context)
      produced.append(x)
    if spec.resample:
      x = (Upsample2D if self.up else Downsample2D)(name="upsamplers_0" if self.up else "downsamplers_0", **kw)(x)
      produced.append(x)
    return x, produced


class _MidBlock(nn.Module):
  """Resnet → transformer → resnet at the lowest resolution."""
  config: UNet2DConditionConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: str = "none"
  attention_backend: str = "xla"

  @nn.compact
  def __call__(self, x, emb, context):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    features = cfg.block_out_channels[-1]
    x = _resnet(cfg, self.remat, features, name="resnets_0", **kw)(x, emb)
    x = _transformer(cfg, self.remat, self.attention_backend, cfg.num_attention_heads[-1],
                     cfg.transformer_layers_per_block[-1], name="attentions_0", **kw)(x, context)
    return _resnet(cfg, self.remat, features, name="resnets_1", **kw)(x, emb)


def _resnet(cfg, policy, features, **kw):
  return remat(ResnetBlock2D, policy)(features, cfg.norm_num_groups, cfg.norm_eps, **kw)


def _transformer(cfg, policy, backend, heads, depth, **kw):
  return Transformer2DModel(heads, depth, cfg.norm_num_groups, cfg.use_linear_projection, remat=policy,
                            attention_backend=backend, **kw)


class UNet2DConditionModel(nn.Module):
  """sample (B, H, W, C_in) channels-last, timesteps (B,) or a scalar, encoder_hidden_states (B, S, D), and for
  "text_time" conditioning text_embeds (B, P) and time_ids (B, 6) → the prediction (B, H, W, C_out).

  H and W must be multiples of 2^(number of blocks − 1) (every SDXL resolution is).
  """
  config: UNet2DConditionConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: str = "none"
  attention_backend: str = "xla"

  @nn.compact
  def __call__(self, sample, timesteps, encoder_hidden_states, text_embeds=None, time_ids=None):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    blocks = dict(config=cfg, remat=self.remat, attention_backend=self.attention_backend, **kw)
    factor = 2 ** (len(cfg.block_out_channels) - 1)
    if sample.shape[1] % factor or sample.shape[2] % factor:
      raise ValueError(f"latent size {sample.shape[1:3]} must be a multiple of {factor} for this UNet")
    batch = sample.shape[0]
    timesteps = jnp.broadcast_to(jnp.asarray(timesteps, jnp.float32), (batch,))
    t_emb = timestep_embedding(timesteps, cfg.block_out_channels[0], flip_sin_to_cos=cfg.flip_sin_to_cos,
                               shift=cfg.freq_shift).astype(self.dtype)
    emb = TimestepEmbedding(cfg.time_embed_dim, name="time_embedding", **kw)(t_emb)
    if cfg.addition_embed_type == "text_time":
      if text_embeds is None or time_ids is None:
        raise ValueError("this UNet uses text_time conditioning: pass text_embeds and time_ids")
      time_embeds = timestep_embedding(time_ids.reshape(-1), cfg.addition_time_embed_dim,
                                       flip_sin_to_cos=cfg.flip_sin_to_cos, shift=cfg.freq_shift)
      add = jnp.concatenate([text_embeds.astype(jnp.float32), time_embeds.reshape(batch, -1)], axis=-1)
      emb = emb + TimestepEmbedding(cfg.time_embed_dim, name="add_embedding", **kw)(add.astype(self.dtype))
    context = encoder_hidden_states.astype(self.dtype)

    last = len(cfg.block_out_channels) - 1
    x = conv(cfg.block_out_channels[0], 3, name="conv_in", **kw)(sample.astype(self.dtype))
    skips = [x]
    for i, kind in enumerate(cfg.down_block_types):
      attends = kind.startswith("CrossAttn")
      spec = _BlockSpec(cfg.block_out_channels[i], cfg.layers_per_block, cfg.num_attention_heads[i],
                        cfg.transformer_layers_per_block[i] if attends else 0, resample=i < last)
      x, produced = _Block(spec, up=False, name=f"down_blocks_{i}", **blocks)(x, emb, context)
      skips += produced
    x = _MidBlock(name="mid_block", **blocks)(x, emb, context)
    for i, kind in enumerate(cfg.up_block_types):
      attends = kind.startswith("CrossAttn")
      spec = _BlockSpec(cfg.block_out_channels[last - i], cfg.layers_per_block + 1, cfg.num_attention_heads[last - i],
                        cfg.transformer_layers_per_block[last - i] if attends else 0, resample=i < last)
      x, _ = _Block(spec, up=True, name=f"up_blocks_{i}", **blocks)(x, emb, context, skips[-spec.num_resnets:])
      del skips[-spec.num_resnets:]
    x = jax.nn.silu(group_norm(cfg.norm_num_groups, cfg.norm_eps, name="conv_norm_out", **kw)(x))
    return conv(cfg.out_channels, 3, name="conv_out", **kw)(x)


def init_params(config: UNet2DConditionConfig, rng: jax.Array, param_dtype=jnp.float32, height: int | None = None):
  """Randomly initialised params (boxed with logical axis names); `height` of the dummy latent, default the least."""
  side = height or 2 ** (len(config.block_out_channels) - 1)
  module = UNet2DConditionModel(config, param_dtype=param_dtype)
  sample = jnp.zeros((1, side, side, config.in_channels))
  context = jnp.zeros((1, 1, config.cross_attention_dim))
  extra = {}
  if config.addition_embed_type == "text_time":
    pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
    extra = dict(text_embeds=jnp.zeros((1, pooled)), time_ids=jnp.zeros((1, 6)))
  return module.init(rng, sample, jnp.zeros((1,)), context, **extra)["params"]


def param_shapes(config: UNet2DConditionConfig, boxed: bool = False) -> dict:
  """The parameter tree as `jax.ShapeDtypeStruct`s, without allocating anything (boxed: keep logical names)."""
  shapes = jax.eval_shape(lambda rng: init_params(config, rng), jax.random.key(0))
  return shapes if boxed else nn.unbox(shapes)
