"""T2V-Turbo's LCM multistep sampling: the timesteps equal a numpy re-statement of `T2VTurboScheduler`, the step
math equals it and diffusers' `LCMScheduler` on the same timesteps, and a 4-step loop of the tiny video UNet (the port, LCM guidance embedded)
follows the re-statement driving diffusers' UNet step by step."""

import diffusers
import jax
import numpy as np
import pytest
import torch
from diffusers import LCMScheduler

from tests.models.test_unet3d import TINY, params_of, perturbed
from tests.parity import max_rel
from ureward_jax.models import unet3d
from ureward_jax.nn.embeddings import guidance_embedding
from ureward_jax.pipelines import schedulers as S


class RestatedScheduler:
  """`T2VTurboScheduler` from its published formulas, in float64 numpy."""

  def __init__(self, n, origin_steps=50):
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    self.alphas_cumprod = np.cumprod(1 - betas)
    grid = np.arange(1, origin_steps + 1) * (1000 // origin_steps) - 1
    self.timesteps = grid[::-(origin_steps // n)][:n]

  def step(self, eps, i, x, noise):
    t = self.timesteps[i]
    t_next = self.timesteps[i + 1] if i + 1 < len(self.timesteps) else t
    a, a_next = self.alphas_cumprod[t], self.alphas_cumprod[t_next]
    c_skip = 0.25 / ((t / 0.1) ** 2 + 0.25)
    c_out = (t / 0.1) / ((t / 0.1) ** 2 + 0.25) ** 0.5
    denoised = c_out * (x - np.sqrt(1 - a) * eps) / np.sqrt(a) + c_skip * x
    return np.sqrt(a_next) * denoised + np.sqrt(1 - a_next) * noise, denoised


def test_timesteps_are_t2v_turbos_stride_over_the_distillation_grid():
  # diffusers' LCMScheduler now spreads the steps with floor(linspace) instead, e.g. [999, 759, 499, 259] for 4.
  np.testing.assert_array_equal(S.lcm_timesteps(4), [999, 759, 519, 279])
  np.testing.assert_array_equal(S.lcm_timesteps(8), [999, 879, 759, 639, 519, 399, 279, 159])
  for n in range(1, 51):
    np.testing.assert_array_equal(S.lcm_timesteps(n), RestatedScheduler(n).timesteps)
  for bad in (0, 51):
    with pytest.raises(ValueError, match="num_inference_steps"):
      S.lcm_timesteps(bad)


@pytest.mark.parametrize("n", [1, 4, 8])
def test_steps_match_the_restatement_and_diffusers(n):
  schedule, restated = S.lcm(n), RestatedScheduler(n)
  reference = LCMScheduler(original_inference_steps=50, beta_schedule="scaled_linear", beta_start=0.00085,
                           beta_end=0.012, set_alpha_to_one=True)
  reference.set_timesteps(timesteps=S.lcm_timesteps(n).tolist())
  rng = np.random.default_rng(n)
  x = rng.standard_normal((2, 4, 3, 8, 8)).astype(np.float32)
  x_restated, x_reference = x.astype(np.float64), torch.from_numpy(x)
  for i in range(n):
    eps, noise = (rng.standard_normal(x.shape).astype(np.float32) for _ in range(2))
    x, denoised = S.lcm_step(x, eps, schedule.alphas[i], schedule.alphas_next[i], schedule.c_skip[i],
                             schedule.c_out[i], noise)
    x_restated, denoised_restated = restated.step(eps, i, x_restated, noise)
    np.testing.assert_allclose(denoised, denoised_restated, rtol=1e-5, atol=1e-5)
    if i + 1 < n:   # the last step's noised sample is never used (and diffusers returns `denoised` there)
      np.testing.assert_allclose(x, x_restated, rtol=1e-5, atol=1e-5)
    generator = torch.Generator().manual_seed(i)
    want = reference.step(torch.from_numpy(eps), reference.timesteps[i], x_reference, generator=generator)
    theirs_noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(i)).numpy()
    ours = S.lcm_step(np.asarray(x_reference), eps, schedule.alphas[i], schedule.alphas_next[i], schedule.c_skip[i],
                      schedule.c_out[i], theirs_noise)
    np.testing.assert_allclose(ours[1], want.denoised.numpy(), rtol=1e-5, atol=1e-5)
    x_reference = want.prev_sample


def test_guidance_embedding_is_sin_then_cos_of_w_times_1000():
  w = np.array([7.5, 5.0, 15.0])
  half = 128
  freqs = np.exp(-np.log(10000.0) * np.arange(half) / (half - 1))
  angles = (w * 1000)[:, None] * freqs[None]
  np.testing.assert_allclose(guidance_embedding(w, 256), np.concatenate([np.sin(angles), np.cos(angles)], 1),
                             rtol=0, atol=2e-3)   # fp32 angles up to 15,000 rad: the last ulps differ, not the layout


def test_four_step_sampling_of_the_tiny_video_unet_follows_the_restatement():
  ref = perturbed(diffusers.UNet3DConditionModel(**TINY), seed=11)
  config = unet3d.UNet3DConditionConfig.from_dict(dict(ref.config))
  module = unet3d.UNet3DConditionModel(config)
  params = params_of(ref, unet3d.param_shapes(config))
  apply = jax.jit(lambda x, t, context, cond: module.apply({"params": params}, x, t, context, cond))
  schedule, restated = S.lcm(4), RestatedScheduler(4)
  rng = np.random.default_rng(0)
  latents = rng.standard_normal((2, 4, 4, 8, 8)).astype(np.float32)            # (B, C, T, H, W)
  context = rng.standard_normal((2, 5, 16)).astype(np.float32)
  cond = np.array(guidance_embedding(np.full(2, 7.5), 12))
  ours, theirs = latents, latents.astype(np.float64)
  for i, t in enumerate(schedule.timesteps):
    noise = rng.standard_normal(latents.shape).astype(np.float32)
    with jax.default_matmul_precision("highest"):
      eps = np.asarray(apply(ours.transpose(0, 2, 3, 4, 1), np.full(2, t, np.float32), context, cond))
    ours, denoised = S.lcm_step(ours, eps.transpose(0, 4, 1, 2, 3), schedule.alphas[i], schedule.alphas_next[i],
                                schedule.c_skip[i], schedule.c_out[i], noise)
    ours = np.asarray(ours)
    with torch.no_grad():
      eps_ref = ref(torch.from_numpy(theirs.astype(np.float32)), torch.full((2,), int(t)),
                    torch.from_numpy(context), timestep_cond=torch.from_numpy(cond)).sample.numpy()
    theirs, denoised_ref = restated.step(eps_ref.astype(np.float64), i, theirs, noise)
    assert max_rel(denoised, denoised_ref) <= 1e-4, f"step {i}"
