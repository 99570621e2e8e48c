"""Train the reward model (SFT), or align a LLaVA policy with DPO, from an ml_collections config.

  python -m launch.train --config=configs/demo.py --config.workdir=/tmp/run [--config.train.num_steps=200 ...]

The workdir receives `config.json` (the resolved config), `checkpoints/`, `metrics.jsonl`, `tensorboard/` and the
tokenizer used. Re-running the same command resumes from the latest checkpoint; SIGTERM finishes the current step,
saves and exits. `train.objective = "diffusion_dpo"` aligns an SDXL UNet instead (`launch/diffusion_train.py`),
`"video_dpo"` T2V-Turbo's (`launch/video_train.py`).
`train.objective = "dpo"` trains on preference records (`data.examples.make_preference_example`)
with the `dpo` settings, against a frozen reference: the starting model, kept as a copy in `dpo.reference_dtype`
and run in every step (`dpo.reference = "step"`), or run once over the data before training
(`"precomputed"`, kept in workdir/reference_logps.npy).
On a TPU slice or a GPU cluster the same command runs on every host (`launch/tpu_pod.sh`,
`launch/gpu_slurm.sh`); `jax.distributed.initialize()` is called when the environment names several processes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tokenizers
from absl import app, flags, logging
from ml_collections import config_flags
from tqdm import tqdm

from ureward_jax import parallel, pretrained
from ureward_jax.data.examples import ExampleConfig
from ureward_jax.data.pipeline import MODEL_KEYS, BuildExample, DataConfig, batch_shapes, batches, to_device
from ureward_jax.data.sources import load_mixture
from ureward_jax.models.llava_onevision import PRESETS, LlavaOnevision, LlavaOnevisionConfig, init_params
from ureward_jax.train.checkpoint import Checkpointer
from ureward_jax.train.dpo import make_dpo_step, sequence_logps
from ureward_jax.train.flops import model_flops_per_step, peak_flops
from ureward_jax.train.loop import Loop, LoopState
from ureward_jax.train.metrics import MetricsWriter
from ureward_jax.train.optim import learning_rate_schedule, make_optimizer
from ureward_jax.train.step import make_sft_step


def _maybe_initialize_distributed():
  """Join the other hosts when the environment describes more than one process."""
  if jax.distributed.is_initialized():
    return
  several = int(os.environ.get("SLURM_NTASKS", "1")) > 1 or "," in os.environ.get("TPU_WORKER_HOSTNAMES", "") \
      or "JAX_COORDINATOR_ADDRESS" in os.environ or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ
  if several:
    jax.distributed.initialize()


def _tokenizer_file(config) -> str:
  path = config.data.get("tokenizer") or (os.path.join(config.model.checkpoint, "tokenizer.json")
                                          if config.model.checkpoint else "")
  if not path or not os.path.exists(path):
    raise FileNotFoundError(f"no tokenizer at {path!r}: set data.tokenizer or model.checkpoint (a folder with "
                            "tokenizer.json)")
  return path


def model_config(config, tokenizer: tokenizers.Tokenizer) -> LlavaOnevisionConfig:
  """The checkpoint's architecture, or a preset whose vocabulary and special-token ids come from the tokenizer."""
  if config.model.checkpoint:
    return LlavaOnevisionConfig.from_dict(pretrained.read_config(config.model.checkpoint))
  if config.model.preset not in PRESETS:
    raise ValueError(f"unknown model preset {config.model.preset!r}; choose one of {sorted(PRESETS)}")
  model = PRESETS[config.model.preset]
  image = tokenizer.token_to_id("<image>")
  video = tokenizer.token_to_id("<video>")
  if image is None or video is None:
    raise ValueError("a model trained from scratch takes its <image> and <video> ids from the tokenizer, which "
                     "lacks one of them")
  text = dataclasses.replace(model.text, vocab_size=tokenizer.get_vocab_size())
  return dataclasses.replace(model, text=text, image_token_id=image, video_token_id=video)


OBJECTIVES = ("sft", "dpo", "diffusion_dpo", "video_dpo")


def objective_of(config) -> str:
  """train.objective: "sft" (the default) or "dpo" for the LLaVA model, "diffusion_dpo" for an SDXL UNet,
  "video_dpo" for T2V-Turbo's."""
  objective = config.train.get("objective", "sft")
  if objective not in OBJECTIVES:
    raise ValueError(f"train.objective {objective!r} is not one of {OBJECTIVES}")
  return objective


def num_steps_of(config, num_records: int) -> int:
  """Optimiser steps: `train.num_epochs` passes over the records (rounded up) when set, else `train.num_steps`."""
  if not config.train.get("num_epochs"):
    return config.train.num_steps
  num_steps = math.ceil(config.train.num_epochs * num_records / config.data.batch_size)
  logging.info("%s epochs of %d records: %d steps", config.train.num_epochs, num_records, num_steps)
  return num_steps


