"""Compile the exact training step of a config for a TPU topology on this host, and report whether it fits.

  python -m launch.aot --config=configs/reward_llava_ov_7b.py --topology=v5p-64 [--json]
  python -m launch.aot --config=configs/dpo_sdxl_turbo.py --topology=v5p-8   # SDXL's UNet without a checkpoint
  python -m launch.aot --config=configs/dpo_t2v_turbo.py --topology=v5p-8    # VideoCrafter2's UNet likewise

TPU topologies come from libtpu (the `tpu` extra) and compile under JAX_PLATFORMS=cpu; no TPU is needed. The
report: `per_device_bytes` (arguments + temporaries + outputs − aliased donations, from XLA's memory analysis),
`hbm_bytes` of the chip, `model_flops_per_step` (analytic: XLA's cost analysis counts a scanned layer once) and
`compile_seconds`.
"""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from converters.t2v_turbo import LDM_VAE, SCHEDULER  # noqa: E402
from launch import diffusion_train, video_train  # noqa: E402
from launch.train import (  # noqa: E402
  flops_factor,
  objective_of,
  reference_in_step,
  sequences_per_micro_batch,
  training_step,
)
from ureward_jax import parallel, pretrained  # noqa: E402
from ureward_jax.data.pipeline import batch_shapes  # noqa: E402
from ureward_jax.models import unet2d, unet3d  # noqa: E402
from ureward_jax.models.llava_onevision import PRESETS, LlavaOnevision, LlavaOnevisionConfig, param_shapes  # noqa: E402
from ureward_jax.models.vae import AutoencoderKLConfig  # noqa: E402
from ureward_jax.train import trainable  # noqa: E402
from ureward_jax.train.flops import model_flops_per_step  # noqa: E402
from ureward_jax.train.optim import make_optimizer, param_count  # noqa: E402

GiB = 2**30
# Public names → libtpu topology names. v5p and v4 names count TensorCores (2 per chip), v5e and v6e count chips.
TOPOLOGIES = {"v5p-8": "v5p:2x2x1", "v5p-16": "v5p:2x2x2", "v5p-32": "v5p:2x2x4", "v5p-64": "v5p:4x4x2",
              "v5p-128": "v5p:4x4x4", "v5p-256": "v5p:4x4x8", "v5e-4": "v5e:2x2", "v5e-8": "v5e:2x4",
              "v5e-16": "v5e:4x4", "v5e-64": "v5e:8x8", "v5e-256": "v5e:16x16", "v6e-8": "v6e:2x4",
              "v6e-64": "v6e:8x8", "v6e-256": "v6e:16x16", "v4-8": "v4:2x2x1", "v4-32": "v4:2x2x4"}
HBM_BYTES = {"TPU v5": 95 * GiB, "TPU v5 lite": 16 * GiB, "TPU v6 lite": 32 * GiB, "TPU v4": 32 * GiB}


def topology_devices(name: str) -> list:
  from jax.experimental import topologies
  topology = TOPOLOGIES.get(name, name)
  if ":" not in topology:
    raise ValueError(f"unknown topology {name!r}; use one of {sorted(TOPOLOGIES)} or a libtpu name like v5p:4x4x2")
  return topologies.get_topology_desc(topology_name=topology, platform="tpu").devices


