"""Video Diffusion-DPO of T2V-Turbo (VideoCrafter2's UNet), as UnifiedReward runs VideoDPO's `T2VTurboDPO`.

The loss and the step are Diffusion-DPO's (`diffusion_dpo`). What VideoDPO does differently is a switch each, set to
UnifiedReward's values by `configs/dpo_t2v_turbo.py`:
- `paired`: one (t, ε) per pair, shared by its two clips (Diffusion-DPO, the default here), or one per clip
  (VideoDPO);
- `keep_width`: VideoDPO's `mean(dim=[1, 2, 3])` of (B, C, T, H, W) latents leaves the latent width, so each pair
  has one term per column, all averaged in the loss; the default averages over every non-batch axis;
- each pair's term times its `factor` (VideoDPO: (0.72 / score)^dupbeta; UnifiedReward's pairs carry no score, so
  0.72 for all);
- t uniform on the 50-step DDIM grid (19, 39, …, 999) of the scaled-linear schedule (no zero-terminal SNR);
- fps conditioning a constant (16, although the pairs were sampled at 8); the guidance embedding goes unused
  (UnifiedReward's UNet ignores it: the UNet config's `use_w_embedding`).
Only fully connected layers train (`trainable.linear_layers`), with torch's AdamW at a constant rate (VideoDPO's
config names a OneCycleLR that never reaches the model; `optim.schedule = "onecycle"` runs it). The policy runs in
training mode (the temporal convs' dropout 0.1). So does the frozen reference, with masks of its own, by default
(`reference_dropout`): VideoDPO calls `ref_model.eval()` once, but Lightning's `fit` switches every submodule back to
training mode.

`model.checkpoint` is a pipeline folder made by `converters.t2v_turbo`. A micro-batch holds M pairs: the per-frame
VAE posterior of each clip (`latent_mean`, `latent_logvar`, (2M, T, h, w, 4), winners in rows [0, M), losers in
[M, 2M)), each pair's caption encoding `context` (M, 77, D), its `weight` (M,) (0 for an unreadable pair) and
`factor` (M,). The VAE and the text encoder make them before each step.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ureward_jax import pretrained
from ureward_jax.data.image_pairs import PairDataConfig
from ureward_jax.data.video_pairs import ClipConfig, load_video_pairs, video_pair_batches
from ureward_jax.errors import UserError
from ureward_jax.models import clip_text, unet3d, vae
from ureward_jax.pipelines import schedulers
from ureward_jax.train import optim, params, trainable
from ureward_jax.train.tasks.diffusion_dpo import (
  DiffusionDPO,
  diffusion_dpo_loss,
  load_component,
  noised_pairs,
  sample_latents,
  training_alphas_cumprod,
)

WIDTH_AXIS = 3   # of (B, T, H, W, C) latents
TRAINABLE = ("linear", "all")


def video_dpo_loss_fn(module: unet3d.VideoCrafterUNet, beta: float, alphas_cumprod: np.ndarray, scaling_factor: float,
                      paired: bool = True, keep_width: bool = False, fps: float = 16.0,
                      timestep_values: tuple[int, ...] | None = schedulers.DDIM50_TRAIN_TIMESTEPS,
                      training: bool = True, reference_dropout: bool = True):
  """loss_fn(params, reference_params, micro_batch, rng) → (loss, metrics) of one micro-batch (no A axis).
  `training` False runs both UNets in evaluation mode (no dropout): held-out metrics. `reference_dropout` False keeps
  the reference in evaluation mode while the policy trains."""
  alphas_cumprod = jnp.asarray(alphas_cumprod, jnp.float32)

  def loss_fn(params, reference_params, mb, rng):
    posterior_rng, noise_rng, dropout_rng = jax.random.split(rng, 3)
    latents = sample_latents(posterior_rng, mb, scaling_factor)
    noisy, timesteps, noise = noised_pairs(noise_rng, latents, alphas_cumprod, timestep_values, paired)
    context = jnp.concatenate([mb["context"], mb["context"]])   # one caption for both clips of a pair

    def predict(p, deterministic, masks_rng):
      return module.apply({"params": p}, noisy, timesteps, context, fps, deterministic=deterministic,
                          rngs={"dropout": masks_rng})
    model_pred = predict(params, not training, dropout_rng)
    ref_pred = jax.lax.stop_gradient(predict(reference_params, not (training and reference_dropout),
                                             jax.random.fold_in(dropout_rng, 1)))
    return diffusion_dpo_loss(model_pred, ref_pred, noise, beta, mb.get("weight"), mb.get("factor"),
                              keep_axis=WIDTH_AXIS if keep_width else None)

  return loss_fn


def encode_video_pairs(vae_module, vae_params, text_encoder, text_encoder_params, pixels: jax.Array,
                       ids: jax.Array) -> dict[str, jax.Array]:
  """The frozen encoders' part: clips (2M, T, H, W, 3) in [−1, 1] [winners; losers] and the caption ids (M, 77) →
  `latent_mean`, `latent_logvar` (2M, T, h, w, c) and `context` (M, 77, D) of one micro-batch, fp32. The VAE encodes
  each frame on its own (frames folded into the batch); the caption is the OpenCLIP text tower's "penultimate"
  output (23 blocks, then `ln_final`)."""
  clips, frames = pixels.shape[:2]
  mean, logvar = vae_module.apply({"params": vae_params}, pixels.reshape(clips * frames, *pixels.shape[2:]),
                                  method="encode")
  unfold = lambda x: x.reshape(clips, frames, *x.shape[1:]).astype(jnp.float32)  # noqa: E731
  text = text_encoder.apply({"params": text_encoder_params}, ids, output_hidden_states=True)
  return {"latent_mean": unfold(mean), "latent_logvar": unfold(logvar),
          "context": text["penultimate_normed"].astype(jnp.float32)}


def train_mask(video_dpo: ml_collections.ConfigDict, params: dict) -> dict:
  """What trains: `video_dpo.trainable` "linear" (VideoDPO's Linear layers) or "all". The guidance embedding's
  `time_cond_proj` stays frozen unless `video_dpo.w_embedding`: it is never applied then, so it gets no gradient,
  and torch's AdamW skips such a parameter altogether (its weight decay included)."""
  if video_dpo.trainable not in TRAINABLE:
    raise UserError(f"video_dpo.trainable {video_dpo.trainable!r} is not one of {TRAINABLE}")
  mask = (trainable.linear_layers(params) if video_dpo.trainable == "linear"
          else jax.tree.map(lambda _: True, params))
  if "time_cond_proj" in params and not video_dpo.w_embedding:
    mask = {**mask, "time_cond_proj": jax.tree.map(lambda _: False, params["time_cond_proj"])}
  return mask


class VideoEncoders:
  """The pipeline folder's VAE and OpenCLIP text encoder, frozen and placed on the mesh; their params are passed
  into the jitted function, not closed over."""

  def __init__(self, folder: str, mesh, dtype):
    self.vae_config, vae_params = load_component(folder, "vae", vae, vae.AutoencoderKLConfig, mesh)
    text_config, text_params = load_component(folder, "text_encoder", clip_text, clip_text.CLIPTextConfig, mesh)
    self.params = (vae_params, text_params)
    self.vae = vae.AutoencoderKL(self.vae_config)
    self.text = clip_text.CLIPTextModel(text_config, dtype=dtype)

  def pair_encoder(self, rows):
    """(pixels (A, 2M, T, H, W, 3), ids (A, M, 77), weight, factor (A, M)) → the step's batch, sharded as `rows`."""
    @functools.partial(jax.jit, out_shardings=rows)
    def encode(frozen, pixels, ids, weight, factor):
      def one(inputs):
        return encode_video_pairs(self.vae, frozen[0], self.text, frozen[1], *inputs)
      return jax.lax.map(one, (pixels, ids)) | {"weight": weight, "factor": factor}
    return functools.partial(encode, self.params)


class VideoDPO(DiffusionDPO):
  model_type, converter, family = "t2v_turbo", "t2v_turbo", "T2V-Turbo"
  unet, unet_config_cls = unet3d, unet3d.VideoCrafterUNetConfig
  default_vae_config = vae.LDM_VAE

  @classmethod
  def config_keys(cls, config):
    return {"": ("video_dpo",), "model": ("checkpoint", "dtype"),
            "data": ("train", "video_folder", "batch_size", "video_length", "frame_stride", "height", "width",
                     "center_crop", "caption_dropout", "workers"),
            "video_dpo": ("beta", "paired", "keep_width", "fps", "dupbeta", "w_embedding", "trainable", "reference",
                          "reference_dtype", "reference_dropout"),
            "optim": optim.config_keys(config.optim) + optim.EXTRA_KEYS["onecycle"]}

  @property
  def module(self):
    unet_config = dataclasses.replace(self.unet_config, use_w_embedding=self.config.video_dpo.w_embedding)
    return unet3d.VideoCrafterUNet(unet_config, dtype=jnp.dtype(self.config.model.dtype), remat=self.config.remat)

  def load_records(self):
    return load_video_pairs(self.config.data.train, self.config.data.video_folder or None)

  def train_mask(self, params_):
    return train_mask(self.config.video_dpo, params_)

  def optimizer(self, num_steps, trained):
    return optim.make_optimizer(self.config.optim, num_steps, trained)

  def reference(self, params_, shardings):
    """The frozen reference on the policy's shardings: the starting UNet, or the UNet folder `video_dpo.reference`
    (VideoDPO's separate reference checkpoint)."""
    v = self.config.video_dpo
    if not v.reference or self.abstract:
      return params.cast(params_, v.reference_dtype, shardings)
    theirs = unet3d.VideoCrafterUNetConfig.from_dict(pretrained.read_config(v.reference))
    if dataclasses.replace(theirs, use_w_embedding=True) != dataclasses.replace(self.unet_config, use_w_embedding=True):
      raise UserError(f"video_dpo.reference {v.reference!r} is a UNet of another layout than the policy's")
    return params.load(v.reference, shardings, np.dtype(jnp.dtype(v.reference_dtype)))

  def loss_fn(self):
    v = self.config.video_dpo
    scheduler = pretrained.read_scheduler(self.folder) if self.folder else schedulers.VIDEOCRAFTER_SCHEDULER
    return video_dpo_loss_fn(self.module, v.beta, training_alphas_cumprod(False, scheduler),
                             self.vae_config.scaling_factor, paired=v.paired, keep_width=v.keep_width,
                             fps=float(v.fps), reference_dropout=v.reference_dropout)

  def latent_shape(self):
    d, down = self.config.data, self.vae_config.downsample_factor
    return (2 * self.micro, d.video_length, d.height // down, d.width // down, self.unet_config.in_channels)

  def step_inputs(self):
    latent, m = self.shaped(*self.latent_shape()), self.micro
    return {None: dict(latent_mean=latent, latent_logvar=latent,
                       context=self.shaped(m, 77, self.unet_config.context_dim), weight=self.shaped(m),
                       factor=self.shaped(m))}

  def clip_config(self) -> ClipConfig:
    d = self.config.data
    return ClipConfig(video_length=d.video_length, frame_stride=d.frame_stride, height=d.height, width=d.width,
                      caption_dropout=d.caption_dropout, dupbeta=self.config.video_dpo.dupbeta,
                      center_crop=d.center_crop)

  def stream(self, start):
    c = self.config
    data = PairDataConfig(global_batch=c.data.batch_size, grad_accum=c.train.grad_accum, seed=c.seed,
                          workers=c.data.workers)
    self.encoder = VideoEncoders(self.folder, self.mesh, jnp.dtype(c.model.dtype)).pair_encoder(self.rows)
    return video_pair_batches(self.records, data, self.clip_config(), os.path.join(self.folder, "tokenizer"),
                              start=start)

  def encoder_inputs(self):
    return ("pixels", "ids", "weight", "factor")
