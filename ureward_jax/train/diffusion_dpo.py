"""Diffusion-DPO for SDXL(-Turbo) (Wallace et al.; DiffusionDPO's `train.py`, as UnifiedReward runs it).

Each pair's winner and loser latents are noised with the same ε at the same t; with d(x) = mean over (H, W, C) of
(ε̂(x_t) − ε)², the loss is −log σ(−½β[(d_θ(x_w) − d_θ(x_l)) − (d_ref(x_w) − d_ref(x_l))]) (β 5000 in every public
launcher; diffusers' research example writes it without the ½). Turbo checkpoints train on the zero-terminal-SNR
schedule at t ∈ {249, 499, 749, 999}, the timesteps of their 4-step sampler.

A micro-batch holds B pairs, winners first: the VAE posterior of each image (`latent_mean`, `latent_logvar`, (2B, h, w,
4), winners in rows [0, B), losers in [B, 2B)), each pair's conditioning (`prompt_embeds` (B, 77, D),
`text_embeds` (B, P), `time_ids` (B, 6)) and optionally its `weight` (B,), 0 for an unreadable pair. `encode_pairs` makes them from pixels and token ids with the frozen VAE and
text encoders, in the step's input pipeline or once ahead of training; the step samples the posterior itself, as
the original does with `latent_dist.sample()`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ureward_jax.models.unet2d import UNet2DConditionModel
from ureward_jax.pipelines import schedulers
from ureward_jax.pipelines.sdxl import micro_conditions, text_conditioning
from ureward_jax.train import trainable

PAIR_KEYS = ("latent_mean", "latent_logvar", "prompt_embeds", "text_embeds", "time_ids")


def diffusion_dpo_loss(model_pred: jax.Array, ref_pred: jax.Array, target: jax.Array, beta: float,
                       weights: jax.Array | None = None, factors: jax.Array | None = None,
                       keep_axis: int | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(loss, metrics) for predictions and target (2B, ...) laid out [winners; losers], in fp32.

  weights (B,): each pair's share of the means (0 for a pair whose images could not be read); None = all 1.
  factors (B,): multiply each pair's term, not normalised (VideoDPO's (0.72 / score)^dupbeta re-weighting).
  keep_axis: an axis the squared error is not averaged over, so that each pair has one term per position along it,
  all averaged in the loss (VideoDPO's `mean(dim=[1, 2, 3])` of (B, C, T, H, W) latents keeps W: our axis 3 of
  (B, T, H, W, C)); None averages over every non-batch axis (DiffusionDPO).
  metrics: `implicit_acc` (share of pair terms where the policy moved towards the winner more than the reference,
  inside > 0), `model_mse` / `ref_mse` (the plain denoising losses, ½ of winners' mean + losers' mean).
  """
  if model_pred.shape[0] % 2:
    raise ValueError(f"the batch must hold [winners; losers], an even number of rows; got {model_pred.shape[0]}")
  if keep_axis is not None and not 0 < keep_axis % model_pred.ndim:
    raise ValueError(f"keep_axis {keep_axis} must be a non-batch axis of a {model_pred.ndim}-d prediction")
  axes = tuple(a for a in range(1, model_pred.ndim) if keep_axis is None or a != keep_axis % model_pred.ndim)
  target = target.astype(jnp.float32)
  model_mse = jnp.mean(jnp.square(model_pred.astype(jnp.float32) - target), axis=axes)   # (2B,) or (2B, K)
  ref_mse = jnp.mean(jnp.square(ref_pred.astype(jnp.float32) - target), axis=axes)
  model_w, model_l = jnp.split(model_mse, 2)
  ref_w, ref_l = jnp.split(ref_mse, 2)
  inside = -0.5 * beta * ((model_w - model_l) - (ref_w - ref_l))
  per_pair = lambda x: x.reshape(x.shape[0], -1).mean(axis=1)  # noqa: E731
  weights = jnp.ones(inside.shape[:1]) if weights is None else weights.astype(jnp.float32)
  factors = jnp.ones(inside.shape[:1]) if factors is None else factors.astype(jnp.float32)
  mean = lambda x: jnp.sum(weights * per_pair(x)) / jnp.maximum(jnp.sum(weights), 1.0)  # noqa: E731
  metrics = {"implicit_acc": mean(inside > 0), "model_mse": 0.5 * (mean(model_w) + mean(model_l)),
             "ref_mse": 0.5 * (mean(ref_w) + mean(ref_l))}
  factors = factors.reshape(factors.shape + (1,) * (inside.ndim - 1))
  return mean(-factors * jax.nn.log_sigmoid(inside)), metrics


