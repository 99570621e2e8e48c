"""Video UNets in Flax, channels-last, frames folded into the batch for every 2-D operation.

`UNet3DConditionModel` is diffusers' (the ModelScope text-to-video layout, T2V-Turbo-MS): conv_in → a temporal
transformer → down blocks of [resnet, temporal conv, spatial transformer, temporal transformer] → mid block → up
blocks that concatenate the skips in reverse → GroupNorm → SiLU → conv_out. The timestep embedding optionally adds
an LCM guidance embedding through `time_embedding/cond_proj` (`time_cond_proj_dim`).

`VideoCrafterUNet` is VideoCrafter2's (`lvdm` `openaimodel3d.UNetModel`, the UNet of T2V-Turbo (VC2) and of
UnifiedReward's video DPO): the same layers in the openai layout (`input_blocks.{k}.{i}`, each resnet followed by its
own temporal conv, a first temporal transformer `init_attn` with Conv1d projections), conditioned also on the frame
rate (`fps_embedding`) and, in T2V-Turbo, on the guidance scale through `time_cond_proj` before `time_embed`.

Names mirror the source state dicts (`down_blocks_0/temp_attentions_1/...`, `input_blocks_1/0/in_layers_0/...`), so
the converters derive their tables from the parameter tree. diffusers' `attention_head_dim` is the width of a head
(64), unlike the SDXL UNet's config: a block of C channels has C / attention_head_dim heads; the first temporal
transformer has 8. Every transformer of `UNet3DConditionModel` projects with Linear layers (diffusers builds the 3-D
blocks with `use_linear_projection`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ureward_jax.errors import UserError
from ureward_jax.nn.embeddings import TimestepEmbedding, timestep_embedding
from ureward_jax.nn.linear import conv, dense
from ureward_jax.nn.norms import group_norm
from ureward_jax.nn.remat import remat
from ureward_jax.nn.resnet import OPENAI_RESNET_NAMES, Downsample2D, ResnetBlock2D, Upsample2D
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
        raise UserError(f"UNet3D config {key}={d[key]!r} is not supported (only {default!r} is implemented)")
    if d.get("norm_num_groups", 32) is None:
      raise UserError("UNet3D config norm_num_groups=None is not supported")
    for key, allowed in (("down_block_types", _DOWN), ("up_block_types", _UP)):
      bad = [t for t in d.get(key, ()) if t not in allowed]
      if bad:
        raise UserError(f"UNet3D {key} {bad} are not supported; expected blocks from {allowed}")
    head_dim = d.get("attention_head_dim", cls.attention_head_dim)
    if isinstance(head_dim, (list, tuple)):
      if len(set(head_dim)) != 1:
        raise UserError(f"a per-block attention_head_dim {head_dim} is not supported (diffusers' first temporal "
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
    return remat(TemporalConvLayer, self.policy, static_argnums=(2, 3))(self.config.norm_num_groups, name=name,
                                                                         **self.kw)

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


# --- VideoCrafter2 ------------------------------------------------------------------------------------------------

GROUPS = 32   # every GroupNorm of the openai UNet
OPENAI_MLP_NAMES = ("0", "2")   # `time_embed` / `fps_embedding`: nn.Sequential(Linear, SiLU, Linear)


@dataclasses.dataclass(frozen=True)
class VideoCrafterUNetConfig:
  """`openaimodel3d.UNetModel` arguments with VideoCrafter2 / T2V-Turbo (VC2)'s values (`configs/.../config.yaml`,
  `unet_config.params`). Attention happens at the downsampling factors in `attention_resolutions`, with heads of
  `num_head_channels`. `use_w_embedding` False ignores `timestep_cond`, as the UNet copy in UnifiedReward's and
  VideoDPO's code does (its `time_cond_proj` exists but is never applied). `temporal_conv_dropout`: the rate every
  ResBlock's temporal conv drops at in training (0.1, fixed in the source; not its `dropout`, which is the resnets')."""
  in_channels: int = 4
  out_channels: int = 4
  model_channels: int = 320
  channel_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  attention_resolutions: tuple[int, ...] = (4, 2, 1)
  num_head_channels: int = 64
  transformer_depth: int = 1
  temporal_transformer_depth: int = 1
  context_dim: int = 1024
  temporal_length: int = 16
  addition_attention: bool = True
  fps_cond: bool = True
  time_cond_proj_dim: int | None = 256
  use_w_embedding: bool = True
  temporal_conv_dropout: float = 0.1

  # Source options this port implements only at these values.
  FIXED = {"use_scale_shift_norm": False, "resblock_updown": False, "use_relative_position": False,
           "use_causal_attention": False, "tempspatial_aware": False, "use_image_attention": False,
           "temporal_selfatt_only": True, "use_linear": True, "temporal_conv": True, "temporal_attention": True,
           "conv_resample": True, "dims": 2, "num_heads": -1, "motion_cond_proj_dim": None}

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "VideoCrafterUNetConfig":
    """From the `unet_config.params` mapping of a VideoCrafter2 config (or our `to_dict()`); other keys ignored."""
    for key, value in cls.FIXED.items():
      if key in d and d[key] != value:
        raise UserError(f"VideoCrafter UNet {key}={d[key]!r} is not supported (only {value!r} is implemented)")
    fields = {f.name for f in dataclasses.fields(cls)}
    config = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in fields})
    if any(c % config.num_head_channels for c in (config.model_channels * m for m in config.channel_mult)):
      raise UserError(f"every block width must be a multiple of num_head_channels {config.num_head_channels}")
    return config

  def to_dict(self) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


class _ResBlock(nn.Module):
  """VideoCrafter2's `ResBlock`: a resnet (openai layer names) whose output passes through the block's own temporal
  conv, named `temopral_conv` (sic) in the source, with its dropout in training. x (B·T, H, W, C) → (B·T, H, W,
  features)."""
  features: int
  dropout: float = 0.1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.resnet = ResnetBlock2D(self.features, GROUPS, 1e-5, OPENAI_RESNET_NAMES, **kw)
    nn.share_scope(self, self.resnet)   # its layers sit directly in this block, as in the source
    self.temopral_conv = TemporalConvLayer(GROUPS, self.dropout, **kw)

  def __call__(self, x, emb, num_frames: int, deterministic: bool = True):
    return self.temopral_conv(self.resnet(x, emb), num_frames, deterministic)


class _Stage(nn.Module):
  """One `TimestepEmbedSequential` of the openai UNet: `kinds` applied in order, each named by its index.
  Kinds: "conv" (3×3), "res", "spatial" / "temporal" transformers, "first_temporal" (`init_attn`'s: 8 heads,
  Conv1d projections), "down" (stride-2 conv `op`), "up" (nearest ×2 + conv)."""
  kinds: tuple[str, ...]
  features: int
  config: VideoCrafterUNetConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: str = "none"
  attention_backend: str = "xla"

  @nn.compact
  def __call__(self, x, emb, context, num_frames: int, deterministic: bool = True):
    cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    heads = self.features // cfg.num_head_channels
    attention = dict(remat=self.remat, attention_backend=self.attention_backend, **kw)
    for i, kind in enumerate(self.kinds):
      name = str(i)
      if kind == "conv":
        x = conv(self.features, 3, name=name, **kw)(x)
      elif kind == "res":
        block = remat(_ResBlock, self.remat, static_argnums=(3, 4))
        x = block(self.features, cfg.temporal_conv_dropout, name=name, **kw)(x, emb, num_frames, deterministic)
      elif kind == "spatial":
        x = Transformer2DModel(heads, cfg.transformer_depth, GROUPS, name=name, **attention)(x, context)
      elif kind == "temporal":
        x = TransformerTemporalModel(heads, cfg.num_head_channels, GROUPS, cfg.temporal_transformer_depth,
                                     name=name, **attention)(x, num_frames)
      elif kind == "first_temporal":
        x = TransformerTemporalModel(FIRST_TEMPORAL_HEADS, cfg.num_head_channels, GROUPS, cfg.transformer_depth,
                                     projection="conv1d", name=name, **attention)(x, num_frames)
      elif kind == "down":
        x = Downsample2D(conv_name="op", name=name, **kw)(x)
      elif kind == "up":
        x = Upsample2D(name=name, **kw)(x)
      else:
        raise ValueError(f"unknown stage layer {kind!r}")
    return x


class VideoCrafterUNet(nn.Module):
  """sample (B, T, H, W, C_in) channels-last, timesteps (B,) or a scalar, context (B, S, context_dim), fps a number
  or (B,), and with `time_cond_proj_dim` a timestep_cond (B, time_cond_proj_dim), e.g. `guidance_embedding(w, 256)`
  → the prediction (B, T, H, W, C_out). H and W must be multiples of 2^(levels − 1). `deterministic` False (training)
  turns on the temporal convs' dropout, drawing from the "dropout" rng stream."""
  config: VideoCrafterUNetConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: str = "none"
  attention_backend: str = "xla"

  @nn.compact
  def __call__(self, sample, timesteps, context, fps=16, timestep_cond=None, deterministic: bool = True):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    batch, frames, height, width, _ = sample.shape
    factor = 2 ** (len(cfg.channel_mult) - 1)
    if height % factor or width % factor:
      raise ValueError(f"latent size {(height, width)} must be a multiple of {factor} for this UNet")
    timesteps = jnp.broadcast_to(jnp.asarray(timesteps, jnp.float32), (batch,))
    t_emb = timestep_embedding(timesteps, cfg.model_channels).astype(self.dtype)
    if cfg.time_cond_proj_dim is not None:
      project = dense(cfg.model_channels, ("embed", "mlp"), use_bias=False, name="time_cond_proj", **kw)
      if timestep_cond is not None and cfg.use_w_embedding:
        t_emb = t_emb + project(timestep_cond.astype(self.dtype))
      elif self.is_initializing():   # the checkpoint holds it even where it is not applied
        project(jnp.zeros((1, cfg.time_cond_proj_dim), self.dtype))
    embedding = functools.partial(TimestepEmbedding, 4 * cfg.model_channels, OPENAI_MLP_NAMES, **kw)
    emb = embedding(name="time_embed")(t_emb)
    if cfg.fps_cond:
      fps = jnp.broadcast_to(jnp.asarray(fps, jnp.float32), (batch,))
      emb = emb + embedding(name="fps_embedding")(timestep_embedding(fps, cfg.model_channels).astype(self.dtype))
    emb = jnp.repeat(emb, frames, axis=0)                                   # per frame, video-major
    context = jnp.repeat(context.astype(self.dtype), frames, axis=0)

    stage = functools.partial(_Stage, config=cfg, remat=self.remat, attention_backend=self.attention_backend, **kw)
    run = lambda kinds, features, name: stage(kinds, features, name=name)(x, emb, context, frames,  # noqa: E731
                                                                          deterministic)
    x = sample.astype(self.dtype).reshape(batch * frames, height, width, -1)
    x = run(("conv",), cfg.model_channels, "input_blocks_0")
    if cfg.addition_attention:
      x = run(("first_temporal",), cfg.model_channels, "init_attn")
    skips, block, resolution = [x], 1, 1
    attends = lambda: ("spatial", "temporal") if resolution in cfg.attention_resolutions else ()  # noqa: E731
    for level, mult in enumerate(cfg.channel_mult):
      for _ in range(cfg.num_res_blocks):
        x = run(("res",) + attends(), cfg.model_channels * mult, f"input_blocks_{block}")
        skips.append(x)
        block += 1
      if level < len(cfg.channel_mult) - 1:
        x = run(("down",), cfg.model_channels * mult, f"input_blocks_{block}")
        skips.append(x)
        block, resolution = block + 1, resolution * 2
    x = run(("res", "spatial", "temporal", "res"), x.shape[-1], "middle_block")
    block = 0
    for level, mult in reversed(list(enumerate(cfg.channel_mult))):
      for i in range(cfg.num_res_blocks + 1):
        x = jnp.concatenate([x, skips.pop()], axis=-1)
        upsample = ("up",) if level and i == cfg.num_res_blocks else ()
        x = run(("res",) + attends() + upsample, cfg.model_channels * mult, f"output_blocks_{block}")
        block += 1
      resolution //= 2
    x = jax.nn.silu(group_norm(GROUPS, 1e-5, name="out_0", **kw)(x))
    x = conv(cfg.out_channels, 3, name="out_2", **kw)(x)
    return x.reshape(batch, frames, height, width, -1)


