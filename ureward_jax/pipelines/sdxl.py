"""The SDXL-Turbo text-to-image pipeline (diffusers' `StableDiffusionXLPipeline` at guidance scale 0): prompts →
both CLIP text encoders → Euler-ancestral sampling with the UNet → VAE decode.

Conditioning as SDXL builds it: `prompt_embeds` (B, 77, 2048) = the penultimate hidden states (before the final
LayerNorm) of both encoders, concatenated; `text_embeds` (B, 1280) = encoder 2's projected EOS state; `time_ids`
(B, 6) = (height, width, 0, 0, height, width) in pixels. No classifier-free guidance (Turbo is distilled without).

Each image draws its noise from `fold_in(key(seed), index)`, so an image depends on the seed and its index only,
never on the batch it was generated in.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ureward_jax import pretrained
from ureward_jax.errors import UserError
from ureward_jax.pipelines import schedulers
from ureward_jax.processing.clip_tokenizer import CLIPTokenizer
from ureward_jax.runners.clip_text import CLIPTextEncoder
from ureward_jax.runners.unet import UNet
from ureward_jax.runners.vae import VAE


@dataclasses.dataclass
class SDXLPipeline:
  """A converted SDXL pipeline folder, loaded (`ureward_jax.load` of a folder made by `converters.sdxl`)."""
  unet: UNet
  vae: VAE
  text_encoder: CLIPTextEncoder
  text_encoder_2: CLIPTextEncoder
  tokenizer: CLIPTokenizer
  tokenizer_2: CLIPTokenizer
  scheduler_config: dict

  @classmethod
  def from_folder(cls, path: str | Path, dtype=jnp.float32, param_dtype=None) -> "SDXLPipeline":
    """Components in the compute `dtype`; the VAE stays fp32 (SDXL's overflows in fp16: `force_upcast`)."""
    path = Path(path)
    scheduler_config = pretrained.read_scheduler(path)
    components = {name: pretrained.load(path / name, dtype=dtype, param_dtype=param_dtype)
                  for name in ("unet", "text_encoder", "text_encoder_2")}
    vae = pretrained.load(path / "vae", dtype=jnp.float32, param_dtype=param_dtype)
    return cls(vae=vae, tokenizer=CLIPTokenizer(path / "tokenizer"), tokenizer_2=CLIPTokenizer(path / "tokenizer_2"),
               scheduler_config=scheduler_config, **components)

  @property
  def vae_scale_factor(self) -> int:
    return self.vae.config.downsample_factor

  @property
  def params(self) -> dict:
    return {"unet": self.unet.params, "vae": self.vae.params, "text_encoder": self.text_encoder.params,
            "text_encoder_2": self.text_encoder_2.params}

  def tokenize(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    return self.tokenizer(prompts), self.tokenizer_2(prompts)

  def encode_prompt(self, params: dict, ids: jax.Array, ids_2: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Token ids (B, 77) of both tokenizers → (prompt_embeds (B, 77, D1 + D2), pooled text_embeds (B, P))."""
    return text_conditioning(self.text_encoder.module, params["text_encoder"], self.text_encoder_2.module,
                             params["text_encoder_2"], ids, ids_2)

  def denoise(self, params: dict, prompt_embeds, text_embeds, time_ids, noise,
              schedule: schedulers.EulerAncestralSchedule):
    """Latents (B, h, w, 4) after `schedule`'s steps; noise (steps + 1, B, h, w, 4): the initial latents' then each
    step's ancestral noise (the last step's is unused when it ends at σ = 0)."""
    sigmas = np.asarray(schedule.sigmas)
    latents = noise[0] * schedule.init_noise_sigma

    def one_step(x, step):
      timestep, sigma_from, sigma_to, step_noise = step
      eps = self.unet.module.apply({"params": params["unet"]}, schedulers.scale_model_input(x, sigma_from), timestep,
                                   prompt_embeds, text_embeds, time_ids)
      return schedulers.step(x, eps.astype(jnp.float32), sigma_from, sigma_to, step_noise), None
    steps = (np.asarray(schedule.timesteps, np.float32), sigmas[:-1], sigmas[1:], noise[1:])
    latents, _ = jax.lax.scan(one_step, latents, steps)
    return latents

  def decode(self, params: dict, latents) -> jax.Array:
    """Latents (B, h, w, 4) → images (B, H, W, 3) in [0, 1]: unscaled by the VAE's factor, decoded, mapped from
    [−1, 1] and clipped, as diffusers' image processor does."""
    cfg = self.vae.config
    latents = latents / cfg.scaling_factor + (cfg.shift_factor or 0.0)
    pixels = self.vae.module.apply({"params": params["vae"]}, latents, method="decode")
    return jnp.clip(pixels / 2 + 0.5, 0.0, 1.0)

  def schedule(self, num_inference_steps: int) -> schedulers.EulerAncestralSchedule:
    return schedulers.from_config(self.scheduler_config, num_inference_steps)

  def noise(self, seed: int, indices: Sequence[int], steps: int, height: int, width: int) -> jax.Array:
    """(steps + 1, B, h, w, 4) fp32 noise for the images numbered `indices`, each from `fold_in(key(seed), index)`."""
    f = self.vae_scale_factor
    shape = (steps + 1, height // f, width // f, self.unet.config.in_channels)
    keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(seed), jnp.asarray(indices, jnp.uint32))
    return jax.vmap(lambda k: jax.random.normal(k, shape, jnp.float32), out_axes=1)(keys)

  @functools.cached_property
  def _generate(self):
    def generate(params, ids, ids_2, noise, steps):
      schedule = self.schedule(steps)
      prompt_embeds, text_embeds = self.encode_prompt(params, ids, ids_2)
      batch, height, width = noise.shape[1], *(n * self.vae_scale_factor for n in noise.shape[2:4])
      time_ids = micro_conditions(batch, height, width)
      return self.decode(params, self.denoise(params, prompt_embeds, text_embeds, time_ids, noise, schedule))
    return jax.jit(generate, static_argnums=4)

  def __call__(self, prompts: Sequence[str], num_inference_steps: int = 1, height: int = 512, width: int = 512,
               seed: int = 0, indices: Sequence[int] | None = None) -> np.ndarray:
    """Images (B, H, W, 3) uint8 for `prompts`; image b is numbered `indices[b]` (default 0..B−1) for its noise."""
    f = self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)
    if height % f or width % f:
      raise UserError(f"height and width must be multiples of {f}, got {height}×{width}")
    indices = range(len(prompts)) if indices is None else indices
    if len(indices) != len(prompts):
      raise ValueError(f"{len(indices)} indices for {len(prompts)} prompts")
    ids, ids_2 = self.tokenize(prompts)
    noise = self.noise(seed, indices, num_inference_steps, height, width)
    images = self._generate(self.params, ids, ids_2, noise, num_inference_steps)
    return np.asarray(jnp.round(images * 255)).astype(np.uint8)


def text_conditioning(text_encoder, params, text_encoder_2, params_2, ids, ids_2) -> tuple[jax.Array, jax.Array]:
  """SDXL's text conditioning from the two `CLIPTextModel` modules: (the penultimate hidden states of both,
  concatenated (B, 77, D1 + D2); encoder 2's projected EOS state (B, P))."""
  first = text_encoder.apply({"params": params}, ids, output_hidden_states=True)
  second = text_encoder_2.apply({"params": params_2}, ids_2, output_hidden_states=True)
  return jnp.concatenate([first["hidden_states"][-2], second["hidden_states"][-2]], axis=-1), second["text_embeds"]


def micro_conditions(batch: int, height: int, width: int) -> jax.Array:
  """SDXL's `add_time_ids` (B, 6) for uncropped images generated at their original size: (H, W, 0, 0, H, W)."""
  return jnp.broadcast_to(jnp.asarray([height, width, 0, 0, height, width], jnp.float32), (batch, 6))


def _load(path, config, dtype=jnp.float32, param_dtype=None, mesh=None, **module_kwargs) -> SDXLPipeline:
  """The `pretrained` loader of `sdxl` folders. The components load onto one device each; `mesh` and
  `module_kwargs` are not used."""
  del config, mesh, module_kwargs
  return SDXLPipeline.from_folder(path, dtype=dtype, param_dtype=param_dtype)


pretrained.register("sdxl", _load)
