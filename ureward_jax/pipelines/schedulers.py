"""Noise-schedule math for the diffusion models: SDXL-Turbo's Euler-ancestral sampling, T2V-Turbo's LCM multistep
sampling, and the DDPM forward process of Diffusion-DPO training.

Schedules (betas, ᾱ, inference timesteps and sigmas) are built once on the host in numpy and follow diffusers'
`EulerAncestralDiscreteScheduler` / `DDPMScheduler` fp32 arithmetic. They agree with diffusers to ~2 fp32 ulps, not
bit for bit: torch's fp32 `linspace` and (on AVX2 CPUs) its `sqrt` / `** 0.5` are not correctly rounded, ours are.
The per-step functions (`scale_model_input`, `step`, `lcm_step`, `add_noise`, `training_timesteps`) are pure jnp, take
the sigmas / timesteps as arguments and jit (and scan) without recompiling per step.

SDXL-Turbo samples with `euler_ancestral(1)` (or 2–4 steps): `x = noise · init_noise_sigma`, then for each i
`eps = unet(scale_model_input(x, sigmas[i]), timesteps[i])` and `x = step(x, eps, sigmas[i], sigmas[i + 1], noise_i)`.
T2V-Turbo samples with `lcm(4)`: `x = noise`, then for each i `eps = unet(x, timesteps[i])` and
`x, denoised = lcm_step(x, eps, ...[i], noise_i)`; the video is the last `denoised`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ureward_jax.errors import UserError

BETA_SCHEDULES = ("linear", "scaled_linear")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")

# What diffusers' EulerAncestralDiscreteScheduler assumes for a key a config leaves out (they are not Turbo's values).
_DIFFUSERS_DEFAULTS = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "timestep_spacing": "linspace",
    "steps_offset": 0,
}

# SDXL-Turbo's Diffusion-DPO timesteps, 250·k + 249 for k < 4: exactly the 4-step trailing inference timesteps.
TURBO_TRAIN_TIMESTEPS = (249, 499, 749, 999)
# VideoDPO's T2V-Turbo timesteps: the 50-step DDIM grid of VideoCrafter2, 20·k + 19.
DDIM50_TRAIN_TIMESTEPS = tuple(range(19, 1000, 20))
# VideoCrafter2's training schedule (its model yaml), which T2V-Turbo's LCM sampler distils from in 50 origin steps.
VIDEOCRAFTER_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                          "beta_schedule": "scaled_linear", "origin_steps": 50}


def betas(num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
          beta_schedule: str = "scaled_linear") -> np.ndarray:
  """(T,) fp32 per-step noise variances β_t.

  "linear": linspace(β_start, β_end); "scaled_linear" (Stable Diffusion / SDXL): linspace(√β_start, √β_end)², squared
  in fp32 as diffusers does. The linspace is computed in float64 and rounded once; torch's fp32 `linspace` lands
  1 ulp away on some entries, which moves the sigmas by < 1e-6 relative.
  """
  if beta_schedule == "linear":
    return np.linspace(beta_start, beta_end, num_train_timesteps).astype(np.float32)
  if beta_schedule == "scaled_linear":
    return np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps).astype(np.float32) ** 2
  raise UserError(f"beta_schedule {beta_schedule!r} is not supported; expected one of {list(BETA_SCHEDULES)}")


def _cumprod_like_torch(values: np.ndarray) -> np.ndarray:
  """fp32 cumulative product accumulated in float64, as torch's CPU `cumprod` does for fp32 (bit-identical to it);
  a plain fp32 `np.cumprod` drifts ~1e-6 relative over 1000 steps."""
  return np.cumprod(values.astype(np.float64)).astype(np.float32)


def alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                   beta_schedule: str = "scaled_linear") -> np.ndarray:
  """(T,) fp32 ᾱ_t = ∏_{s ≤ t} (1 − β_s), the signal fraction of the DDPM forward process at training timestep t."""
  return _cumprod_like_torch(np.float32(1) - betas(num_train_timesteps, beta_start, beta_end, beta_schedule))


def enforce_zero_terminal_snr(alphas_cumprod: np.ndarray) -> np.ndarray:
  """(T,) ᾱ → (T,) fp32 ᾱ' whose last entry is exactly 0 (Lin et al. 2023, "Common Diffusion Noise Schedules and
  Sample Steps are Flawed", Algorithm 1), with ᾱ'_0 = ᾱ_0 up to rounding.

  √ᾱ' = (√ᾱ − √ᾱ_T) · √ᾱ_0 / (√ᾱ_0 − √ᾱ_T). Diffusion-DPO's train.py applies this when training SDXL-Turbo (which
  was distilled to start from pure noise) and overwrites `scheduler.alphas_cumprod` with the result, betas untouched.
  Like it, we go back through per-step alphas (ᾱ'_t / ᾱ'_{t−1}) and re-take the cumulative product, so the values
  follow its fp32 arithmetic rather than returning √ᾱ'² directly (the two differ by a few ulps).
  """
  sqrt_ab = np.sqrt(np.asarray(alphas_cumprod, np.float32))
  first, last = sqrt_ab[0], sqrt_ab[-1]
  sqrt_ab = (sqrt_ab - last) * (first / (first - last))
  ab = sqrt_ab**2
  alphas = np.concatenate([ab[:1], ab[1:] / ab[:-1]])
  return _cumprod_like_torch(alphas)


def inference_timesteps(num_inference_steps: int, num_train_timesteps: int = 1000, timestep_spacing: str = "trailing",
                        steps_offset: int = 1) -> np.ndarray:
  """(n,) fp32 training timesteps the n sampling steps evaluate the UNet at, descending (Lin et al. 2023, Table 2).

  "trailing": round(arange(T, 0, −T/n)) − 1, so the first step is t = T − 1 (n=1 → [999]; n=4 → [999, 749, 499, 249]);
  "leading": arange(n)·(T // n), reversed, + steps_offset; "linspace": linspace(0, T − 1, n) reversed, which is
  fractional when (T − 1)/(n − 1) is (n=3 → [999, 499.5, 0]) — hence fp32 rather than int.
  """
  if timestep_spacing == "linspace":
    return np.linspace(0, num_train_timesteps - 1, num_inference_steps, dtype=np.float32)[::-1].copy()
  if timestep_spacing == "leading":
    step_ratio = num_train_timesteps // num_inference_steps
    timesteps = (np.arange(num_inference_steps) * step_ratio).round()[::-1].astype(np.float32)
    return timesteps + np.float32(steps_offset)
  if timestep_spacing == "trailing":
    step_ratio = num_train_timesteps / num_inference_steps
    return np.arange(num_train_timesteps, 0, -step_ratio).round().astype(np.float32) - np.float32(1)
  raise UserError(f"timestep_spacing {timestep_spacing!r} is not supported; expected one of {list(TIMESTEP_SPACINGS)}")


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: array fields; hashing by identity keeps it a static arg
class EulerAncestralSchedule:
  """The n-step Euler-ancestral sampling schedule.

  timesteps: (n,) fp32 UNet timesteps, descending (integer-valued except for some "linspace" schedules).
  sigmas: (n + 1,) fp32 noise levels σ = √((1 − ᾱ_t)/ᾱ_t) at those timesteps, then a trailing 0.
  init_noise_sigma: std of the initial latent x_T = noise · init_noise_sigma.
  """
  timesteps: np.ndarray
  sigmas: np.ndarray
  init_noise_sigma: float

  @property
  def num_inference_steps(self) -> int:
    return len(self.timesteps)


def euler_ancestral(num_inference_steps: int, num_train_timesteps: int = 1000, beta_start: float = 0.00085,
                    beta_end: float = 0.012, beta_schedule: str = "scaled_linear", timestep_spacing: str = "trailing",
                    steps_offset: int = 1) -> EulerAncestralSchedule:
  """diffusers' `EulerAncestralDiscreteScheduler.set_timesteps`; the defaults are SDXL-Turbo's scheduler config."""
  timesteps = inference_timesteps(num_inference_steps, num_train_timesteps, timestep_spacing, steps_offset)
  ab = alphas_cumprod(num_train_timesteps, beta_start, beta_end, beta_schedule)
  train_sigmas = np.sqrt((np.float32(1) - ab) / ab)  # fp32, as diffusers computes them before interpolating
  sigmas = np.interp(timesteps, np.arange(num_train_timesteps), train_sigmas)
  sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
  sigma_max = sigmas.max()
  # Trailing/linspace start at t = T − 1 with x_T ~ N(0, σ_max²); diffusers keeps √(σ_max² + 1) for "leading".
  init_noise_sigma = sigma_max if timestep_spacing in ("linspace", "trailing") else np.sqrt(sigma_max**2 + np.float32(1))
  return EulerAncestralSchedule(timesteps=timesteps, sigmas=sigmas, init_noise_sigma=float(init_noise_sigma))


def from_config(config: Mapping[str, Any], num_inference_steps: int) -> EulerAncestralSchedule:
  """The schedule a diffusers `scheduler_config.json` dict describes; keys we don't read are ignored.

  Keys it leaves out take diffusers' EulerAncestralDiscreteScheduler defaults (linear betas, "linspace"), not Turbo's.
  Raises ValueError for what the math here doesn't cover: another scheduler class, a prediction type other than
  "epsilon", explicit `trained_betas`, `rescale_betas_zero_snr`, or an unsupported beta schedule / timestep spacing.
  """
  class_name = config.get("_class_name", "EulerAncestralDiscreteScheduler")
  if class_name != "EulerAncestralDiscreteScheduler":
    raise UserError(f"scheduler class {class_name!r} is not supported; only EulerAncestralDiscreteScheduler "
                    "(drop `_class_name` to sample its betas with the Euler-ancestral step anyway)")
  if config.get("prediction_type", "epsilon") != "epsilon":
    raise UserError(f"prediction_type {config['prediction_type']!r} is not supported; only 'epsilon'")
  if config.get("trained_betas") is not None:
    raise UserError("explicit trained_betas are not supported")
  if config.get("rescale_betas_zero_snr", False):
    raise UserError("rescale_betas_zero_snr is not supported for sampling")
  settings = {key: config.get(key, default) for key, default in _DIFFUSERS_DEFAULTS.items()}
  if settings["beta_schedule"] not in BETA_SCHEDULES:
    raise UserError(f"beta_schedule {settings['beta_schedule']!r} is not supported; "
                    f"expected one of {list(BETA_SCHEDULES)}")
  if settings["timestep_spacing"] not in TIMESTEP_SPACINGS:
    raise UserError(f"timestep_spacing {settings['timestep_spacing']!r} is not supported; "
                    f"expected one of {list(TIMESTEP_SPACINGS)}")
  return euler_ancestral(num_inference_steps, **settings)


def lcm_timesteps(num_inference_steps: int, origin_steps: int = 50, num_train_timesteps: int = 1000) -> np.ndarray:
  """(n,) int32 LCM inference timesteps, descending: every (origin_steps // n)-th of the distillation grid
  (k · T / origin_steps − 1 for k = 1 … origin_steps) from its end; n = 4 → [999, 759, 519, 279]."""
  if not 1 <= num_inference_steps <= origin_steps:
    raise UserError(f"num_inference_steps must be in [1, {origin_steps}] (the distillation grid), "
                    f"got {num_inference_steps}")
  grid = np.arange(1, origin_steps + 1) * (num_train_timesteps // origin_steps) - 1
  return grid[::-(origin_steps // num_inference_steps)][:num_inference_steps].astype(np.int32)


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: array fields; hashing by identity keeps it a static arg
class LCMSchedule:
  """The n-step LCM multistep schedule (T2V-Turbo's `T2VTurboScheduler`), one entry per step, fp32 except timesteps.

  timesteps: (n,) int32. alphas: ᾱ at each timestep. alphas_next: ᾱ at the next one (the last step keeps its own,
  as the source does; its noised sample is never used). c_skip, c_out: the consistency boundary scalings
  σ_d² / ((10t)² + σ_d²) and 10t / √((10t)² + σ_d²), σ_d = 0.5.
  """
  timesteps: np.ndarray
  alphas: np.ndarray
  alphas_next: np.ndarray
  c_skip: np.ndarray
  c_out: np.ndarray

  @property
  def num_inference_steps(self) -> int:
    return len(self.timesteps)


def lcm(num_inference_steps: int, origin_steps: int = 50, num_train_timesteps: int = 1000,
        beta_start: float = 0.00085, beta_end: float = 0.012, beta_schedule: str = "scaled_linear") -> LCMSchedule:
  """The LCM schedule on VideoCrafter2's scaled-linear betas (0.00085 → 0.012, no zero-terminal SNR)."""
  timesteps = lcm_timesteps(num_inference_steps, origin_steps, num_train_timesteps)
  ab = alphas_cumprod(num_train_timesteps, beta_start, beta_end, beta_schedule)
  scaled = timesteps.astype(np.float32) / np.float32(0.1)
  sigma_data = np.float32(0.25)   # σ_d²
  return LCMSchedule(timesteps=timesteps, alphas=ab[timesteps],
                     alphas_next=ab[np.append(timesteps[1:], timesteps[-1])],
                     c_skip=(sigma_data / (scaled**2 + sigma_data)).astype(np.float32),
                     c_out=(scaled / np.sqrt(scaled**2 + sigma_data)).astype(np.float32))


def lcm_step(x: jax.Array, eps: jax.Array, alpha: jax.Array | float, alpha_next: jax.Array | float,
             c_skip: jax.Array | float, c_out: jax.Array | float, noise: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One LCM multistep step for an epsilon-predicting model → (the next sample, this step's denoised estimate), fp32.

  x0 = (x − √(1 − ᾱ)·ε) / √ᾱ; denoised = c_out·x0 + c_skip·x; next = √ᾱ_next · denoised + √(1 − ᾱ_next) · noise.
  """
  x = jnp.asarray(x, jnp.float32)
  alpha, alpha_next = jnp.asarray(alpha, jnp.float32), jnp.asarray(alpha_next, jnp.float32)
  x0 = (x - jnp.sqrt(1 - alpha) * jnp.asarray(eps, jnp.float32)) / jnp.sqrt(alpha)
  denoised = jnp.asarray(c_out, jnp.float32) * x0 + jnp.asarray(c_skip, jnp.float32) * x
  return jnp.sqrt(alpha_next) * denoised + jnp.sqrt(1 - alpha_next) * jnp.asarray(noise, jnp.float32), denoised


def scale_model_input(x: jax.Array, sigma: jax.Array | float) -> jax.Array:
  """x (any shape) at noise level σ (scalar) → x / √(σ² + 1), the UNet's input (unit variance); same dtype as x."""
  sigma = jnp.asarray(sigma, jnp.float32)
  return (jnp.asarray(x, jnp.float32) / jnp.sqrt(jnp.square(sigma) + 1)).astype(jnp.asarray(x).dtype)


def step(x: jax.Array, eps: jax.Array, sigma_from: jax.Array | float, sigma_to: jax.Array | float,
         noise: jax.Array) -> jax.Array:
  """One Euler-ancestral step from σ_from to σ_to for an epsilon-predicting model; x, eps, noise same shape → fp32.

  x0 = x − σ_from·ε; the step splits σ_to into a deterministic part σ_down and fresh noise σ_up (σ_down² + σ_up² =
  σ_to²): x' = x + (x − x0)/σ_from · (σ_down − σ_from) + noise·σ_up. Operations follow diffusers' order (e.g. no
  (x − x0)/σ = ε shortcut), so fp32 results match its `step` given the noise its generator draws. With σ_to = 0 (the
  last step; Turbo's only one) σ_up = 0 and x' = x0 up to rounding, whatever the noise.
  """
  x = jnp.asarray(x, jnp.float32)
  eps = jnp.asarray(eps, jnp.float32)
  sigma_from = jnp.asarray(sigma_from, jnp.float32)
  sigma_to = jnp.asarray(sigma_to, jnp.float32)
  pred_original = x - sigma_from * eps
  sigma_up = jnp.sqrt(jnp.square(sigma_to) * (jnp.square(sigma_from) - jnp.square(sigma_to)) / jnp.square(sigma_from))
  sigma_down = jnp.sqrt(jnp.square(sigma_to) - jnp.square(sigma_up))
  derivative = (x - pred_original) / sigma_from
  x_next = x + derivative * (sigma_down - sigma_from)
  return x_next + jnp.asarray(noise, jnp.float32) * sigma_up


def add_noise(x0: jax.Array, noise: jax.Array, timesteps: jax.Array, alphas_cumprod: jax.Array) -> jax.Array:
  """DDPM forward process (diffusers' `DDPMScheduler.add_noise`): x_t = √ᾱ_t · x0 + √(1 − ᾱ_t) · noise, fp32.

  x0, noise: (B, ...); timesteps: (B,) int training timesteps; alphas_cumprod: (T,) ᾱ, e.g. from `alphas_cumprod()`
  or `enforce_zero_terminal_snr` (with which t = T − 1 gives pure noise).
  """
  x0 = jnp.asarray(x0, jnp.float32)
  ab = jnp.asarray(alphas_cumprod, jnp.float32)[timesteps]
  ab = ab.reshape(ab.shape + (1,) * (x0.ndim - ab.ndim))
  return jnp.sqrt(ab) * x0 + jnp.sqrt(1 - ab) * jnp.asarray(noise, jnp.float32)


def training_timesteps(rng: jax.Array, n: int, values: tuple[int, ...] | None = None,
                       num_train_timesteps: int = 1000) -> jax.Array:
  """(n,) int32 training timesteps, uniform over `values`, or over [0, num_train_timesteps) when None.

  SDXL-Turbo trains at `TURBO_TRAIN_TIMESTEPS`: Diffusion-DPO's rule t = 250·(u mod 4) + 249 with u ~ randint(0,
  1000), uniform on those four because 1000 is a multiple of 4 (Turbo only ever denoises from its 4-step trailing
  timesteps). VideoDPO's T2V-Turbo run trains at `DDIM50_TRAIN_TIMESTEPS`.
  """
  if values is None:
    return jax.random.randint(rng, (n,), 0, num_train_timesteps, dtype=jnp.int32)
  return jnp.asarray(values, jnp.int32)[jax.random.randint(rng, (n,), 0, len(values))]
