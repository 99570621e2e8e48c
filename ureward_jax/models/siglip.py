"""SigLIP vision tower (HF `SiglipVisionModel` without the pooling head), as LLaVA-OneVision uses it.

Patch conv → learned positions (no CLS token) → pre-LN encoder blocks (tanh GELU) → `post_layernorm`.
LLaVA-OneVision reads the output of the last encoder layer *before* `post_layernorm` (`features`); the tower also
returns `last_hidden_state` (after it), which costs nothing under jit when unused.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from ureward_jax.nn.activations import ACTIVATIONS, check_activation
from ureward_jax.nn.attention import dot_product_attention
from ureward_jax.nn.linear import default_kernel_init, dense, logical
from ureward_jax.nn.norms import layer_norm
from ureward_jax.nn.remat import remat
from ureward_jax.parallel import constrain


@dataclasses.dataclass(frozen=True)
class SiglipVisionConfig:
  hidden_size: int = 1152
  intermediate_size: int = 4304
  num_hidden_layers: int = 26
  num_attention_heads: int = 16
  image_size: int = 384
  patch_size: int = 14
  num_channels: int = 3
  layer_norm_eps: float = 1e-6
  hidden_act: str = "gelu_pytorch_tanh"

  @property
  def tokens_per_side(self) -> int:
    return self.image_size // self.patch_size

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "SiglipVisionConfig":
    """From an HF `vision_config` dict (extra keys ignored)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    config = cls(**{k: v for k, v in d.items() if k in fields})
    check_activation(config.hidden_act, "SigLIP hidden_act")
    return config


class SiglipAttention(nn.Module):
  """Multi-head self-attention with biases on all four projections; x (N, L, D) → (N, L, D)."""
  config: SiglipVisionConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_backend: str = "xla"

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    shape, axes = (cfg.num_attention_heads, cfg.head_dim), ("embed", "heads", "head_dim")
    q = dense(shape, axes, name="q_proj", **kw)(x)
    k = dense(shape, axes, name="k_proj", **kw)(x)
    v = dense(shape, axes, name="v_proj", **kw)(x)
    attn = dot_product_attention(q, k, v, backend=self.attention_backend)
    out = dense(cfg.hidden_size, ("heads", "head_dim", "embed"), contract=(-2, -1), name="out_proj", **kw)(attn)
    return checkpoint_name(out, "attention_out")


class SiglipMLP(nn.Module):
  config: SiglipVisionConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = dense(cfg.intermediate_size, ("embed", "mlp"), name="fc1", **kw)(x)
    h = checkpoint_name(ACTIVATIONS[cfg.hidden_act](h), "mlp_hidden")
    return dense(cfg.hidden_size, ("mlp", "embed"), name="fc2", **kw)(h)


class SiglipEncoderLayer(nn.Module):
  """One pre-LN block; x (N, L, D) → (N, L, D). Scanned, so it returns (carry, None)."""
  config: SiglipVisionConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_backend: str = "xla"

  @nn.compact
  def __call__(self, x, _):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = checkpoint_name(x, "layer_input")
    h = layer_norm(cfg.layer_norm_eps, name="layer_norm1", **kw)(x)
    x = x + SiglipAttention(cfg, attention_backend=self.attention_backend, name="self_attn", **kw)(h)
    h = layer_norm(cfg.layer_norm_eps, name="layer_norm2", **kw)(x)
    x = x + SiglipMLP(cfg, name="mlp", **kw)(h)
    return constrain(x, ("batch", "length", "act_embed")), None


class SiglipVisionTower(nn.Module):
  """pixels (N, H, W, C) normalised to [-1, 1], channels-last → {"features", "last_hidden_state"} (N, L, D).

  L = (H / patch)²; params: `embeddings/{patch_embedding,position_embedding}`, `encoder/layers/*` stacked on a
  leading layer axis, `post_layernorm`.
  """
  config: SiglipVisionConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: str = "none"
  attention_backend: str = "xla"

  @nn.compact
  def __call__(self, pixels: jax.Array) -> dict[str, jax.Array]:
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = _Embeddings(cfg, name="embeddings", **kw)(pixels)
    x = SiglipEncoder(cfg, remat=self.remat, attention_backend=self.attention_backend, name="encoder", **kw)(x)
    final = layer_norm(cfg.layer_norm_eps, name="post_layernorm", **kw)(x)
    return {"features": x, "last_hidden_state": final}


class SiglipEncoder(nn.Module):
  """The stack of identical blocks, scanned: params under `layers/` with a leading layer axis."""
  config: SiglipVisionConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: str = "none"
  attention_backend: str = "xla"

  @nn.compact
  def __call__(self, x):
    layer = remat(SiglipEncoderLayer, self.remat, scanned=True)
    stack = nn.scan(layer, variable_axes={"params": 0}, split_rngs={"params": True},
                    length=self.config.num_hidden_layers, metadata_params={nn.PARTITION_NAME: "layers"})
    x, _ = stack(self.config, self.dtype, self.param_dtype, self.attention_backend, name="layers")(x, None)
    return x


class _Embeddings(nn.Module):
  config: SiglipVisionConfig
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, pixels):
    cfg = self.config
    patch = nn.Conv(cfg.hidden_size, (cfg.patch_size, cfg.patch_size), strides=(cfg.patch_size, cfg.patch_size),
                    padding="VALID", dtype=self.dtype, param_dtype=self.param_dtype,
                    kernel_init=logical(default_kernel_init, (None, None, "conv_in", "embed")),
                    bias_init=logical(nn.initializers.zeros, ("embed",)), name="patch_embedding")
    x = patch(pixels.astype(self.dtype))
    x = x.reshape(x.shape[0], -1, cfg.hidden_size)
    positions = nn.Embed(cfg.tokens_per_side**2, cfg.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
                         embedding_init=logical(default_kernel_init, ("length", "embed")), name="position_embedding")
    return x + positions(jnp.arange(x.shape[1]))[None]
