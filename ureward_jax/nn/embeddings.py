"""Sinusoidal embeddings of diffusion timesteps (and of SDXL's micro-conditions), always computed in fp32, and the
MLP that diffusion UNets put on them."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ureward_jax.nn.linear import dense


def timestep_embedding(timesteps: jax.Array, dim: int, *, flip_sin_to_cos: bool = True, shift: float = 0.0,
                       max_period: float = 10000.0) -> jax.Array:
  """(N,) timesteps (any real values) → (N, dim) fp32 embedding, diffusers' `get_timestep_embedding`.

  Frequencies exp(−ln(max_period)·i / (dim/2 − shift)) for i < dim/2; [sin ‖ cos] of t·freq, or [cos ‖ sin] when
  `flip_sin_to_cos`; an odd `dim` gets a zero last column.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - shift))
  angles = jnp.asarray(timesteps, jnp.float32)[:, None] * freqs[None]
  parts = [jnp.cos(angles), jnp.sin(angles)] if flip_sin_to_cos else [jnp.sin(angles), jnp.cos(angles)]
  emb = jnp.concatenate(parts, axis=-1)
  return jnp.pad(emb, ((0, 0), (0, dim % 2)))


def guidance_embedding(w: jax.Array, dim: int) -> jax.Array:
  """(N,) guidance scales → (N, dim) fp32: LCM / T2V-Turbo's `get_w_embedding`, the sinusoidal embedding of w·1000
  with frequencies exp(−ln(10⁴)·i / (dim/2 − 1)), laid out [sin ‖ cos] (unlike the timestep embedding's cos first)."""
  return timestep_embedding(jnp.asarray(w, jnp.float32) * 1000, dim, flip_sin_to_cos=False, shift=1.0)


class TimestepEmbedding(nn.Module):
  """Linear → SiLU → Linear on a sinusoidal embedding x (B, D_in) → (B, features). A `condition` (B, D_c) is first
  added through `cond_proj`, a Linear without bias (diffusers' `cond_proj_dim`: LCM's guidance embedding).
  `names`: the two Linears' names, diffusers' by default; the openai UNet's `nn.Sequential` indices are ("0", "2")."""
  features: int
  names: tuple[str, str] = ("linear_1", "linear_2")
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, condition=None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if condition is not None:
      x = x + dense(x.shape[-1], ("embed", "mlp"), use_bias=False, name="cond_proj", **kw)(condition)
    x = dense(self.features, ("embed", "mlp"), name=self.names[0], **kw)(x)
    return dense(self.features, ("mlp", "embed"), name=self.names[1], **kw)(jax.nn.silu(x))
