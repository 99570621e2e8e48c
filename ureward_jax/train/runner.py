"""One runner for every training task: `train(config)` runs or resumes it, `compile(config, topology)` compiles the
same step for an accelerator topology on this host. Both go through `prepare`, so what is compiled ahead of time is
exactly what trains.

The runner owns what every objective shares: the config's schema check, the mesh, the params created already sharded,
the trained part (`trainable.split`), the optimiser state of that part, the step (`accumulate.accumulating_step`)
jitted once with the params and optimiser state donated and the frozen reference passed, compilation before the loop
(once per batch shape), checkpoints with the data position, resumption, metrics and preemption (`loop.Loop`).
The task (`train/tasks/`) supplies the rest.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Sequence

import jax
import ml_collections
from absl import logging

from ureward_jax import parallel
from ureward_jax.errors import UserError
from ureward_jax.train import params as params_lib
from ureward_jax.train import trainable
from ureward_jax.train.accumulate import accumulating_step
from ureward_jax.train.checkpoint import Checkpointer
from ureward_jax.train.flops import peak_flops
from ureward_jax.train.loop import Loop, LoopState
from ureward_jax.train.metrics import MetricsWriter
from ureward_jax.train.optim import param_count
from ureward_jax.train.task import COMMON_KEYS, Task
from ureward_jax.train.tasks import task_class
from ureward_jax.train.topology import memory_report, topology_devices


def check_config(config: ml_collections.ConfigDict, keys: dict[str, Sequence[str]]) -> None:
  """Every key the task reads is declared in the config, and the config declares nothing else: a misspelt or stale
  key is an error naming it, never silently ignored. The shared counts (batch size, steps, intervals) are whole
  numbers in range."""
  missing, unknown = [], []
  for section, names in keys.items():
    node = config if not section else config.get(section)
    prefix = f"{section}." if section else ""
    if not isinstance(node, ml_collections.ConfigDict):
      missing.append(section)
      continue
    missing += [prefix + k for k in names if k not in node]
    unknown += [prefix + k for k in node.keys() if k not in names]
  problems = ([f"unknown keys {sorted(unknown)}"] if unknown else []) + \
      ([f"missing keys {sorted(missing)} (declare them in the config file)"] if missing else [])
  if not problems:
    problems = [f"{name} must be a whole number ≥ {least}, got {value!r}"
                for name, value, least in _counts(config) if isinstance(value, bool) or not isinstance(value, int)
                or value < least]
  if problems:
    raise UserError(f"config of train.objective {config.train.objective!r}: " + "; ".join(problems))


# The counts every config sets, with their least value (0 steps or epochs: the other one decides the length).
_COUNTS = (("data.batch_size", 1), ("train.num_steps", 0), ("train.num_epochs", 0), ("train.log_every", 1),
           ("train.grad_accum", 1), ("checkpoint.every", 1), ("checkpoint.keep", 1))


def _counts(config: ml_collections.ConfigDict):
  """(name, value, least) of each of `_COUNTS` the config holds."""
  for name, least in _COUNTS:
    section, key = name.split(".")
    if key in config.get(section, {}):
      yield name, config[section][key], least


def config_keys(config: ml_collections.ConfigDict, task: type[Task]) -> dict[str, tuple[str, ...]]:
  """The whole schema of a task's config: the common keys and the task's own, section by section."""
  keys = {section: tuple(names) for section, names in COMMON_KEYS.items()}
  for section, names in task.config_keys(config).items():
    keys[section] = keys.get(section, ()) + tuple(names)
  return keys


@dataclasses.dataclass
class Prepared:
  """A task with its state placed on the mesh and its step jitted (not yet compiled)."""
  task: Task
  mesh: jax.sharding.Mesh
  params: Any
  opt_state: Any
  reference: Any
  step: Callable
  num_steps: int
  learning_rate: Callable[[int], Any]
  trained_parameters: int


def prepare(config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None,
            abstract: bool = False) -> Prepared:
  """The task of `config` on a mesh of `devices`, its params (or, `abstract`, their sharded shapes), optimiser state,
  reference and jitted step."""
  if "train" not in config or "objective" not in config.train:
    raise UserError("the config declares no train.objective (one of sft, dpo, diffusion_dpo, video_dpo)")
  cls = task_class(config)
  check_config(config, config_keys(config, cls))
  mesh = parallel.make_mesh(**config.mesh, devices=devices)
  task = cls(config, mesh, abstract)
  boxed = task.param_shapes()
  shardings = parallel.param_shardings(boxed, mesh)
  params = params_lib.abstract(boxed, shardings) if abstract else task.load_params(shardings)
  logging.info("parameters: %d; replicated bytes: %.1f%%", param_count(params),
               100 * parallel.replicated_fraction(params, shardings))
  mask = task.train_mask(params)
  trained, trained_shardings = trainable.split(params, mask)[0], trainable.split(shardings, mask)[0]
  num_steps = task.num_steps()
  optimizer, learning_rate = task.optimizer(num_steps, trained)
  opt_shardings = parallel.optimizer_shardings(optimizer, trained, trained_shardings, mesh)
  if abstract:
    opt_state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                             jax.eval_shape(optimizer.init, trained), opt_shardings)
  else:
    opt_state = jax.jit(optimizer.init, out_shardings=opt_shardings)(trained)
  reference = task.reference(params, shardings)   # the starting model: made before any resume
  step = jax.jit(accumulating_step(task.loss_fn(), optimizer, mask, task.summed_metrics),
                 out_shardings=(shardings, opt_shardings, None), donate_argnums=(0, 1))
  return Prepared(task, mesh, params, opt_state, reference, step, num_steps, learning_rate, param_count(trained))


def train(config: ml_collections.ConfigDict) -> LoopState:
  """Run (or resume) the training `config` describes; returns the final state."""
  if not config.get("workdir"):
    raise UserError("set --config.workdir: where checkpoints, metrics and the resolved config go")
  _maybe_initialize_distributed()
  run = prepare(config)   # checks the config, data and weights: a refused run writes nothing to the workdir
  os.makedirs(config.workdir, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", os.path.join(config.workdir, "xla_cache"))
  task = run.task
  if jax.process_index() == 0:
    with open(os.path.join(config.workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=2))
    task.write_files(config.workdir)

  checkpointer = Checkpointer(os.path.join(config.workdir, "checkpoints"), config.checkpoint.every,
                              config.checkpoint.keep)
  state, next_batch = LoopState(0, run.params, run.opt_state), 0
  if (latest := checkpointer.latest_step()) is not None:
    state.params, state.opt_state, data_state = checkpointer.restore(latest, run.params, run.opt_state)
    state.step, next_batch = latest, int(data_state["next_batch"])
    logging.info("resumed from step %d", latest)
  logging.info("%d records, %d steps", task.num_records(), run.num_steps)

  shapes = task.step_inputs()
  rng_sharding = parallel.replicated(run.mesh)
  with parallel.activation_rules(run.mesh):
    # Compiled before the loop, once per batch shape: no compile stalls mid-run.
    compiled = {key: run.step.lower(state.params, state.opt_state, inputs, run.reference,
                                    _rng_shape(rng_sharding)).compile() for key, inputs in shapes.items()}
  peak = peak_flops(jax.devices()[0].device_kind)
  flops = {key: task.flops(inputs) for key, inputs in shapes.items()} if peak else {}

  def place(batch):
    rng = jax.random.fold_in(jax.random.key(config.seed), batch["number"])
    return {"inputs": task.place(batch), "rng": jax.device_put(rng, rng_sharding)}

  def step_for(batch):
    run_step = compiled[task.shape_key(batch)]
    return lambda p, o, b: run_step(p, o, b["inputs"], run.reference, b["rng"])

  numbered = (b | {"number": n} for n, b in enumerate(task.stream(next_batch), start=next_batch))
  loop = Loop(step_for=step_for, place=place, flops=lambda batch: flops.get(task.shape_key(batch), 0.0),
              record_ids=lambda indices: [task.record_id(i) for i in indices], num_steps=run.num_steps,
              log_every=config.train.log_every, checkpointer=checkpointer,
              metrics=MetricsWriter(config.workdir, resume_step=state.step), learning_rate=run.learning_rate,
              peak_flops=peak)
  return loop.run(state, numbered)


def compile(config: ml_collections.ConfigDict, topology: str | Sequence[jax.Device]) -> dict:
  """Lower and compile the training step of `config` for a topology (a TPU name such as `v5p-64`, compiled through
  libtpu on this host, or a list of devices) at its largest batch shape, without weights or data; returns the
  report: per-device bytes against the chip's HBM, parameters (all and trained), the share of parameter bytes that
  stay replicated, model FLOPs per step, samples per micro-batch and compile seconds."""
  devices = topology_devices(topology) if isinstance(topology, str) else list(topology)
  run = prepare(config, devices, abstract=True)
  inputs = list(run.task.step_inputs().values())[-1]
  start = time.perf_counter()
  with parallel.activation_rules(run.mesh):
    compiled = run.step.lower(run.params, run.opt_state, inputs, run.reference,
                              _rng_shape(parallel.replicated(run.mesh))).compile()
  seconds = time.perf_counter() - start
  return dict(memory_report(compiled, devices, run.mesh), parameters=param_count(run.params),
              trained_parameters=run.trained_parameters,
              replicated_param_fraction=parallel.replicated_fraction(run.params),
              model_flops_per_step=run.task.flops(inputs), micro_batch=run.task.micro,
              compile_seconds=round(seconds, 1))


def _rng_shape(sharding) -> jax.ShapeDtypeStruct:
  key = jax.eval_shape(lambda: jax.random.key(0))
  return jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=sharding)


def _maybe_initialize_distributed():
  """Join the other hosts when the environment describes more than one process."""
  if jax.distributed.is_initialized():
    return
  several = int(os.environ.get("SLURM_NTASKS", "1")) > 1 or "," in os.environ.get("TPU_WORKER_HOSTNAMES", "") \
      or "JAX_COORDINATOR_ADDRESS" in os.environ or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ
  if several:
    jax.distributed.initialize()