def compile_train_step(config, devices, model: LlavaOnevisionConfig | None = None) -> dict:
  """Lower and compile the training step of `config` (SFT, or DPO with its reference) for `devices`; returns the
  report. Diffusion-DPO configs go to `compile_diffusion_step`, video DPO configs to `compile_video_step`."""
  if objective_of(config) == "diffusion_dpo":
    return compile_diffusion_step(config, devices)
  if objective_of(config) == "video_dpo":
    return compile_video_step(config, devices)
  model = model or PRESETS[config.model.preset]
  if config.data.batch_size % config.train.grad_accum:
    raise ValueError(f"batch_size {config.data.batch_size} is not a multiple of grad_accum {config.train.grad_accum}")
  mesh = parallel.make_mesh(**config.mesh, devices=devices)
  micro = sequences_per_micro_batch(config, mesh)
  per_sample = 2 if objective_of(config) == "dpo" else 1   # sequences per sample: a DPO pair is two
  module = LlavaOnevision(model, dtype=jnp.dtype(config.model.dtype), remat=config.remat)
  params, shardings = _placed(param_shapes(model, boxed=True), mesh)
  optimizer = make_optimizer(params, config.optim.lr, config.train.num_steps, config.optim.schedule,
                             config.optim.warmup_ratio, config.optim.weight_decay, config.optim.clip_norm,
                             parts=tuple(config.train.tunable_parts),
                             projector_lr=config.optim.get("projector_lr"),
                             vision_tower_lr=config.optim.get("vision_tower_lr"))
  batch = batch_shapes(config.train.grad_accum, micro, config.data.max_length, config.data.patches_per_sample,
                       model.vision.image_size, parallel.data_sharding(mesh, batch_axis=1))
  start = time.perf_counter()
  state, opt_shardings = _optimizer_state(optimizer, params, shardings, mesh)
  extra = ()
  if reference_in_step(config):
    extra = (_cast(params, config.dpo.reference_dtype),)
  elif objective_of(config) == "dpo":
    extra = (None,)
    batch["reference_logps"] = jax.ShapeDtypeStruct(batch["input_ids"].shape[:2], jnp.float32,
                                                    sharding=batch["input_ids"].sharding)
  with parallel.activation_rules(mesh):
    jitted = jax.jit(training_step(config, module, optimizer), out_shardings=(shardings, opt_shardings, None),
                     donate_argnums=(0, 1))
    compiled = jitted.lower(params, state, batch, *extra).compile()
  seconds = time.perf_counter() - start
  tokens = config.data.batch_size * per_sample * config.data.max_length
  return dict(_memory_report(compiled, devices, mesh), parameters=param_count(params),
              replicated_param_fraction=parallel.replicated_fraction(params, shardings),
              model_flops_per_step=flops_factor(config) * model_flops_per_step(
                  model, tokens, config.data.batch_size * per_sample * config.data.patches_per_sample,
                  config.data.max_length),
              compile_seconds=round(seconds, 1))


def compile_diffusion_step(config, devices, unet_config: unet2d.UNet2DConditionConfig | None = None,
                           downsample: int = 8) -> dict:
  """The Diffusion-DPO step of `config` (policy UNet, optimiser state and the frozen reference UNet, micro-batches of
  encoded pairs) for `devices`. The UNet is the checkpoint's, else `unet_config`, else SDXL's; `downsample` is the
  VAE's pixels per latent (SDXL: 8). The frozen encoders run outside the step and are not counted."""
  if config.model.checkpoint:
    unet_config = unet2d.UNet2DConditionConfig.from_dict(
        pretrained.read_config(os.path.join(config.model.checkpoint, "unet")))
  unet_config = unet_config or unet2d.UNet2DConditionConfig()
  mesh = parallel.make_mesh(**config.mesh, devices=devices)
  micro = diffusion_train.pairs_per_micro_batch(config, mesh)
  params, shardings = _placed(unet2d.param_shapes(unet_config, boxed=True), mesh)
  reference = _cast(params, config.diffusion_dpo.reference_dtype)
  optimizer, _ = diffusion_train.make_optimizer(config, max(config.train.num_steps, 1))
  start = time.perf_counter()
  state, opt_shardings = _optimizer_state(optimizer, params, shardings, mesh)
  batch = diffusion_train.pair_shapes(config, unet_config, micro, downsample, parallel.data_sharding(mesh, 1))
  step = diffusion_train.training_step(config, unet_config, optimizer, AutoencoderKLConfig.scaling_factor)
  compiled = _compile_pair_step(step, params, state, batch, reference, shardings, opt_shardings, mesh)
  return dict(_memory_report(compiled, devices, mesh), parameters=param_count(params),
              replicated_param_fraction=parallel.replicated_fraction(params, shardings),
              pairs_per_micro_batch=micro, compile_seconds=round(time.perf_counter() - start, 1))