def init_params(config: UNet3DConditionConfig | VideoCrafterUNetConfig, rng: jax.Array, param_dtype=jnp.float32):
  """Randomly initialised params (boxed with logical axis names) of either UNet, from a dummy 2-frame latent."""
  if isinstance(config, VideoCrafterUNetConfig):
    module, levels = VideoCrafterUNet(config, param_dtype=param_dtype), config.channel_mult
    context_dim = config.context_dim
  else:
    module, levels = UNet3DConditionModel(config, param_dtype=param_dtype), config.block_out_channels
    context_dim = config.cross_attention_dim
  side = 2 ** (len(levels) - 1)
  cond = None if config.time_cond_proj_dim is None else jnp.zeros((1, config.time_cond_proj_dim))
  inputs = (jnp.zeros((1, 2, side, side, config.in_channels)), jnp.zeros((1,)), jnp.zeros((1, 1, context_dim)))
  return module.init(rng, *inputs, timestep_cond=cond)["params"]


def param_shapes(config: UNet3DConditionConfig | VideoCrafterUNetConfig, boxed: bool = False) -> dict:
  """The parameter tree as `jax.ShapeDtypeStruct`s, without allocating anything (boxed: keep logical names)."""
  shapes = jax.eval_shape(lambda rng: init_params(config, rng), jax.random.key(0))
  return shapes if boxed else nn.unbox(shapes)
