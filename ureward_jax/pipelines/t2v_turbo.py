"""The T2V-Turbo (VC2) text-to-video pipeline (`T2VTurboVC2Pipeline`): prompts → OpenCLIP-H text encoder → LCM
multistep sampling with VideoCrafter2's UNet, the guidance scale embedded (one forward per step, no unconditional
pass) → the SD VAE decoding frame by frame.

Conditioning: the text encoder's "penultimate" output (23 of 24 blocks, then `ln_final`) (B, 77, 1024); the fps
the UNet is told; `guidance_embedding(w, 256)` into `time_cond_proj`. Latents (B, T, H/8, W/8, 4), channels-last.
Each step feeds the sampler's next noised sample back; the video is the last step's denoised estimate.

Each video draws its noise from `fold_in(key(seed), index)`, so a video depends on the seed and its index only,
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
from ureward_jax.nn.embeddings import guidance_embedding
from ureward_jax.pipelines import schedulers
from ureward_jax.processing.clip_tokenizer import OpenCLIPTokenizer
from ureward_jax.runners.clip_text import CLIPTextEncoder
from ureward_jax.runners.unet import VideoCrafter
from ureward_jax.runners.vae import VAE


@dataclasses.dataclass
class T2VTurboPipeline:
  """A converted T2V-Turbo folder, loaded (`ureward_jax.load` of a folder made by `converters.t2v_turbo`)."""
  unet: VideoCrafter
  vae: VAE
  text_encoder: CLIPTextEncoder
  tokenizer: OpenCLIPTokenizer
  scheduler_config: dict

  @classmethod
  def from_folder(cls, path: str | Path, dtype=jnp.float32, param_dtype=None) -> "T2VTurboPipeline":
    """Components in the compute `dtype`; the VAE stays fp32. The UNet applies the guidance embedding, which
    T2V-Turbo is distilled with (UnifiedReward's DPO copy ignores it; see `VideoCrafterUNetConfig`)."""
    path = Path(path)
    scheduler_config = pretrained.read_scheduler(path)
    unet = pretrained.load(path / "unet", dtype=dtype, param_dtype=param_dtype)
    if unet.config.time_cond_proj_dim is None:
      raise UserError(f"{path / 'unet'} has no guidance projection (time_cond_proj): a plain VideoCrafter2 UNet, "
                      "not T2V-Turbo; convert it with T2V-Turbo's LoRA (--lora unet_lora.pt)")
    unet = VideoCrafter.from_params(dataclasses.replace(unet.config, use_w_embedding=True), unet.params, dtype=dtype)
    return cls(unet=unet, vae=pretrained.load(path / "vae", dtype=jnp.float32, param_dtype=param_dtype),
               text_encoder=pretrained.load(path / "text_encoder", dtype=dtype, param_dtype=param_dtype),
               tokenizer=OpenCLIPTokenizer(path / "tokenizer"), scheduler_config=scheduler_config)

  @property
  def vae_scale_factor(self) -> int:
    return self.vae.config.downsample_factor

  @property
  def params(self) -> dict:
    return {"unet": self.unet.params, "vae": self.vae.params, "text_encoder": self.text_encoder.params}

  def encode_prompt(self, params: dict, ids: jax.Array) -> jax.Array:
    """Token ids (B, 77) → the UNet's context (B, 77, D): the penultimate block's states after `ln_final`."""
    return self.text_encoder.module.apply({"params": params["text_encoder"]}, ids,
                                          output_hidden_states=True)["penultimate_normed"]

  def schedule(self, num_inference_steps: int) -> schedulers.LCMSchedule:
    cfg = self.scheduler_config
    return schedulers.lcm(num_inference_steps, cfg["origin_steps"], cfg["num_train_timesteps"], cfg["beta_start"],
                          cfg["beta_end"], cfg["beta_schedule"])

  def denoise(self, params: dict, context, noise, schedule: schedulers.LCMSchedule, guidance_scale, fps):
    """The final denoised latents (B, T, h, w, 4); noise (steps + 1, B, T, h, w, 4): the initial latents' then the
    noise each step adds to its estimate (the last step's is unused: its estimate is the output)."""
    batch = noise.shape[1]
    cond = guidance_embedding(jnp.full((batch,), guidance_scale, jnp.float32), self.unet.config.time_cond_proj_dim)

    def one_step(carry, step):
      x, _ = carry
      timestep, alpha, alpha_next, c_skip, c_out, step_noise = step
      eps = self.unet.module.apply({"params": params["unet"]}, x, jnp.full((batch,), timestep), context, fps, cond)
      return schedulers.lcm_step(x, eps.astype(jnp.float32), alpha, alpha_next, c_skip, c_out, step_noise), None
    s = schedule
    steps = (s.timesteps.astype(np.float32), s.alphas, s.alphas_next, s.c_skip, s.c_out, noise[1:])
    (_, denoised), _ = jax.lax.scan(one_step, (noise[0], jnp.zeros_like(noise[0])), steps)
    return denoised

  def decode(self, params: dict, latents) -> jax.Array:
    """Latents (B, T, h, w, 4) → video (B, T, H, W, 3) in [0, 1], one frame of every video at a time (the VAE is
    per image): unscaled by the VAE's factor, decoded, clamped to [−1, 1] and mapped by (x + 1) / 2, in the order
    VideoCrafter's `save_videos` takes."""
    def frame(z):
      pixels = self.vae.module.apply({"params": params["vae"]}, z / self.vae.config.scaling_factor, method="decode")
      return (jnp.clip(pixels, -1.0, 1.0) + 1.0) / 2.0
    return jax.lax.map(frame, latents.swapaxes(0, 1)).swapaxes(0, 1)

  def noise(self, seed: int, indices: Sequence[int], steps: int, frames: int, height: int, width: int) -> jax.Array:
    """(steps + 1, B, T, h, w, 4) fp32 noise for the videos numbered `indices`, each from `fold_in(key(seed), index)`."""
    f = self.vae_scale_factor
    shape = (steps + 1, frames, height // f, width // f, self.unet.config.in_channels)
    keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(seed), jnp.asarray(indices, jnp.uint32))
    return jax.vmap(lambda k: jax.random.normal(k, shape, jnp.float32), out_axes=1)(keys)

  @functools.cached_property
  def _generate(self):
    def generate(params, ids, noise, guidance_scale, fps, steps):
      context = self.encode_prompt(params, ids)
      return self.decode(params, self.denoise(params, context, noise, self.schedule(steps), guidance_scale, fps))
    return jax.jit(generate, static_argnums=5)

  def __call__(self, prompts: Sequence[str], num_inference_steps: int = 4, frames: int = 16, height: int = 320,
               width: int = 512, fps: int = 8, guidance_scale: float = 7.5, seed: int = 0,
               indices: Sequence[int] | None = None) -> np.ndarray:
    """Videos (B, T, H, W, 3) uint8 for `prompts`, truncated from [0, 1] · 255 as VideoCrafter's `save_videos`
    does; video b is numbered `indices[b]` (default 0..B−1) for its noise. Defaults: UnifiedReward's data
    generation (4 steps, 16 frames at 320×512, fps 8, guidance 7.5)."""
    f = self.vae_scale_factor * 2 ** (len(self.unet.config.channel_mult) - 1)
    if height % f or width % f:
      raise UserError(f"height and width must be multiples of {f}, got {height}×{width}")
    if frames < 1:
      raise UserError(f"frames must be at least 1, got {frames}")
    indices = range(len(prompts)) if indices is None else indices
    if len(indices) != len(prompts):
      raise ValueError(f"{len(indices)} indices for {len(prompts)} prompts")
    ids = self.tokenizer(prompts)
    noise = self.noise(seed, indices, num_inference_steps, frames, height, width)
    video = self._generate(self.params, ids, noise, jnp.float32(guidance_scale), jnp.float32(fps),
                           num_inference_steps)
    return np.asarray(video * 255).astype(np.uint8)


def _load(path, config, dtype=jnp.float32, param_dtype=None, mesh=None, **module_kwargs) -> T2VTurboPipeline:
  """The `pretrained` loader of `t2v_turbo` folders. The components load onto one device each; `mesh` and
  `module_kwargs` are not used."""
  del config, mesh, module_kwargs
  return T2VTurboPipeline.from_folder(path, dtype=dtype, param_dtype=param_dtype)


pretrained.register("t2v_turbo", _load)
