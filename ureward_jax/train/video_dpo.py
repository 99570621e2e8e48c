"""Video Diffusion-DPO of T2V-Turbo (VideoCrafter2's UNet), as UnifiedReward runs VideoDPO's `T2VTurboDPO`.

The loss and the accumulating step are Diffusion-DPO's (`diffusion_dpo`). What VideoDPO does differently is a
switch each, set to UnifiedReward's values by `configs/dpo_t2v_turbo.py`:
- `paired`: one (t, ε) per pair, shared by its two clips (Diffusion-DPO, the default here), or one per clip
  (VideoDPO);
- `keep_width`: VideoDPO's `mean(dim=[1, 2, 3])` of (B, C, T, H, W) latents leaves the latent width, so each pair
  has one term per column, all averaged in the loss; the default averages over every non-batch axis;
- each pair's term times its `factor` (VideoDPO: (0.72 / score)^dupbeta; UnifiedReward's pairs carry no score, so
  0.72 for all);
- t uniform on the 50-step DDIM grid (19, 39, …, 999) of the scaled-linear schedule (no zero-terminal SNR);
- fps conditioning a constant (16, although the pairs were sampled at 8); the guidance embedding goes unused
  (UnifiedReward's UNet ignores it: the UNet config's `use_w_embedding`).
Only fully connected layers train (`trainable.linear_layers`). The policy runs in training mode (the temporal convs'
dropout 0.1). So does the frozen reference, with masks of its own, by default (`reference_dropout`): VideoDPO calls
`ref_model.eval()` once, but Lightning's `fit` switches every submodule back to training mode.

A micro-batch holds B pairs: the per-frame VAE posterior of each clip (`latent_mean`, `latent_logvar`, (2B, T, h, w,
4), winners in rows [0, B), losers in [B, 2B)), each pair's caption encoding `context` (B, 77, D) and optionally its
`weight` (B,) (0 for an unreadable pair) and `factor` (B,).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ureward_jax.models.unet3d import VideoCrafterUNet
from ureward_jax.pipelines import schedulers
from ureward_jax.train import diffusion_dpo

VIDEO_PAIR_KEYS = ("latent_mean", "latent_logvar", "context")
WIDTH_AXIS = 3   # of (B, T, H, W, C) latents


def make_loss_fn(module: VideoCrafterUNet, beta: float, alphas_cumprod: np.ndarray, scaling_factor: float,
                 paired: bool = True, keep_width: bool = False, fps: float = 16.0,
                 timestep_values: tuple[int, ...] | None = schedulers.DDIM50_TRAIN_TIMESTEPS, training: bool = True,
                 reference_dropout: bool = True):
  """loss_fn(params, reference_params, micro_batch, rng) → (loss, metrics) of one micro-batch (no A axis).
  `training` False runs both UNets in evaluation mode (no dropout): held-out metrics. `reference_dropout` False keeps
  the reference in evaluation mode while the policy trains."""
  alphas_cumprod = jnp.asarray(alphas_cumprod, jnp.float32)

  def loss_fn(params, reference_params, mb, rng):
    posterior_rng, noise_rng, dropout_rng = jax.random.split(rng, 3)
    latents = diffusion_dpo.sample_latents(posterior_rng, mb, scaling_factor)
    noisy, timesteps, noise = diffusion_dpo.noised_pairs(noise_rng, latents, alphas_cumprod, timestep_values, paired)
    context = jnp.concatenate([mb["context"], mb["context"]])   # one caption for both clips of a pair

    def predict(p, deterministic, masks_rng):
      return module.apply({"params": p}, noisy, timesteps, context, fps, deterministic=deterministic,
                          rngs={"dropout": masks_rng})
    model_pred = predict(params, not training, dropout_rng)
    ref_pred = jax.lax.stop_gradient(predict(reference_params, not (training and reference_dropout),
                                             jax.random.fold_in(dropout_rng, 1)))
    return diffusion_dpo.diffusion_dpo_loss(model_pred, ref_pred, noise, beta, mb.get("weight"), mb.get("factor"),
                                            keep_axis=WIDTH_AXIS if keep_width else None)

  return loss_fn


def make_video_dpo_step(module: VideoCrafterUNet, optimizer: optax.GradientTransformation, beta: float,
                        alphas_cumprod: np.ndarray, scaling_factor: float, train_mask: dict | None = None,
                        **options):
  """step(params, opt_state, batch, reference_params, rng) → (params, opt_state, metrics) (`diffusion_dpo.
  accumulating_step`); `options` are `make_loss_fn`'s switches. With `train_mask` (`trainable.linear_layers(params)`
  for VideoDPO's choice), `opt_state` belongs to the trained subtree."""
  loss_fn = make_loss_fn(module, beta, alphas_cumprod, scaling_factor, **options)
  return diffusion_dpo.accumulating_step(loss_fn, optimizer, train_mask)


def encode_video_pairs(vae_module, vae_params, text_encoder, text_encoder_params, pixels: jax.Array,
                       ids: jax.Array) -> dict[str, Any]:
  """The frozen encoders' part: clips (2B, T, H, W, 3) in [−1, 1] [winners; losers] and the caption ids (B, 77) →
  the `VIDEO_PAIR_KEYS` arrays of one micro-batch, fp32. The VAE encodes each frame on its own (frames folded into
  the batch); the caption is the OpenCLIP text tower's "penultimate" output (23 blocks, then `ln_final`)."""
  clips, frames = pixels.shape[:2]
  mean, logvar = vae_module.apply({"params": vae_params}, pixels.reshape(clips * frames, *pixels.shape[2:]),
                                  method="encode")
  unfold = lambda x: x.reshape(clips, frames, *x.shape[1:]).astype(jnp.float32)  # noqa: E731
  text = text_encoder.apply({"params": text_encoder_params}, ids, output_hidden_states=True)
  return {"latent_mean": unfold(mean), "latent_logvar": unfold(logvar),
          "context": text["penultimate_normed"].astype(jnp.float32)}