def compile_video_step(config, devices, unet_config: unet3d.VideoCrafterUNetConfig | None = None,
                       downsample: int = 8) -> dict:
  """The video DPO step of `config` (policy UNet, optimiser state of its trained part, the frozen reference UNet,
  micro-batches of encoded clip pairs) for `devices`. The UNet is the checkpoint's, else `unet_config`, else
  VideoCrafter2's; `downsample` is the VAE's pixels per latent (8). The frozen encoders run outside the step."""
  if config.model.checkpoint:
    unet_config = unet3d.VideoCrafterUNetConfig.from_dict(
        pretrained.read_config(os.path.join(config.model.checkpoint, "unet")))
  unet_config = unet_config or unet3d.VideoCrafterUNetConfig()
  mesh = parallel.make_mesh(**config.mesh, devices=devices)
  micro = diffusion_train.pairs_per_micro_batch(config, mesh)
  params, shardings = _placed(unet3d.param_shapes(unet_config, boxed=True), mesh)
  reference = _cast(params, config.video_dpo.reference_dtype)
  mask = video_train.train_mask(config, params)
  trained, trained_shardings = trainable.split(params, mask)[0], trainable.split(shardings, mask)[0]
  # The schedule's length changes no shape; one-cycle needs some steps to be defined at all.
  optimizer, _ = video_train.make_optimizer(config, max(config.train.num_steps, 10))
  start = time.perf_counter()
  state, opt_shardings = _optimizer_state(optimizer, trained, trained_shardings, mesh)
  batch = video_train.pair_shapes(config, unet_config, micro, downsample, parallel.data_sharding(mesh, 1))
  step = video_train.training_step(config, unet_config, optimizer, LDM_VAE.scaling_factor, SCHEDULER, mask)
  compiled = _compile_pair_step(step, params, state, batch, reference, shardings, opt_shardings, mesh)
  return dict(_memory_report(compiled, devices, mesh), parameters=param_count(params),
              trained_parameters=param_count(trained),
              replicated_param_fraction=parallel.replicated_fraction(params, shardings),
              pairs_per_micro_batch=micro, compile_seconds=round(time.perf_counter() - start, 1))


def _compile_pair_step(step, params, state, batch, reference, shardings, opt_shardings, mesh):
  """A diffusion pair step compiled as the launches jit it: params and state donated, the reference not."""
  with parallel.activation_rules(mesh):
    jitted = jax.jit(step, out_shardings=(shardings, opt_shardings, None), donate_argnums=(0, 1))
    return jitted.lower(params, state, batch, reference, jax.random.key(0)).compile()


def _placed(boxed_shapes, mesh):
  """(params as sharded `jax.ShapeDtypeStruct`s, their shardings) from a model's boxed parameter shapes."""
  shardings = parallel.param_shardings(boxed_shapes, mesh)
  params = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), nn.unbox(boxed_shapes),
                        shardings)
  return params, shardings


def _cast(params, dtype: str):
  return jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, jnp.dtype(dtype), sharding=p.sharding), params)


def _optimizer_state(optimizer, params, shardings, mesh):
  """(the optimiser state of `params` as sharded shapes, its shardings)."""
  opt_shardings = parallel.optimizer_shardings(optimizer, params, shardings, mesh)
  state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                       jax.eval_shape(optimizer.init, params), opt_shardings)
  return state, opt_shardings


def _memory_report(compiled, devices, mesh) -> dict:
  memory = compiled.memory_analysis()
  per_device = (memory.argument_size_in_bytes + memory.temp_size_in_bytes + memory.output_size_in_bytes
                - memory.alias_size_in_bytes)
  kind = devices[0].device_kind
  return dict(topology=str(devices[0].platform) + f" × {len(devices)} ({kind})", devices=len(devices),
              mesh=dict(mesh.shape), per_device_bytes=int(per_device), hbm_bytes=HBM_BYTES.get(kind),
              fits=per_device <= HBM_BYTES.get(kind, float("inf")))


_CONFIG = config_flags.DEFINE_config_file("config", None, "training config file, e.g. configs/reward_llava_ov_7b.py")
_TOPOLOGY = flags.DEFINE_string("topology", "v5p-64", "TPU topology, e.g. v5p-64, v5e-256 or v5p:4x4x2")
_JSON = flags.DEFINE_bool("json", False, "print the report as one JSON object")


def main(_):
  report = compile_train_step(_CONFIG.value, topology_devices(_TOPOLOGY.value))
  if _JSON.value:
    print(json.dumps(report))
    return
  for key, value in report.items():
    if key in ("per_device_bytes", "hbm_bytes") and value is not None:
      value = f"{value / GiB:.2f} GiB"
    print(f"{key:>26}: {value}")


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