def sequences_per_micro_batch(config, mesh) -> int:
  """Sequences in one micro-batch: batch_size / grad_accum, twice that for DPO pairs, whose chosen and rejected
  rows must share a device."""
  per_sample = 2 if objective_of(config) == "dpo" else 1
  micro = config.data.batch_size // config.train.grad_accum * per_sample
  if micro % (parallel.batch_shards(mesh) * per_sample):
    raise ValueError(f"a micro-batch of {micro} sequences (batch_size / grad_accum, two per DPO pair) cannot be "
                     f"split over {parallel.batch_shards(mesh)} data × fsdp devices; lower grad_accum or raise "
                     "batch_size")
  return micro


def training_step(config, module: LlavaOnevision, optimizer):
  """The config's step function: SFT, or DPO with its `dpo` settings (see `train.dpo.make_dpo_step`)."""
  if objective_of(config) == "sft":
    return make_sft_step(module, optimizer, config.train.logits_chunk)
  d = config.dpo
  return make_dpo_step(module, optimizer, d.beta, d.loss_type, d.label_smoothing, d.gamma, config.train.logits_chunk)


def reference_in_step(config) -> bool:
  """Whether each step runs the DPO reference forward (not when its log-probabilities are precomputed)."""
  return objective_of(config) == "dpo" and config.dpo.get("reference", "step") != "precomputed"


def flops_factor(config) -> float:
  """Model FLOPs of a step relative to SFT's: a step running the reference forward does 8 instead of 6 per
  parameter and token."""
  return 4 / 3 if reference_in_step(config) else 1.0


