"""Diffusion-DPO of an SDXL(-Turbo) UNet (Wallace et al.; DiffusionDPO's `train.py`, as UnifiedReward runs it).

Each pair's winner and loser latents are noised with the same ε at the same t; with d(x) = mean over (H, W, C) of
(ε̂(x_t) − ε)², the loss is −log σ(−½β[(d_θ(x_w) − d_θ(x_l)) − (d_ref(x_w) − d_ref(x_l))]) (β 5000 in every public
launcher; diffusers' research example writes it without the ½). Turbo checkpoints train on the zero-terminal-SNR
schedule at t ∈ {249, 499, 749, 999}, the timesteps of their 4-step sampler.

`model.checkpoint` is a pipeline folder made by `converters.sdxl`. Its UNet trains; a copy in
`diffusion_dpo.reference_dtype` is the frozen reference. A micro-batch holds M pairs, winners first: the VAE
posterior of each image (`latent_mean`, `latent_logvar`, (2M, h, w, 4), winners in rows [0, M), losers in [M, 2M)),
each pair's conditioning (`prompt_embeds` (M, 77, D), `text_embeds` (M, P), `time_ids` (M, 6)) and its `weight`
(M,), 0 for an unreadable pair. The frozen VAE and text encoders make them from pixels and token ids before each
step, or once ahead of training (`data.encoded`, written by `train.encode_pairs`); the step samples the posterior
itself, as the original does with `latent_dist.sample()`.
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ureward_jax import outputs, parallel, pretrained
from ureward_jax.data.encoded_pairs import check_encoded, encoded_batches, settings_for
from ureward_jax.data.image_pairs import PairDataConfig, load_pairs, pair_batches
from ureward_jax.errors import UserError
from ureward_jax.models import clip_text, unet2d, vae
from ureward_jax.pipelines import schedulers
from ureward_jax.pipelines.sdxl import micro_conditions, text_conditioning
from ureward_jax.train import optim, params
from ureward_jax.train.task import Task

PAIR_KEYS = ("latent_mean", "latent_logvar", "prompt_embeds", "text_embeds", "time_ids")
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")


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


def diffusion_dpo_loss_fn(module: unet2d.UNet2DConditionModel, beta: float, alphas_cumprod: np.ndarray,
                          scaling_factor: float, turbo: bool = True):
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


def load_component(folder: str, name: str, module, config_cls, mesh):
  """(config, placed params) of one component of a pipeline folder, sharded by its logical axes."""
  config = params.component_config(folder, name, config_cls)
  shardings = parallel.param_shardings(module.param_shapes(config, boxed=True), mesh)
  return config, params.load(os.path.join(folder, name), shardings)


def check_pipeline_folder(folder: str, model_type: str, family: str, converter: str) -> None:
  if not folder or pretrained.read_config(folder).get("model_type") != model_type:
    raise UserError(f"model.checkpoint {folder!r} is not a converted {family} pipeline folder "
                    f"(python -m converters.{converter} --src ... --dst DIR)")


class FrozenEncoders:
  """The pipeline folder's VAE and both text encoders, frozen and placed on the mesh. Their params are passed into
  the jitted functions, not closed over: a constant would copy them into the program."""

  def __init__(self, folder: str, mesh, dtype):
    self.vae_config, vae_params = load_component(folder, "vae", vae, vae.AutoencoderKLConfig, mesh)
    text = [load_component(folder, name, clip_text, clip_text.CLIPTextConfig, mesh) for name in TEXT_ENCODERS]
    self.params = (vae_params, *(p for _, p in text))
    self.vae = vae.AutoencoderKL(self.vae_config)
    self.text = [clip_text.CLIPTextModel(config, dtype=dtype) for config, _ in text]

  def pair_encoder(self, resolution: int, rows):
    """(pixels (A, 2M, R, R, 3), ids, ids_2 (A, M, 77), weight (A, M)) → the step's batch of `PAIR_KEYS` arrays
    (A, ...) and `weight`, fp32, sharded as `rows`."""
    @functools.partial(jax.jit, out_shardings=rows)
    def encode(frozen, pixels, ids, ids_2, weight):
      def one(inputs):
        images, tokens, tokens_2 = inputs
        mean, logvar = self.vae.apply({"params": frozen[0]}, images, method="encode")
        embeds = text_conditioning(self.text[0], frozen[1], self.text[1], frozen[2], tokens, tokens_2)
        out = dict(latent_mean=mean, latent_logvar=logvar, prompt_embeds=embeds[0], text_embeds=embeds[1],
                   time_ids=micro_conditions(tokens.shape[0], resolution, resolution))
        return {key: value.astype(jnp.float32) for key, value in out.items()}
      return jax.lax.map(one, (pixels, ids, ids_2)) | {"weight": weight}
    return functools.partial(encode, self.params)

  def image_encoder(self):
    """pixels (N, R, R, 3) in [−1, 1] → the VAE posterior (mean, logvar), each (N, h, w, c) fp32."""
    encode = jax.jit(lambda params, pixels: self.vae.apply({"params": params}, pixels, method="encode"))
    return functools.partial(encode, self.params[0])

  def caption_encoder(self):
    """ids, ids_2 (N, 77) → (prompt_embeds (N, 77, D), text_embeds (N, P)) fp32."""
    @jax.jit
    def encode(frozen, ids, ids_2):
      embeds = text_conditioning(self.text[0], frozen[1], self.text[1], frozen[2], ids, ids_2)
      return tuple(e.astype(jnp.float32) for e in embeds)
    return functools.partial(encode, self.params)


class DiffusionDPO(Task):
  """The pair tasks' common part: a pipeline folder's UNet trained against a frozen copy on encoded pairs."""

  model_type, converter, family = "sdxl", "sdxl", "SDXL"
  unet, unet_config_cls = unet2d, unet2d.UNet2DConditionConfig
  default_vae_config = vae.AutoencoderKLConfig()   # SDXL's: for compiling ahead of time without a checkpoint

  @classmethod
  def config_keys(cls, config):
    return {"": ("diffusion_dpo",), "model": ("checkpoint", "dtype"),
            "data": ("train", "image_folder", "batch_size", "resolution", "random_flip", "workers", "encoded"),
            "diffusion_dpo": ("beta", "turbo", "reference_dtype"),
            "optim": optim.config_keys(config.optim) + ("scale_lr",)}

  def __init__(self, config, mesh, abstract=False):
    super().__init__(config, mesh, abstract)
    folder = self.folder = config.model.checkpoint
    if not abstract:
      check_pipeline_folder(folder, self.model_type, self.family, self.converter)
    # Compiling ahead of time without a checkpoint: the published architecture.
    self.unet_config = (params.component_config(folder, "unet", self.unet_config_cls) if folder
                        else self.unet_config_cls())
    self.vae_config = (params.component_config(folder, "vae", vae.AutoencoderKLConfig) if folder
                       else self.default_vae_config)
    self.rows = parallel.data_sharding(mesh, batch_axis=1)
    d, accum = config.data, config.train.grad_accum
    self.micro = d.batch_size // accum
    if d.batch_size % accum or self.micro % parallel.batch_shards(mesh):
      raise UserError(f"data.batch_size {d.batch_size} in {accum} micro-batches cannot be split over "
                      f"{parallel.batch_shards(mesh)} data × fsdp devices; change train.grad_accum or batch_size")
    self.records = None if abstract else self.load_records()
    self.encoder = None

  @property
  def module(self):
    return self.unet.UNet2DConditionModel(self.unet_config, dtype=jnp.dtype(self.config.model.dtype),
                                          remat=self.config.remat)

  def load_records(self):
    return load_pairs(self.config.data.train, self.config.data.image_folder or None)

  def param_shapes(self):
    return self.unet.param_shapes(self.unet_config, boxed=True)

  def load_params(self, shardings):
    return params.load(os.path.join(self.folder, "unet"), shardings)

  @classmethod
  def export(cls, config, params_, workdir, dst):
    """The pipeline folder the run started from, with the trained UNet in place of its own."""
    start = Path(config.model.checkpoint)
    check_pipeline_folder(str(start), cls.model_type, cls.family, cls.converter)

    def left_out(folder, names):   # the UNet's own params, and the starting folder's record of who wrote it
      return {pretrained.PARAMS} & set(names) if Path(folder) == start / "unet" else {outputs.MANIFEST} & set(names)
    shutil.copytree(start, dst, ignore=left_out, dirs_exist_ok=True)
    pretrained.save(dst / "unet", pretrained.read_config(start / "unet"), params_)

  def optimizer(self, num_steps, trained):
    """`optim.lr`, times the pairs per optimiser step when `optim.scale_lr` (DiffusionDPO's `--scale_lr`: lr ×
    accumulation × per-GPU batch × GPUs); torch's AdamW decays every parameter."""
    o = self.config.optim
    return optim.make_optimizer(o, num_steps, trained, peak_lr=o.lr * (self.config.data.batch_size if o.scale_lr
                                                                       else 1))

  def reference(self, params_, shardings):
    """The starting UNet in the reference dtype (never a resumed one)."""
    return params.cast(params_, self.config.diffusion_dpo.reference_dtype, shardings)

  def loss_fn(self):
    d = self.config.diffusion_dpo
    scheduler = pretrained.read_scheduler(self.folder) if self.folder else None
    return diffusion_dpo_loss_fn(self.module, d.beta, training_alphas_cumprod(d.turbo, scheduler),
                                 self.vae_config.scaling_factor, d.turbo)

  def num_records(self):
    return len(self.records)

  def record_id(self, index):
    return str(self.records[index].get("id", f"#{index}"))

  def shaped(self, *shape) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((self.config.train.grad_accum,) + shape, jnp.float32, sharding=self.rows)

  def latent_shape(self) -> tuple[int, ...]:
    side = self.config.data.resolution // self.vae_config.downsample_factor
    return (2 * self.micro, side, side, self.unet_config.in_channels)

  def step_inputs(self):
    u = self.unet_config
    pooled = u.projection_class_embeddings_input_dim - 6 * u.addition_time_embed_dim
    latent, m = self.shaped(*self.latent_shape()), self.micro
    return {None: dict(latent_mean=latent, latent_logvar=latent, prompt_embeds=self.shaped(m, 77, u.cross_attention_dim),
                       text_embeds=self.shaped(m, pooled), time_ids=self.shaped(m, 6), weight=self.shaped(m))}

  def data_config(self) -> PairDataConfig:
    c = self.config
    return PairDataConfig(global_batch=c.data.batch_size, grad_accum=c.train.grad_accum, resolution=c.data.resolution,
                          random_flip=c.data.random_flip, seed=c.seed, workers=c.data.workers)

  def stream(self, start):
    c, data = self.config, self.data_config()
    if c.data.encoded:
      check_encoded(c.data.encoded, settings_for(self.records, data, self.folder))
      return encoded_batches(c.data.encoded, data, start=start)
    self.encoder = FrozenEncoders(self.folder, self.mesh, jnp.dtype(c.model.dtype)).pair_encoder(
        c.data.resolution, self.rows)
    return pair_batches(self.records, data, os.path.join(self.folder, "tokenizer"),
                        os.path.join(self.folder, "tokenizer_2"), start=start)

  def encoder_inputs(self) -> tuple[str, ...]:
    return ("pixels", "ids", "ids_2", "weight")

  def place(self, batch):
    if self.encoder is None:   # pairs encoded ahead of training
      return {key: jax.make_array_from_process_local_data(self.rows, batch[key]) for key in self.step_inputs()[None]}
    arrays = [jax.make_array_from_process_local_data(self.rows, batch[key]) for key in self.encoder_inputs()]
    with parallel.activation_rules(self.mesh):
      return self.encoder(*arrays)

  def flops(self, inputs):
    """Model FLOPs of a step: the policy's forward and backward (3 forwards) and the reference's forward, per
    micro-batch, the UNet's forward counted by XLA on the unrolled network. The frozen encoders are not counted."""
    mb = {k: jax.ShapeDtypeStruct(v.shape[1:], v.dtype) for k, v in inputs.items()}
    loss_fn = self.loss_fn()
    loss = jax.jit(lambda p, b: loss_fn(p, p, b, jax.random.key(0))[0])
    cost = loss.lower(nn.unbox(self.param_shapes()), mb).cost_analysis()
    # The loss runs two UNet forwards (policy, reference); a training step is 4 forwards' worth per micro-batch.
    return 2.0 * float(cost["flops"]) * self.config.train.grad_accum

