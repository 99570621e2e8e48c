"""Video Diffusion-DPO of T2V-Turbo's UNet: what `launch.train` runs when `train.objective = "video_dpo"`.

  python -m launch.train --config=configs/dpo_t2v_turbo.py --config.workdir=/runs/t2v-dpo \\
      --config.model.checkpoint=/ckpt/t2v-turbo-jax --config.data.train=/data/video_pairs.jsonl

`model.checkpoint` is a pipeline folder made by `converters.t2v_turbo`. Its UNet is the policy, sharded on the mesh,
of which only the parts `video_dpo.trainable` names train (VideoDPO: every Linear layer) and carry optimiser state;
the frozen reference is the starting UNet in `video_dpo.reference_dtype`, or the UNet folder `video_dpo.reference`
(VideoDPO's separate reference checkpoint). The VAE and the text encoder encode each micro-batch (frozen, in the same
process) before the step. Workdir, checkpoints, metrics, resumption and SIGTERM behave as for every other objective.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging

from launch.diffusion_train import load_component, pairs_per_micro_batch, run_pairs, start_workdir
from launch.train import num_steps_of
from ureward_jax import parallel, pretrained
from ureward_jax.data.image_pairs import PairDataConfig
from ureward_jax.data.video_pairs import ClipConfig, load_video_pairs, video_pair_batches
from ureward_jax.models import clip_text, unet3d, vae
from ureward_jax.train import diffusion_dpo, trainable, video_dpo
from ureward_jax.train.checkpoint import Checkpointer
from ureward_jax.train.loop import LoopState
from ureward_jax.train.optim import one_cycle, torch_adamw

TRAINABLE = ("linear", "all")


def check_pipeline_folder(folder: str) -> None:
  if not folder or pretrained.read_config(folder).get("model_type") != "t2v_turbo":
    raise ValueError(f"model.checkpoint {folder!r} is not a converted T2V-Turbo pipeline folder "
                     "(python -m converters.t2v_turbo --src MODEL.ckpt --dst DIR)")


SCHEDULES = ("constant", "onecycle")


def make_optimizer(config, num_steps: int):
  """(optimizer, learning-rate schedule): torch's AdamW at a constant `optim.lr`, as VideoDPO's run trains (its
  config's OneCycleLR block never reaches the model), or under OneCycleLR with `optim.lr` its peak."""
  o = config.optim
  if o.name != "adamw" or o.schedule not in SCHEDULES:
    raise ValueError(f"video DPO trains with optim.name 'adamw' (VideoDPO's) and optim.schedule one of {SCHEDULES}; "
                     f"got {o.name!r} and {o.schedule!r}")
  if o.schedule == "constant":
    lr, b1 = optax.constant_schedule(o.lr), 0.9
  else:
    lr, b1 = one_cycle(o.lr, num_steps, o.pct_start, o.div_factor, o.final_div_factor)
  return torch_adamw(lr, o.weight_decay, b1, clip_norm=o.get("clip_norm") or None), lr


def train_mask(config, params) -> dict:
  """What trains: `video_dpo.trainable` "linear" (VideoDPO's Linear layers) or "all". The guidance embedding's
  `time_cond_proj` stays frozen unless `video_dpo.w_embedding`: it is never applied then, so it gets no gradient,
  and torch's AdamW skips such a parameter altogether (its weight decay included)."""
  kind = config.video_dpo.trainable
  if kind not in TRAINABLE:
    raise ValueError(f"video_dpo.trainable {kind!r} is not one of {TRAINABLE}")
  mask = trainable.linear_layers(params) if kind == "linear" else jax.tree.map(lambda _: True, params)
  if "time_cond_proj" in params and not config.video_dpo.w_embedding:
    mask = {**mask, "time_cond_proj": jax.tree.map(lambda _: False, params["time_cond_proj"])}
  return mask


def training_step(config, unet_config: unet3d.VideoCrafterUNetConfig, optimizer, scaling_factor: float,
                  scheduler: dict, mask: dict):
  """The config's video Diffusion-DPO step (`video_dpo.make_video_dpo_step`) for this UNet."""
  v = config.video_dpo
  unet_config = dataclasses.replace(unet_config, use_w_embedding=v.w_embedding)
  module = unet3d.VideoCrafterUNet(unet_config, dtype=jnp.dtype(config.model.dtype), remat=config.remat)
  alphas = diffusion_dpo.training_alphas_cumprod(False, scheduler)
  return video_dpo.make_video_dpo_step(module, optimizer, v.beta, alphas, scaling_factor, mask, paired=v.paired,
                                       keep_width=v.keep_width, fps=float(v.fps),
                                       reference_dropout=v.reference_dropout)


def pair_shapes(config, unet_config: unet3d.VideoCrafterUNetConfig, micro: int, downsample: int, sharding) -> dict:
  """The step's batch as `jax.ShapeDtypeStruct`s (A, ...): what the frozen encoders hand it."""
  d = config.data
  shaped = lambda shape: jax.ShapeDtypeStruct((config.train.grad_accum,) + shape, jnp.float32,  # noqa: E731
                                              sharding=sharding)
  latent = shaped((2 * micro, d.video_length, d.height // downsample, d.width // downsample, unet_config.in_channels))
  return {"latent_mean": latent, "latent_logvar": latent, "context": shaped((micro, 77, unet_config.context_dim)),
          "weight": shaped((micro,)), "factor": shaped((micro,))}


class FrozenEncoders:
  """The pipeline folder's VAE and OpenCLIP text encoder, frozen and placed on the mesh; their params are passed
  into the jitted function, not closed over."""

  def __init__(self, folder: str, mesh, dtype):
    self.vae_config, vae_params, _ = load_component(folder, "vae", vae, vae.AutoencoderKLConfig, mesh)
    text_config, text_params, _ = load_component(folder, "text_encoder", clip_text, clip_text.CLIPTextConfig, mesh)
    self.params = (vae_params, text_params)
    self.vae = vae.AutoencoderKL(self.vae_config)
    self.text = clip_text.CLIPTextModel(text_config, dtype=dtype)

  def pair_encoder(self, rows):
    """(pixels (A, 2M, T, H, W, 3), ids (A, M, 77), weight, factor (A, M)) → the step's batch, sharded as `rows`."""
    @functools.partial(jax.jit, out_shardings=rows)
    def encode(frozen, pixels, ids, weight, factor):
      def one(inputs):
        return video_dpo.encode_video_pairs(self.vae, frozen[0], self.text, frozen[1], *inputs)
      return jax.lax.map(one, (pixels, ids)) | {"weight": weight, "factor": factor}
    return functools.partial(encode, self.params)


def clip_config(config) -> ClipConfig:
  d = config.data
  return ClipConfig(video_length=d.video_length, frame_stride=d.frame_stride, height=d.height, width=d.width,
                    caption_dropout=d.caption_dropout, dupbeta=config.video_dpo.dupbeta, center_crop=d.center_crop)


def _reference(config, params, shardings, unet_config):
  """The frozen reference UNet on the policy's shardings: the starting params, or the folder `video_dpo.reference`."""
  dtype = jnp.dtype(config.video_dpo.reference_dtype)
  folder = config.video_dpo.get("reference")
  if folder:
    theirs = unet3d.VideoCrafterUNetConfig.from_dict(pretrained.read_config(folder))
    if dataclasses.replace(theirs, use_w_embedding=True) != dataclasses.replace(unet_config, use_w_embedding=True):
      raise ValueError(f"video_dpo.reference {folder!r} is a UNet of another layout than the policy's")
    return parallel.place(pretrained.load_params(folder, dtype), shardings)
  return jax.jit(lambda p: jax.tree.map(lambda x: x.astype(dtype), p), out_shardings=shardings)(params)


def train(config: ml_collections.ConfigDict) -> LoopState:
  folder = config.model.checkpoint
  check_pipeline_folder(folder)
  start_workdir(config)
  mesh = parallel.make_mesh(**config.mesh)
  unet_config, params, shardings = load_component(folder, "unet", unet3d, unet3d.VideoCrafterUNetConfig, mesh)
  vae_config = vae.AutoencoderKLConfig.from_dict(pretrained.read_config(os.path.join(folder, "vae")))
  mask = train_mask(config, params)
  trained, _ = trainable.split(params, mask)
  trained_shardings, _ = trainable.split(shardings, mask)
  logging.info("UNet parameters: %d, trained: %d", sum(p.size for p in jax.tree.leaves(params)),
               sum(p.size for p in jax.tree.leaves(trained)))

  records = load_video_pairs(config.data.train, config.data.get("video_folder") or None)
  num_steps = num_steps_of(config, len(records))
  optimizer, learning_rate = make_optimizer(config, num_steps)
  logging.info("%d pairs, %d steps, learning rate %g (%s)", len(records), num_steps, config.optim.lr,
               config.optim.schedule)
  opt_shardings = parallel.optimizer_shardings(optimizer, trained, trained_shardings, mesh)
  opt_state = jax.jit(optimizer.init, out_shardings=opt_shardings)(trained)

  checkpointer = Checkpointer(os.path.join(config.workdir, "checkpoints"), config.checkpoint.every,
                              config.checkpoint.keep)
  reference = _reference(config, params, shardings, unet_config)   # before a resume: the starting UNet
  state, next_batch = LoopState(0, params, opt_state), 0
  if (latest := checkpointer.latest_step()) is not None:
    state.params, state.opt_state, data_state = checkpointer.restore(latest, params, opt_state)
    state.step, next_batch = latest, int(data_state["next_batch"])
    logging.info("resumed from step %d", latest)

  data = PairDataConfig(global_batch=config.data.batch_size, grad_accum=config.train.grad_accum, seed=config.seed,
                        workers=config.data.workers)
  micro = pairs_per_micro_batch(config, mesh)
  rows = parallel.data_sharding(mesh, batch_axis=1)
  encoded = pair_shapes(config, unet_config, micro, vae_config.downsample_factor, rows)
  stream = video_pair_batches(records, data, clip_config(config), os.path.join(folder, "tokenizer"), start=next_batch)
  encode = FrozenEncoders(folder, mesh, jnp.dtype(config.model.dtype)).pair_encoder(rows)

  def inputs_of(batch):
    arrays = [jax.make_array_from_process_local_data(rows, batch[key])
              for key in ("pixels", "ids", "weight", "factor")]
    with parallel.activation_rules(mesh):
      return encode(*arrays)

  scheduler = pretrained.read_config(folder)["scheduler"]
  step = training_step(config, unet_config, optimizer, vae_config.scaling_factor, scheduler, mask)
  jitted = jax.jit(step, out_shardings=(shardings, opt_shardings, None), donate_argnums=(0, 1))
  with parallel.activation_rules(mesh):
    compiled = jitted.lower(state.params, state.opt_state, encoded, reference, jax.random.key(0)).compile()

  return run_pairs(config, state, stream, next_batch, inputs_of,
                   lambda p, o, b, rng: compiled(p, o, b, reference, rng), records, num_steps, checkpointer,
                   learning_rate)