def _reference_table(config, module, reference, records, example_cfg, tokenizer_file: str, micro: int, rows,
                     mesh) -> np.ndarray:
  """(N, 2) fp32: the reference's log-probabilities of every record's chosen and rejected answer, computed in one pass
  over the records in order (bad records: 0) and kept in workdir/reference_logps.npy for resumed runs."""
  path = os.path.join(config.workdir, "reference_logps.npy")
  if os.path.exists(path):
    table = np.load(path)
    if table.shape != (len(records), 2):
      raise ValueError(f"{path} holds {table.shape[0]} records' reference log-probabilities but the data has "
                       f"{len(records)}; delete it to compute them again")
    return table
  if jax.process_count() > 1:
    raise NotImplementedError("precomputed reference log-probabilities are computed on one host; run the pass "
                              "single-host first (it writes reference_logps.npy) or use dpo.reference='step'")
  build = BuildExample(records, example_cfg, tokenizer_file, preference=True)
  average = config.dpo.loss_type == "ipo"
  logps = jax.jit(lambda p, b: sequence_logps(module, p, {k: v[0] for k, v in b.items()}, config.train.logits_chunk,
                                                average)[0])
  pairs = micro // 2
  table = np.zeros((len(records), 2), np.float32)
  with parallel.activation_rules(mesh):
    for start in tqdm(range(0, len(records), pairs), desc="reference log-probabilities", unit="batch",
                      total=-(-len(records) // pairs)):
      indices = [min(i, len(records) - 1) for i in range(start, start + pairs)]   # the last batch padded
      examples = [build.map(i) for i in indices]
      batch = {k: np.concatenate([e[k] for e in examples]) for k in MODEL_KEYS}
      values = np.asarray(logps(reference, to_device(batch, 1, rows))).reshape(-1, 2)
      count = min(pairs, len(records) - start)
      table[start:start + count] = values[:count]
  np.save(path, table)
  return table


def train(config: ml_collections.ConfigDict) -> LoopState:
  """Run (or resume) the training described by `config`; returns the final state."""
  if not config.workdir:
    raise ValueError("set --config.workdir: where checkpoints, metrics and the resolved config go")
  _maybe_initialize_distributed()
  os.makedirs(config.workdir, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", os.path.join(config.workdir, "xla_cache"))
  if objective_of(config) == "diffusion_dpo":
    from launch import diffusion_train
    return diffusion_train.train(config)
  if objective_of(config) == "video_dpo":
    from launch import video_train
    return video_train.train(config)
  tokenizer_file = _tokenizer_file(config)
  tokenizer = tokenizers.Tokenizer.from_file(tokenizer_file)
  model = model_config(config, tokenizer)
  if jax.process_index() == 0:
    with open(os.path.join(config.workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=2))
    shutil.copy(tokenizer_file, os.path.join(config.workdir, "tokenizer.json"))
    with open(os.path.join(config.workdir, "model_config.json"), "w") as f:
      json.dump(model.to_dict(), f, indent=2)

  mesh = parallel.make_mesh(**config.mesh)
  dtype = jnp.dtype(config.model.dtype)
  module = LlavaOnevision(model, dtype=dtype, remat=config.remat)
  shardings = parallel.param_shardings(jax.eval_shape(lambda r: init_params(model, r), jax.random.key(0)), mesh)
  if config.model.checkpoint:
    params = parallel.place(pretrained.load_params(config.model.checkpoint, np.float32), shardings)
  else:
    params, _ = parallel.init_sharded(lambda r: init_params(model, r), jax.random.key(config.seed), mesh)
  logging.info("parameters: %d; replicated bytes: %.1f%%", sum(p.size for p in jax.tree.leaves(params)),
               100 * parallel.replicated_fraction(params))
  objective = objective_of(config)
  records = load_mixture(config.data.train, config.data.get("image_folder") or None, seed=config.seed)
  num_steps = num_steps_of(config, len(records))
  if config.optim.name != "adamw":
    raise ValueError(f"optim.name {config.optim.name!r} is not supported for reward training; use adamw")
  optimizer = make_optimizer(params, config.optim.lr, num_steps, config.optim.schedule, config.optim.warmup_ratio,
                             config.optim.weight_decay, config.optim.clip_norm, parts=tuple(config.train.tunable_parts),
                             projector_lr=config.optim.get("projector_lr"),
                             vision_tower_lr=config.optim.get("vision_tower_lr"))
  opt_shardings = parallel.optimizer_shardings(optimizer, params, shardings, mesh)
  opt_state = jax.jit(optimizer.init, out_shardings=opt_shardings)(params)

  checkpointer = Checkpointer(os.path.join(config.workdir, "checkpoints"), config.checkpoint.every,
                              config.checkpoint.keep)
  state = LoopState(0, params, opt_state)
  next_batch = 0
  if (latest := checkpointer.latest_step()) is not None:
    state.params, state.opt_state, data_state = checkpointer.restore(latest, params, opt_state)
    state.step, next_batch = latest, int(data_state["next_batch"])
    logging.info("resumed from step %d", latest)

  example_cfg = ExampleConfig.for_model(model, config.data.max_length, config.data.patches_per_sample,
                                        video_frames=config.data.video_frames,
                                        assistant_only=config.data.assistant_only)
  accum = config.train.grad_accum
  data_cfg = DataConfig(config.data.batch_size, accum, config.seed, buckets=tuple(config.data.buckets),
                        workers=config.data.workers, preference=objective == "dpo")
  stream = batches(records, example_cfg, tokenizer_file, data_cfg, start=next_batch)

  rows = parallel.data_sharding(mesh, batch_axis=1)
  micro = sequences_per_micro_batch(config, mesh)
  extra, step_inputs = (), {}
  if objective == "dpo":
    # The reference is the starting model, never the resumed one; a fresh copy, as the step donates the params.
    reference_dtype = jnp.dtype(config.dpo.reference_dtype)
    extra = (jax.jit(lambda p: jax.tree.map(lambda x: x.astype(reference_dtype), p), out_shardings=shardings)(params),)
    if not reference_in_step(config):
      table = _reference_table(config, module, extra[0], records, example_cfg, tokenizer_file, micro, rows, mesh)
      stream = map(lambda b: b | {"reference_logps": table[b["index"], np.arange(len(b["index"])) % 2]}, stream)
      extra = (None,)
      step_inputs = {"reference_logps": jax.ShapeDtypeStruct((accum, micro), jnp.float32, sharding=rows)}
  jitted = jax.jit(training_step(config, module, optimizer), out_shardings=(shardings, opt_shardings, None),
                   donate_argnums=(0, 1))
  lengths = sorted({b for b in config.data.buckets if b < config.data.max_length} | {config.data.max_length})
  with parallel.activation_rules(mesh):
    # Compiled before the loop, once per bucket length: no compile stalls mid-run.
    compiled = {length: jitted.lower(state.params, state.opt_state,
                                     batch_shapes(accum, micro, length, example_cfg.max_patches,
                                                  example_cfg.processor.size, rows) | step_inputs, *extra).compile()
                for length in lengths}

  loop = Loop(
      step_for=lambda batch: lambda p, o, b, run=compiled[batch["input_ids"].shape[1]]: run(p, o, b, *extra),
      place=functools.partial(to_device, grad_accum=accum, sharding=rows),
      # Host batches are this host's share; utilisation is over the global batch and all devices.
      flops=lambda batch: flops_factor(config) * jax.process_count() * model_flops_per_step(
          model, batch["input_ids"].size, batch["pixels"].shape[0] * batch["pixels"].shape[1],
          batch["input_ids"].shape[1]),
      record_ids=lambda indices: [str(records[i].data.get("id", f"#{i}")) for i in indices],
      num_steps=num_steps, log_every=config.train.log_every, checkpointer=checkpointer,
      metrics=MetricsWriter(config.workdir, resume_step=state.step),
      learning_rate=learning_rate_schedule(config.optim.lr, num_steps, config.optim.schedule,
                                           config.optim.warmup_ratio),
      peak_flops=peak_flops(jax.devices()[0].device_kind))
  return loop.run(state, stream)


if __name__ == "__main__":
  # Defined here, not at import, so that other entry points (launch.aot, tests) can import this module.
  _CONFIG = config_flags.DEFINE_config_file("config", None, "training config file, e.g. configs/demo.py")

  def main(_):
    train(_CONFIG.value)

  flags.mark_flag_as_required("config")
  app.run(main)
