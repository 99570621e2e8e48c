"""Diffusion-DPO: the loss against an independent formula, the shared noise of a pair, the optimiser against
transformers' Adafactor, and a short run on a tiny UNet that learns the preferences."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers

from tests.tiny_sdxl import UNET
from ureward_jax.models import unet2d
from ureward_jax.pipelines import schedulers
from ureward_jax.train import optim
from ureward_jax.train.accumulate import accumulating_step
from ureward_jax.train.tasks import diffusion_dpo as D


def numpy_loss(model_pred, ref_pred, target, beta):
  """DiffusionDPO's train.py, written out in float64."""
  mse = lambda p: ((p.astype(np.float64) - target) ** 2).reshape(len(p), -1).mean(1)  # noqa: E731
  model_w, model_l = np.split(mse(model_pred), 2)
  ref_w, ref_l = np.split(mse(ref_pred), 2)
  inside = -0.5 * beta * ((model_w - model_l) - (ref_w - ref_l))
  return np.mean(np.log1p(np.exp(-inside))), np.mean(inside > 0)


@pytest.mark.parametrize("beta", [2.0, 5000.0])
def test_loss_equals_the_formula(beta):
  rng = np.random.default_rng(0)
  target = rng.normal(size=(6, 4, 5, 3)).astype(np.float32)
  model_pred = target + 0.3 * rng.normal(size=target.shape).astype(np.float32)
  ref_pred = target + 0.3 * rng.normal(size=target.shape).astype(np.float32)
  loss, metrics = D.diffusion_dpo_loss(model_pred, ref_pred, target, beta)
  want_loss, want_acc = numpy_loss(model_pred, ref_pred, target, beta)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  assert float(metrics["implicit_acc"]) == pytest.approx(want_acc)
  mse = ((model_pred - target) ** 2).reshape(6, -1).mean(1)
  assert float(metrics["model_mse"]) == pytest.approx(0.5 * (mse[:3].mean() + mse[3:].mean()), rel=1e-5)
  # A zero-weight pair (unreadable images) counts for nothing.
  weighted, _ = D.diffusion_dpo_loss(model_pred, ref_pred, target, beta, jnp.asarray([1.0, 0.0, 1.0]))
  keep = np.asarray([0, 2, 3, 5])
  np.testing.assert_allclose(weighted, numpy_loss(model_pred[keep], ref_pred[keep], target[keep], beta)[0], rtol=1e-5)
  with pytest.raises(ValueError, match="even number"):
    D.diffusion_dpo_loss(model_pred[:5], ref_pred[:5], target[:5], beta)


def numpy_videodpo_loss(model_pred, ref_pred, target, beta, factors):
  """VideoDPO's ddpm3d.py loss written out in float64 on its (B, C, T, H, W) layout: mean(dim=[1, 2, 3]) keeps W."""
  to_theirs = lambda x: x.astype(np.float64).transpose(0, 4, 1, 2, 3)  # noqa: E731 - ours (B, T, H, W, C)
  mse = lambda p: ((to_theirs(p) - to_theirs(target)) ** 2).mean(axis=(1, 2, 3))  # noqa: E731 - (2B, W)
  model_w, model_l = np.split(mse(model_pred), 2)
  ref_w, ref_l = np.split(mse(ref_pred), 2)
  inside = -0.5 * beta * ((model_w - model_l) - (ref_w - ref_l))
  return np.mean(factors[:, None] * np.log1p(np.exp(-inside))), np.mean(inside > 0)


def test_videodpo_per_width_reduction_and_pair_factors_equal_the_formula():
  rng = np.random.default_rng(3)
  target = rng.normal(size=(6, 2, 4, 5, 4)).astype(np.float32)   # 3 pairs of (T, H, W, C) latents
  model_pred = target + 0.3 * rng.normal(size=target.shape).astype(np.float32)
  ref_pred = target + 0.3 * rng.normal(size=target.shape).astype(np.float32)
  factors = np.array([0.72, 0.72 / 0.5, 0.72 / 0.9])   # (0.72 / score)^1; no score: 0.72
  loss, metrics = D.diffusion_dpo_loss(model_pred, ref_pred, target, 50.0, factors=jnp.asarray(factors), keep_axis=3)
  want_loss, want_acc = numpy_videodpo_loss(model_pred, ref_pred, target, 50.0, factors)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  assert float(metrics["implicit_acc"]) == pytest.approx(want_acc)
  full, _ = D.diffusion_dpo_loss(model_pred, ref_pred, target, 50.0)
  assert abs(float(full) - want_loss) > 1e-3   # the reduction changes the loss
  with pytest.raises(ValueError, match="keep_axis"):
    D.diffusion_dpo_loss(model_pred, ref_pred, target, 50.0, keep_axis=0)


