"""The SDXL-Turbo schedule math equals diffusers': Euler-ancestral timesteps, sigmas and a whole sampling loop (same
generator noise), `DDPMScheduler.add_noise`, plus Diffusion-DPO's zero-terminal-SNR rescale and Turbo timestep rule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, EulerAncestralDiscreteScheduler

from ureward_jax.pipelines import schedulers as S

# stabilityai/sdxl-turbo scheduler/scheduler_config.json, keys the Euler-ancestral scheduler ignores included.
TURBO_CONFIG = {
    "_class_name": "EulerAncestralDiscreteScheduler",
    "_diffusers_version": "0.24.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "trailing",
    "trained_betas": None,
    "use_karras_sigmas": False,
}
SHAPE = (2, 4, 8, 8)


def diffusers_euler(config, n):
  scheduler = EulerAncestralDiscreteScheduler.from_config(config)
  scheduler.set_timesteps(n)
  return scheduler


def rel_err(ours, ref):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return np.abs(ours - ref).max() / np.abs(ref).max()


@pytest.mark.parametrize("n", [1, 2, 4])
def test_turbo_schedule_matches_diffusers(n):
  ref = diffusers_euler(TURBO_CONFIG, n)
  ours = S.from_config(TURBO_CONFIG, n)
  assert ours.num_inference_steps == n
  np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
  np.testing.assert_array_equal(ours.timesteps, {1: [999], 2: [999, 499], 4: [999, 749, 499, 249]}[n])
  assert ours.sigmas.dtype == np.float32 and ours.sigmas.shape == (n + 1,) and ours.sigmas[-1] == 0
  np.testing.assert_allclose(ours.sigmas, ref.sigmas.numpy(), rtol=1e-6, atol=0)
  np.testing.assert_allclose(ours.init_noise_sigma, float(ref.init_noise_sigma), rtol=1e-6)
  assert abs(ours.init_noise_sigma - 14.6146) < 1e-3
  # The defaults of `euler_ancestral` are Turbo's config.
  np.testing.assert_array_equal(S.euler_ancestral(n).sigmas, ours.sigmas)


@pytest.mark.parametrize("spacing,beta_schedule,n", [("leading", "scaled_linear", 4), ("linspace", "linear", 3),
                                                     ("trailing", "linear", 3), ("leading", "linear", 7)])
def test_other_spacings_and_betas_match_diffusers(spacing, beta_schedule, n):
  config = dict(TURBO_CONFIG, timestep_spacing=spacing, beta_schedule=beta_schedule, beta_start=0.0001, beta_end=0.02)
  ref = diffusers_euler(config, n)
  ours = S.from_config(config, n)
  np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
  np.testing.assert_allclose(ours.sigmas, ref.sigmas.numpy(), rtol=1e-6, atol=0)
  np.testing.assert_allclose(ours.init_noise_sigma, float(ref.init_noise_sigma), rtol=1e-6)


def test_from_config_uses_diffusers_defaults_for_missing_keys():
  ref = diffusers_euler({}, 5)
  ours = S.from_config({}, 5)
  np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
  np.testing.assert_allclose(ours.sigmas, ref.sigmas.numpy(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("change", [{"prediction_type": "v_prediction"}, {"timestep_spacing": "karras"},
                                    {"beta_schedule": "squaredcos_cap_v2"}, {"trained_betas": [0.1] * 1000},
                                    {"rescale_betas_zero_snr": True}, {"_class_name": "EulerDiscreteScheduler"}])
def test_from_config_rejects_what_it_does_not_implement(change):
  with pytest.raises(ValueError, match=next(iter(change)).lstrip("_").split("_")[0]):
    S.from_config(dict(TURBO_CONFIG, **change), 1)


def fake_eps(model_input, offset):
  """A fixed 'UNet' that depends on its (scaled) input, so `scale_model_input` matters."""
  return 0.1 * model_input + offset


@pytest.mark.parametrize("n", [1, 2, 4])
def test_sampling_loop_matches_diffusers(n):
  offset = np.random.RandomState(n).randn(*SHAPE).astype(np.float32)
  ref = diffusers_euler(TURBO_CONFIG, n)
  generator = torch.Generator().manual_seed(0)
  latents = torch.randn(SHAPE, generator=generator) * ref.init_noise_sigma
  initial = latents.numpy().copy()
  for t in ref.timesteps:
    eps = fake_eps(ref.scale_model_input(latents, t), torch.from_numpy(offset))
    latents = ref.step(eps, t, latents, generator=generator).prev_sample

  # Same generator, same draw order: the initial latent, then one draw per step (diffusers draws on the last too).
  # Both loops start from diffusers' x_T; init_noise_sigma itself is compared above.
  generator = torch.Generator().manual_seed(0)
  ours = S.from_config(TURBO_CONFIG, n)
  x_T = torch.randn(SHAPE, generator=generator).numpy() * np.float32(ours.init_noise_sigma)
  assert rel_err(x_T, initial) <= 1e-6
  noises = jnp.asarray(np.stack([torch.randn(SHAPE, generator=generator).numpy() for _ in range(n)]))

  @jax.jit
  def sample(x, sigmas, noises):
    def body(x, inputs):
      sigma_from, sigma_to, noise = inputs
      return S.step(x, fake_eps(S.scale_model_input(x, sigma_from), offset), sigma_from, sigma_to, noise), None
    return jax.lax.scan(body, x, (sigmas[:-1], sigmas[1:], noises))[0]

  final = sample(jnp.asarray(initial), jnp.asarray(ours.sigmas), noises)
  assert final.dtype == jnp.float32
  assert rel_err(final, latents.numpy()) <= 1e-5


def test_one_step_returns_predicted_x0_whatever_the_noise():
  rs = np.random.RandomState(0)
  x, eps = (jnp.asarray(rs.randn(*SHAPE).astype(np.float32)) for _ in range(2))
  sigma = S.euler_ancestral(1).sigmas[0]
  step = jax.jit(S.step)
  out = step(x, eps, sigma, 0.0, jnp.zeros(SHAPE))
  np.testing.assert_array_equal(step(x, eps, sigma, 0.0, jnp.full(SHAPE, 1e3)), out)
  np.testing.assert_allclose(out, x - sigma * eps, rtol=0, atol=2e-6 * float(jnp.abs(x - sigma * eps).max()))


def test_scale_model_input():
  x = jnp.asarray(np.random.RandomState(1).randn(*SHAPE).astype(np.float32))
  sigma = S.euler_ancestral(1).sigmas[0]
  np.testing.assert_allclose(S.scale_model_input(x, sigma), x / np.sqrt(np.float64(sigma) ** 2 + 1), rtol=1e-6)
  assert S.scale_model_input(x.astype(jnp.bfloat16), sigma).dtype == jnp.bfloat16


def test_alphas_cumprod_matches_diffusers():
  ref = DDPMScheduler.from_config(TURBO_CONFIG).alphas_cumprod.numpy()
  ours = S.alphas_cumprod()
  assert ours.dtype == np.float32 and ours.shape == (1000,)
  np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=0)


@pytest.mark.parametrize("zero_snr", [False, True])
def test_add_noise_matches_ddpm_scheduler(zero_snr):
  rs = np.random.RandomState(2)
  x0, noise = (rs.randn(4, 4, 8, 8).astype(np.float32) for _ in range(2))
  timesteps = np.array([0, 249, 617, 999])
  ddpm = DDPMScheduler.from_config(TURBO_CONFIG)
  ours_ab = S.alphas_cumprod()
  if zero_snr:  # as Diffusion-DPO's train.py does for Turbo
    ours_ab = S.enforce_zero_terminal_snr(ours_ab)
    ddpm.alphas_cumprod = torch.from_numpy(ours_ab)
  ref = ddpm.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(timesteps)).numpy()
  ours = jax.jit(S.add_noise)(x0, noise, jnp.asarray(timesteps), ours_ab)
  np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)
  if zero_snr:  # zero terminal SNR: t = 999 is pure noise
    np.testing.assert_array_equal(ours[3], noise[3])


def test_enforce_zero_terminal_snr():
  ab = S.alphas_cumprod()
  ours = S.enforce_zero_terminal_snr(ab)
  # Independent float64 formula: √ᾱ' = (√ᾱ − √ᾱ_T)·√ᾱ_0/(√ᾱ_0 − √ᾱ_T).
  s = np.sqrt(ab.astype(np.float64))
  expected = ((s - s[-1]) * s[0] / (s[0] - s[-1])) ** 2
  assert ours.dtype == np.float32 and ours.shape == ab.shape
  assert ours[-1] == 0
  np.testing.assert_allclose(ours[0], ab[0], rtol=1e-6)
  np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-8)
  assert np.all(np.diff(ours) < 0)
  # The rescale is a real change, not a no-op: mid-schedule ᾱ moves by more than the tolerance above.
  assert np.abs(ours[500] / ab[500] - 1) > 1e-2


def test_training_timesteps():
  draw = jax.jit(S.training_timesteps, static_argnums=(1, 2))
  for values in (S.TURBO_TRAIN_TIMESTEPS, S.DDIM50_TRAIN_TIMESTEPS, None):
    timesteps = draw(jax.random.PRNGKey(0), 4000, values)
    assert timesteps.shape == (4000,) and timesteps.dtype == jnp.int32
    found, counts = np.unique(np.asarray(timesteps), return_counts=True)
    if values is None:
      assert found.min() >= 0 and found.max() <= 999 and len(found) > 900
    else:
      np.testing.assert_array_equal(found, values)
      assert counts.min() > 0.5 * 4000 / len(values)   # roughly uniform
  np.testing.assert_array_equal(S.TURBO_TRAIN_TIMESTEPS, S.euler_ancestral(4).timesteps[::-1])
  assert S.DDIM50_TRAIN_TIMESTEPS[:2] == (19, 39) and S.DDIM50_TRAIN_TIMESTEPS[-1] == 999
  assert len(S.DDIM50_TRAIN_TIMESTEPS) == 50
