"""The transformer of latent-diffusion UNets (diffusers' `Transformer2DModel` and `BasicTransformerBlock`), shared by
the SDXL UNet and the video UNets: self-attention, cross-attention to the text (or a second self-attention), GEGLU.
Channels-last; names mirror diffusers' state dicts (`transformer_blocks_0/attn1/to_q`, `ff/net_0/proj`).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from ureward_jax.nn.attention import dot_product_attention
from ureward_jax.nn.linear import conv, dense
from ureward_jax.nn.norms import group_norm, layer_norm
from ureward_jax.nn.remat import remat
from ureward_jax.parallel import constrain


class Attention(nn.Module):
  """Multi-head attention without q/k/v biases; x (B, T, C), context (B, S, D) or None (self) → (B, T, C)."""
  heads: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_backend: str = "xla"

  @nn.compact
  def __call__(self, x, context=None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    width = x.shape[-1]
    context = x if context is None else context
    split = lambda t: t.reshape(*t.shape[:2], self.heads, width // self.heads)  # noqa: E731
    q = checkpoint_name(dense(width, ("embed", "heads"), use_bias=False, name="to_q", **kw)(x), "query_proj")
    k = checkpoint_name(dense(width, ("embed", "heads"), use_bias=False, name="to_k", **kw)(context), "key_proj")
    v = checkpoint_name(dense(width, ("embed", "heads"), use_bias=False, name="to_v", **kw)(context), "value_proj")
    out = dot_product_attention(split(q), split(k), split(v), backend=self.attention_backend)
    out = dense(width, ("heads", "embed"), name="to_out_0", **kw)(out.reshape(x.shape))
    return checkpoint_name(out, "attention_out")


class BasicTransformerBlock(nn.Module):
  """LN → self-attention, LN → cross-attention on the text, LN → GEGLU feed-forward; each added back. (B, T, C)."""
  heads: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_backend: str = "xla"

  @nn.compact
  def __call__(self, x, context):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    attention = functools.partial(Attention, self.heads, attention_backend=self.attention_backend, **kw)
    x = checkpoint_name(x, "layer_input")
    x = x + attention(name="attn1")(layer_norm(1e-5, name="norm1", **kw)(x))
    x = x + attention(name="attn2")(layer_norm(1e-5, name="norm2", **kw)(x), context)
    x = x + FeedForward(name="ff", **kw)(layer_norm(1e-5, name="norm3", **kw)(x))
    return constrain(x, ("batch", "length", "act_embed"))


class FeedForward(nn.Module):
  """GEGLU: Linear(C → 8C) split into (value, gate), value · GELU(gate) with the exact erf GELU, Linear(4C → C)."""
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    width = x.shape[-1]
    value, gate = jnp.split(_Proj(8 * width, name="net_0", **kw)(x), 2, axis=-1)
    hidden = checkpoint_name(value * jax.nn.gelu(gate, approximate=False), "mlp_hidden")
    return checkpoint_name(dense(width, ("mlp", "embed"), name="net_2", **kw)(hidden), "mlp_out")


class _Proj(nn.Module):
  """diffusers' `GEGLU` module: its Linear sits one level down, as `net.0.proj`."""
  features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return dense(self.features, ("embed", "mlp"), name="proj", dtype=self.dtype, param_dtype=self.param_dtype)(x)


class Transformer2DModel(nn.Module):
  """GN (eps 1e-6) → proj_in → `depth` transformer blocks over the H·W tokens → proj_out → + input. (B, H, W, C)."""
  heads: int
  depth: int
  groups: int
  linear_projection: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: str = "none"
  attention_backend: str = "xla"

  @nn.compact
  def __call__(self, x, context):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    batch, height, width, channels = x.shape
    h = group_norm(self.groups, 1e-6, name="norm", **kw)(x)
    if self.linear_projection:
      h = dense(channels, ("embed", "embed_out"), name="proj_in", **kw)(h.reshape(batch, height * width, channels))
    else:
      h = conv(channels, 1, name="proj_in", **kw)(h).reshape(batch, height * width, channels)
    block = remat(BasicTransformerBlock, self.remat)
    for i in range(self.depth):
      h = block(self.heads, attention_backend=self.attention_backend, name=f"transformer_blocks_{i}", **kw)(h, context)
    if self.linear_projection:
      h = dense(channels, ("embed_out", "embed"), name="proj_out", **kw)(h).reshape(x.shape)
    else:
      h = conv(channels, 1, name="proj_out", **kw)(h.reshape(x.shape))
    return h + x
