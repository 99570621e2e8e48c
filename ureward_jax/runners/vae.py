"""The loaded VAE, with diffusers' numpy interface on NCHW arrays around the channels-last `models/vae.py`: what
`ureward_jax.load` returns for an `autoencoder_kl` folder."""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ureward_jax import pretrained
from ureward_jax.models.vae import AutoencoderKL, AutoencoderKLConfig
from ureward_jax.runners.loaded import Loaded


@dataclasses.dataclass
class VAE(Loaded):
  """A loaded VAE: `config`, `params`, the Flax `module`, and diffusers-like numpy methods on NCHW arrays.

  `encode(x)` is diffusers' `vae.encode(x).latent_dist.mode()` (or `.sample()` when asked) and `decode(z)` is
  `vae.decode(z).sample`. Neither applies `config.scaling_factor` / `shift_factor`: scale as the pipeline does.
  SDXL's VAE overflows in fp16 (`force_upcast`), so the default compute dtype is fp32.
  """
  config: AutoencoderKLConfig
  module: AutoencoderKL
  module_class: ClassVar[type[nn.Module]] = AutoencoderKL

  @functools.cached_property
  def _encode(self):
    return jax.jit(functools.partial(self.module.apply, method="encode"))

  @functools.cached_property
  def _decode(self):
    return jax.jit(functools.partial(self.module.apply, method="decode"))

  def encode_distribution(self, sample) -> tuple[np.ndarray, np.ndarray]:
    """(mean, logvar) of the latent Gaussian, each (B, latent_channels, H/f, W/f) fp32, for pixels (B, C, H, W) in
    [-1, 1]; logvar clamped to [-30, 20] as diffusers' `DiagonalGaussianDistribution` does."""
    mean, logvar = self._encode({"params": self.params}, np.asarray(sample).transpose(0, 2, 3, 1))
    return np.asarray(mean).transpose(0, 3, 1, 2), np.asarray(logvar).transpose(0, 3, 1, 2)

  def encode(self, sample, sample_posterior: bool = False, seed: int = 0) -> np.ndarray:
    """Unscaled latents (B, latent_channels, H/f, W/f) for pixels (B, C, H, W) in [-1, 1]: the mean, or with
    `sample_posterior` mean + std · ε with ε ~ N(0, 1) from `jax.random.key(seed)` (not torch's random stream)."""
    mean, logvar = self.encode_distribution(sample)
    if not sample_posterior:
      return mean
    noise = np.asarray(jax.random.normal(jax.random.key(seed), mean.shape, jnp.float32))
    return mean + np.exp(0.5 * logvar) * noise

  def decode(self, latents) -> np.ndarray:
    """Pixels (B, out_channels, h·f, w·f) fp32, roughly in [-1, 1], for unscaled latents (B, latent_channels, h, w)."""
    out = self._decode({"params": self.params}, np.asarray(latents).transpose(0, 2, 3, 1))
    return np.asarray(out).transpose(0, 3, 1, 2)


pretrained.register("autoencoder_kl", pretrained.single_device(AutoencoderKLConfig, VAE))
