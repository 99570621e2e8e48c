"""Diffusion-DPO of an SDXL(-Turbo) UNet: what `launch.train` runs when `train.objective = "diffusion_dpo"`.

  python -m launch.train --config=configs/dpo_sdxl_turbo.py --config.workdir=/runs/sdxl-dpo \\
      --config.model.checkpoint=/ckpt/sdxl-turbo-jax --config.data.train=/data/pairs.jsonl

`model.checkpoint` is a pipeline folder made by `converters.sdxl`. Its UNet is trained and sharded on the mesh; a
copy in `diffusion_dpo.reference_dtype` is the frozen reference; the VAE and both text encoders encode each
micro-batch (frozen, in the same process) before the step, or, with `data.encoded` set, the step reads what
`launch.encode_pairs` wrote there once and no encoder is loaded. Workdir, checkpoints, metrics, resumption and
SIGTERM behave as for every other objective (`train.loop`).
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from launch.train import num_steps_of
from ureward_jax import parallel, pretrained
from ureward_jax.data.encoded_pairs import check_encoded, encoded_batches, settings_for
from ureward_jax.data.image_pairs import PairDataConfig, load_pairs, pair_batches
from ureward_jax.models import clip_text, unet2d, vae
from ureward_jax.pipelines.sdxl import text_conditioning
from ureward_jax.train import diffusion_dpo
from ureward_jax.train.checkpoint import Checkpointer
from ureward_jax.train.loop import Loop, LoopState
from ureward_jax.train.metrics import MetricsWriter
from ureward_jax.train.optim import learning_rate_schedule

OPTIMIZERS = ("adafactor", "adamw")
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")


def load_component(folder: str, name: str, module, config_cls, mesh):
  """(config, placed params) of one component of the pipeline folder, sharded by its logical axes."""
  config = config_cls.from_dict(pretrained.read_config(os.path.join(folder, name)))
  shardings = parallel.param_shardings(module.param_shapes(config, boxed=True), mesh)
  params = pretrained.load_params(os.path.join(folder, name), np.float32)
  return config, parallel.place(params, shardings), shardings


def make_optimizer(config, num_steps: int) -> tuple[optax.GradientTransformation, float]:
  """(optimizer, peak learning rate): `optim.lr`, times the pairs per optimiser step when `optim.scale_lr`
  (DiffusionDPO's `--scale_lr`: lr × accumulation × per-GPU batch × GPUs)."""
  o = config.optim
  if o.name not in OPTIMIZERS:
    raise ValueError(f"optim.name {o.name!r} is not supported for Diffusion-DPO; choose one of {OPTIMIZERS}")
  lr = o.lr * (config.data.batch_size if o.get("scale_lr", False) else 1)
  schedule = learning_rate_schedule(lr, num_steps, o.schedule, o.warmup_ratio)
  if o.name == "adafactor":
    return diffusion_dpo.adafactor(schedule, o.weight_decay, o.get("clip_threshold", 1.0), o.clip_norm), lr
  chain = [optax.clip_by_global_norm(o.clip_norm)] if o.clip_norm else []
  return optax.chain(*chain, optax.adamw(schedule, weight_decay=o.weight_decay)), lr


def check_pipeline_folder(folder: str) -> None:
  if not folder or pretrained.read_config(folder).get("model_type") != "sdxl":
    raise ValueError(f"model.checkpoint {folder!r} is not a converted SDXL pipeline folder "
                     "(python -m converters.sdxl --src DIFFUSERS_DIR --dst DIR)")


def training_step(config, unet_config: unet2d.UNet2DConditionConfig, optimizer, scaling_factor: float,
                  scheduler_config: dict | None = None):
  """The config's Diffusion-DPO step (`diffusion_dpo.make_diffusion_dpo_step`) for this UNet."""
  d = config.diffusion_dpo
  module = unet2d.UNet2DConditionModel(unet_config, dtype=jnp.dtype(config.model.dtype), remat=config.remat)
  alphas = diffusion_dpo.training_alphas_cumprod(d.turbo, scheduler_config)
  return diffusion_dpo.make_diffusion_dpo_step(module, optimizer, d.beta, alphas, scaling_factor, d.turbo)


def pairs_per_micro_batch(config, mesh) -> int:
  micro = config.data.batch_size // config.train.grad_accum // jax.process_count()
  if config.data.batch_size % config.train.grad_accum or micro % parallel.batch_shards(mesh):
    raise ValueError(f"batch_size {config.data.batch_size} in {config.train.grad_accum} micro-batches cannot be "
                     f"split over {parallel.batch_shards(mesh)} data × fsdp devices; change grad_accum or batch_size")
  return micro


def pair_shapes(config, unet_config: unet2d.UNet2DConditionConfig, micro: int, downsample: int, sharding) -> dict:
  """The step's batch as `jax.ShapeDtypeStruct`s (A, ...): what the frozen encoders hand it."""
  accum, side = config.train.grad_accum, config.data.resolution // downsample
  pooled = unet_config.projection_class_embeddings_input_dim - 6 * unet_config.addition_time_embed_dim
  shaped = lambda shape: jax.ShapeDtypeStruct((accum,) + shape, jnp.float32, sharding=sharding)  # noqa: E731
  latent = shaped((2 * micro, side, side, unet_config.in_channels))
  return {"latent_mean": latent, "latent_logvar": latent,
          "prompt_embeds": shaped((micro, 77, unet_config.cross_attention_dim)), "text_embeds": shaped((micro, pooled)),
          "time_ids": shaped((micro, 6)), "weight": shaped((micro,))}


class FrozenEncoders:
  """The pipeline folder's VAE and both text encoders, frozen and placed on the mesh. Their params are passed into
  the jitted functions, not closed over: a constant would copy them into the program."""

  def __init__(self, folder: str, mesh, dtype):
    self.vae_config, vae_params, _ = load_component(folder, "vae", vae, vae.AutoencoderKLConfig, mesh)
    text = [load_component(folder, name, clip_text, clip_text.CLIPTextConfig, mesh) for name in TEXT_ENCODERS]
    self.params = (vae_params, *(params for _, params, _ in text))
    self.vae = vae.AutoencoderKL(self.vae_config)
    self.text = [clip_text.CLIPTextModel(config, dtype=dtype) for config, _, _ in text]

  def pair_encoder(self, resolution: int, rows):
    """(pixels (A, 2M, R, R, 3), ids, ids_2 (A, M, 77), weight (A, M)) → the step's batch of `PAIR_KEYS` arrays
    (A, ...) and `weight`, sharded as `rows`."""
    @functools.partial(jax.jit, out_shardings=rows)
    def encode(frozen, pixels, ids, ids_2, weight):
      def one(inputs):
        return diffusion_dpo.encode_pairs(self.vae, frozen[0], self.text[0], frozen[1], self.text[1], frozen[2],
                                          *inputs, resolution, resolution)
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


def train(config: ml_collections.ConfigDict) -> LoopState:
  folder = config.model.checkpoint
  check_pipeline_folder(folder)
  start_workdir(config)
  resolution = config.data.resolution
  mesh = parallel.make_mesh(**config.mesh)
  unet_config, params, shardings = load_component(folder, "unet", unet2d, unet2d.UNet2DConditionConfig, mesh)
  vae_config = vae.AutoencoderKLConfig.from_dict(pretrained.read_config(os.path.join(folder, "vae")))
  logging.info("UNet parameters: %d; replicated bytes: %.1f%%", sum(p.size for p in jax.tree.leaves(params)),
               100 * parallel.replicated_fraction(params))

  records = load_pairs(config.data.train, config.data.get("image_folder") or None)
  num_steps = num_steps_of(config, len(records))
  optimizer, lr = make_optimizer(config, num_steps)
  logging.info("%d pairs, %d steps, peak learning rate %g", len(records), num_steps, lr)
  opt_shardings = parallel.optimizer_shardings(optimizer, params, shardings, mesh)
  opt_state = jax.jit(optimizer.init, out_shardings=opt_shardings)(params)

  checkpointer = Checkpointer(os.path.join(config.workdir, "checkpoints"), config.checkpoint.every,
                              config.checkpoint.keep)
  # The reference is the starting UNet, never a resumed one; a copy, as the step donates the params.
  reference_dtype = jnp.dtype(config.diffusion_dpo.reference_dtype)
  reference = jax.jit(lambda p: jax.tree.map(lambda x: x.astype(reference_dtype), p), out_shardings=shardings)(params)
  state, next_batch = LoopState(0, params, opt_state), 0
  if (latest := checkpointer.latest_step()) is not None:
    state.params, state.opt_state, data_state = checkpointer.restore(latest, params, opt_state)
    state.step, next_batch = latest, int(data_state["next_batch"])
    logging.info("resumed from step %d", latest)

  data = pair_data(config)
  micro = pairs_per_micro_batch(config, mesh)
  rows = parallel.data_sharding(mesh, batch_axis=1)
  encoded = pair_shapes(config, unet_config, micro, vae_config.downsample_factor, rows)
  if config.data.get("encoded"):
    check_encoded(config.data.encoded, settings_for(records, data, folder))
    stream = encoded_batches(config.data.encoded, data, start=next_batch)
    inputs_of = lambda batch: {key: jax.make_array_from_process_local_data(rows, batch[key])  # noqa: E731
                               for key in encoded}
  else:
    stream = pair_batches(records, data, os.path.join(folder, "tokenizer"), os.path.join(folder, "tokenizer_2"),
                          start=next_batch)
    encode = FrozenEncoders(folder, mesh, jnp.dtype(config.model.dtype)).pair_encoder(resolution, rows)

    def inputs_of(batch):
      arrays = [jax.make_array_from_process_local_data(rows, batch[key]) for key in ("pixels", "ids", "ids_2", "weight")]
      with parallel.activation_rules(mesh):
        return encode(*arrays)

  step = training_step(config, unet_config, optimizer, vae_config.scaling_factor, _scheduler_config(folder))
  jitted = jax.jit(step, out_shardings=(shardings, opt_shardings, None), donate_argnums=(0, 1))
  with parallel.activation_rules(mesh):
    compiled = jitted.lower(state.params, state.opt_state, encoded, reference, jax.random.key(0)).compile()

  schedule = learning_rate_schedule(lr, num_steps, config.optim.schedule, config.optim.warmup_ratio)
  return run_pairs(config, state, stream, next_batch, inputs_of,
                   lambda p, o, b, rng: compiled(p, o, b, reference, rng), records, num_steps, checkpointer,
                   schedule)


def start_workdir(config) -> None:
  """Create the workdir and record the resolved config there (first host only)."""
  os.makedirs(config.workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(config.workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=2))


def run_pairs(config, state: LoopState, stream, next_batch: int, inputs_of, step, records, num_steps: int,
              checkpointer: Checkpointer, learning_rate) -> LoopState:
  """The shared loop of the pair objectives: batch n of `stream` (numbered from `next_batch`) is placed by
  `inputs_of` and trained by `step(params, opt_state, inputs, rng)` with rng `fold_in(key(seed), n)`; bad pairs
  are reported by their records' ids."""
  def place(batch):
    return {"pairs": inputs_of(batch), "rng": jax.random.fold_in(jax.random.key(config.seed), batch["number"])}

  numbered = (b | {"number": n} for n, b in enumerate(stream, start=next_batch))
  loop = Loop(
      step_for=lambda batch: lambda p, o, b: step(p, o, b["pairs"], b["rng"]),
      place=place, flops=lambda batch: 0.0,
      record_ids=lambda indices: [str(records[i].get("id", f"#{i}")) for i in indices],
      num_steps=num_steps, log_every=config.train.log_every, checkpointer=checkpointer,
      metrics=MetricsWriter(config.workdir, resume_step=state.step), learning_rate=learning_rate)
  return loop.run(state, numbered)


def pair_data(config) -> PairDataConfig:
  """The config's image-pair stream settings."""
  return PairDataConfig(global_batch=config.data.batch_size, grad_accum=config.train.grad_accum,
                        resolution=config.data.resolution, random_flip=config.data.random_flip, seed=config.seed,
                        workers=config.data.workers)


def _scheduler_config(folder: str) -> dict:
  path = os.path.join(folder, "scheduler", "scheduler_config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} is missing: the pipeline folder is incomplete")
  with open(path) as f:
    return json.load(f)