def training_alphas_cumprod(turbo: bool, scheduler_config: dict | None = None) -> np.ndarray:
  """ᾱ_t (1000,) of the training schedule: the scheduler's betas, rescaled to zero terminal SNR for Turbo."""
  settings = {k: v for k, v in (scheduler_config or {}).items()
              if k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")}
  alphas = schedulers.alphas_cumprod(**settings)
  return schedulers.enforce_zero_terminal_snr(alphas) if turbo else alphas


def noised_pairs(rng: jax.Array, latents: jax.Array, alphas_cumprod: jax.Array,
                 timestep_values: tuple[int, ...] | None = schedulers.TURBO_TRAIN_TIMESTEPS, paired: bool = True
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(x_t, t, ε) for latents (2B, ...) [winners; losers], t drawn from `timestep_values` (None: all timesteps):
  one (t, ε) per pair, shared by its two members (DiffusionDPO), or, not `paired`, one per member (VideoDPO)."""
  draws = latents.shape[0] // 2 if paired else latents.shape[0]
  noise_rng, t_rng = jax.random.split(rng)
  noise = jax.random.normal(noise_rng, (draws,) + latents.shape[1:], jnp.float32)
  timesteps = schedulers.training_timesteps(t_rng, draws, timestep_values, alphas_cumprod.shape[0])
  if paired:
    noise, timesteps = jnp.concatenate([noise, noise]), jnp.concatenate([timesteps, timesteps])
  return schedulers.add_noise(latents, noise, timesteps, alphas_cumprod), timesteps, noise


def sample_latents(rng: jax.Array, mb: dict[str, jax.Array], scaling_factor: float) -> jax.Array:
  """A draw from each VAE posterior (`latent_mean`, `latent_logvar`), scaled for the UNet, fp32: the original's
  `latent_dist.sample() * scaling_factor`."""
  std = jnp.exp(0.5 * mb["latent_logvar"])
  return (mb["latent_mean"] + std * jax.random.normal(rng, std.shape, jnp.float32)) * scaling_factor


def make_loss_fn(module: UNet2DConditionModel, beta: float, alphas_cumprod: np.ndarray, scaling_factor: float,
                 turbo: bool = True):
  """loss_fn(params, reference_params, micro_batch, rng) → (loss, metrics) of one micro-batch (no A axis)."""
  alphas_cumprod = jnp.asarray(alphas_cumprod, jnp.float32)

  def loss_fn(params, reference_params, mb, rng):
    posterior_rng, noise_rng = jax.random.split(rng)
    latents = sample_latents(posterior_rng, mb, scaling_factor)
    noisy, timesteps, noise = noised_pairs(noise_rng, latents, alphas_cumprod,
                                           schedulers.TURBO_TRAIN_TIMESTEPS if turbo else None)
    both = lambda x: jnp.concatenate([x, x])  # noqa: E731 - one prompt for both images of a pair
    cond = (both(mb["prompt_embeds"]), both(mb["text_embeds"]), both(mb["time_ids"]))

    def predict(p):
      return module.apply({"params": p}, noisy, timesteps, *cond)
    model_pred = predict(params)
    ref_pred = jax.lax.stop_gradient(predict(reference_params))
    return diffusion_dpo_loss(model_pred, ref_pred, noise, beta, mb.get("weight"))

  return loss_fn


def make_diffusion_dpo_step(module: UNet2DConditionModel, optimizer: optax.GradientTransformation, beta: float,
                            alphas_cumprod: np.ndarray, scaling_factor: float, turbo: bool = True):
  """step(params, opt_state, batch, reference_params, rng) → (params, opt_state, metrics) for an SDXL UNet; see
  `accumulating_step`."""
  return accumulating_step(make_loss_fn(module, beta, alphas_cumprod, scaling_factor, turbo), optimizer)


def accumulating_step(loss_fn, optimizer: optax.GradientTransformation, train_mask: dict | None = None):
  """step(params, opt_state, batch, reference_params, rng) → (params, opt_state, metrics); jit it donating the first
  two (never the reference).

  loss_fn(params, reference_params, micro_batch, rng) → (loss, metrics). batch: arrays with a leading micro-batch
  axis A (gradient accumulation), `latent_mean` among them; each micro-batch draws its posterior samples, noise and
  timesteps from `fold_in(rng, a)`. train_mask: a tree of bools laid out as the params (None: all train); frozen
  leaves get no gradient and no update, and `opt_state` is the optimiser's state of the trained subtree
  (`trainable.split(params, train_mask)[0]`). Metrics: loss, grad_norm (of the trained leaves), and the loss's metrics,
  each the mean over the micro-batches.
  """
  def step(params, opt_state, batch, reference_params, rng):
    trained, frozen = trainable.split(params, train_mask)

    def micro(grads, inputs):
      mb, index = inputs
      loss_of = lambda t: loss_fn(trainable.merge(t, frozen), reference_params, mb,  # noqa: E731
                                  jax.random.fold_in(rng, index))
      (loss, metrics), g = jax.value_and_grad(loss_of, has_aux=True)(trained)
      return jax.tree.map(jnp.add, grads, g), (loss, metrics)

    accum = batch["latent_mean"].shape[0]
    zeros = jax.tree.map(jnp.zeros_like, trained)
    grads, (losses, metrics) = jax.lax.scan(micro, zeros, (batch, jnp.arange(accum)))
    grads = jax.tree.map(lambda g: g / accum, grads)
    updates, opt_state = optimizer.update(grads, opt_state, trained)
    params = trainable.merge(optax.apply_updates(trained, updates), frozen)
    out = {"loss": jnp.mean(losses), "grad_norm": optax.tree.norm(grads)}
    return params, opt_state, out | {k: jnp.mean(v) for k, v in metrics.items()}

  return step


def adafactor(learning_rate, weight_decay: float = 1e-2, clip_threshold: float = 1.0, max_grad_norm: float | None = 1.0
              ) -> optax.GradientTransformation:
  """transformers' `Adafactor(scale_parameter=False, relative_step=False, warmup_init=False)` as DiffusionDPO uses it
  for SDXL: factored second moments (β₂ₜ = 1 − t^−0.8, ε 1e-30), each update clipped to RMS ≤ `clip_threshold`,
  decoupled weight decay p ← p − lr·wd·p, no momentum; after global gradient clipping to `max_grad_norm` (the
  accelerate clip the script applies). Matrices are factored over their two largest axes (transformers: the last
  two of the PyTorch layout), which differs for conv kernels only."""
  chain = [optax.clip_by_global_norm(max_grad_norm)] if max_grad_norm else []
  chain += [optax.scale_by_factored_rms(decay_rate=0.8, epsilon=1e-30, min_dim_size_to_factor=1),
            optax.clip_by_block_rms(clip_threshold),
            optax.add_decayed_weights(weight_decay),
            optax.scale_by_learning_rate(learning_rate)]
  return optax.chain(*chain)


def encode_pairs(vae_module, vae_params, text_encoder, text_encoder_params, text_encoder_2, text_encoder_2_params,
                 pixels: jax.Array, ids: jax.Array, ids_2: jax.Array, height: int, width: int) -> dict[str, Any]:
  """The frozen encoders' part: pixels (2B, H, W, 3) in [−1, 1] [winners; losers] and both tokenizers' ids (B, 77)
  → the `PAIR_KEYS` arrays of one micro-batch, all fp32 whatever the encoders' compute dtype (the step's inputs
  have one layout, whether encoded here or read from disk)."""
  mean, logvar = vae_module.apply({"params": vae_params}, pixels, method="encode")
  prompt_embeds, text_embeds = text_conditioning(text_encoder, text_encoder_params, text_encoder_2,
                                                 text_encoder_2_params, ids, ids_2)
  out = {"latent_mean": mean, "latent_logvar": logvar, "prompt_embeds": prompt_embeds, "text_embeds": text_embeds,
         "time_ids": micro_conditions(ids.shape[0], height, width)}
  return {key: value.astype(jnp.float32) for key, value in out.items()}
