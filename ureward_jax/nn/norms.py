"""Normalisation layers with the statistics in fp32 and explicit epsilons (Flax's defaults differ from PyTorch's)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ureward_jax.nn.linear import logical


class RMSNorm(nn.Module):
  """Qwen2's RMSNorm: x · rsqrt(mean(x²) + eps) in fp32, cast back to the input dtype, then times `scale`."""
  epsilon: float = 1e-6
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", logical(nn.initializers.ones, ("norm",)), (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
    return scale.astype(x.dtype) * normed.astype(x.dtype)


def layer_norm(epsilon: float, dtype, param_dtype, name: str) -> nn.LayerNorm:
  """LayerNorm with PyTorch's exact two-pass variance and the given epsilon; params `scale`, `bias`."""
  return nn.LayerNorm(epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, use_fast_variance=False,
                      scale_init=logical(nn.initializers.ones, ("norm",)),
                      bias_init=logical(nn.initializers.zeros, ("norm",)), name=name)


def group_norm(num_groups: int, epsilon: float, dtype, param_dtype, name: str) -> nn.GroupNorm:
  """GroupNorm over the last (channel) axis in `num_groups` contiguous chunks, as torch's on NCHW; exact variance
  with statistics in fp32, the given epsilon; params `scale`, `bias`."""
  return nn.GroupNorm(num_groups=num_groups, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype,
                      use_fast_variance=False, scale_init=logical(nn.initializers.ones, ("norm",)),
                      bias_init=logical(nn.initializers.zeros, ("norm",)), name=name)