def test_a_pair_shares_its_noise_and_timestep():
  latents = jnp.asarray(np.random.default_rng(1).normal(size=(8, 4, 4, 4)), jnp.float32)
  alphas = jnp.asarray(D.training_alphas_cumprod(turbo=True))
  noisy, t, noise = D.noised_pairs(jax.random.key(0), latents, alphas)
  np.testing.assert_array_equal(t[:4], t[4:])
  np.testing.assert_array_equal(noise[:4], noise[4:])
  assert set(np.asarray(t).tolist()) <= {249, 499, 749, 999}
  # VideoDPO: every member its own noise and timestep, from the DDIM-50 grid.
  _, own_t, own_noise = D.noised_pairs(jax.random.key(0), jnp.zeros((64, 2)), alphas,
                                       schedulers.DDIM50_TRAIN_TIMESTEPS, paired=False)
  assert not np.array_equal(own_t[:32], own_t[32:]) and not np.array_equal(own_noise[:32], own_noise[32:])
  assert set(np.asarray(own_t).tolist()) <= set(schedulers.DDIM50_TRAIN_TIMESTEPS)
  np.testing.assert_allclose(noisy, schedulers.add_noise(latents, noise, t, alphas), rtol=1e-6)
  # Zero terminal SNR: at t = 999 nothing of the image is left.
  assert float(alphas[999]) == 0.0 and float(alphas[0]) == pytest.approx(1 - 0.00085, rel=1e-6)


def test_adafactor_matches_transformers():
  """Three steps on a matrix (factored moments) and a vector, with weight decay and RMS clipping; our kernels are
  the transpose of PyTorch's weights, which a factored second moment does not mind."""
  rng = np.random.default_rng(2)
  weight, bias = rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=(6,)).astype(np.float32)
  grads = [(rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=(6,)).astype(np.float32)) for _ in range(3)]
  torch_params = [torch.nn.Parameter(torch.from_numpy(weight.copy())), torch.nn.Parameter(torch.from_numpy(bias.copy()))]
  reference = transformers.optimization.Adafactor(torch_params, lr=1e-2, scale_parameter=False, relative_step=False,
                                                  warmup_init=False, clip_threshold=1.0, weight_decay=1e-2)
  ours = optim.adafactor(1e-2, weight_decay=1e-2)
  params = {"kernel": jnp.asarray(weight.T), "bias": jnp.asarray(bias)}
  state = ours.init(params)
  for g_weight, g_bias in grads:
    torch_params[0].grad, torch_params[1].grad = torch.from_numpy(g_weight), torch.from_numpy(g_bias)
    reference.step()
    updates, state = ours.update({"kernel": jnp.asarray(g_weight.T), "bias": jnp.asarray(g_bias)}, state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(params["kernel"].T, torch_params[0].detach().numpy(), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(params["bias"], torch_params[1].detach().numpy(), rtol=1e-5, atol=1e-7)


def synthetic_pairs(rng, pairs, side=8):
  """Winners hold one latent pattern and losers another; the prompts are random."""
  cfg = unet2d.UNet2DConditionConfig.from_dict(UNET)
  pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
  pattern = np.sin(np.arange(side)[:, None, None] + np.arange(4))[None].repeat(side, 2).astype(np.float32)
  winners = np.broadcast_to(pattern, (pairs, side, side, 4))
  losers = rng.normal(size=(pairs, side, side, 4)).astype(np.float32) * 2
  return {"latent_mean": np.concatenate([winners, losers]) / 0.13025,
          "latent_logvar": np.full((2 * pairs, side, side, 4), -30.0, np.float32),
          "prompt_embeds": rng.normal(size=(pairs, 7, cfg.cross_attention_dim)).astype(np.float32),
          "text_embeds": rng.normal(size=(pairs, pooled)).astype(np.float32),
          "time_ids": np.tile(np.float32([[64, 64, 0, 0, 64, 64]]), (pairs, 1))}


def test_short_run_learns_the_preferences():
  cfg = unet2d.UNet2DConditionConfig.from_dict(UNET)
  module = unet2d.UNet2DConditionModel(cfg)
  reference = nn.unbox(unet2d.init_params(cfg, jax.random.key(0)))
  alphas = D.training_alphas_cumprod(turbo=True)
  optimizer = optax.adamw(3e-4)
  # β 500 rather than SDXL's 5000: this toy's denoising errors differ far more between images than a real model's.
  loss_fn = D.diffusion_dpo_loss_fn(module, beta=500.0, alphas_cumprod=alphas, scaling_factor=0.13025, turbo=True)
  step = jax.jit(accumulating_step(loss_fn, optimizer), donate_argnums=(0, 1))
  rng = np.random.default_rng(3)
  held_out = synthetic_pairs(rng, 16)
  evaluate = jax.jit(lambda p: loss_fn(p, reference, held_out, jax.random.key(99)))
  loss, _ = evaluate(reference)
  # Policy = reference: every pair's inside term is 0 up to rounding, which β magnifies a little.
  assert float(loss) == pytest.approx(np.log(2), abs=1e-3)
  params, opt_state = jax.tree.map(jnp.copy, reference), optimizer.init(reference)
  for i in range(20):
    batch = jax.tree.map(lambda x: x[None], synthetic_pairs(rng, 4))
    params, opt_state, metrics = step(params, opt_state, batch, reference, jax.random.key(i))
  loss, metrics = evaluate(params)
  assert float(metrics["implicit_acc"]) >= 0.75 and float(loss) < 0.3
