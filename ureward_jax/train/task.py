"""What a training objective supplies to the runner: the part that differs between reward SFT, VLM DPO,
Diffusion-DPO and video DPO. Everything else (mesh, sharded params, optimiser state, the jitted step with donation,
ahead-of-time compilation, checkpoints, resumption, metrics) is the runner's, the same for every task.

A task is built twice over the same code: for training (`abstract=False`: weights loaded, data read) and for
ahead-of-time compilation (`abstract=True`: configs only, no weights, no data), so that `train.compile` compiles
exactly the step `train.train` runs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import ml_collections
from absl import logging

from ureward_jax import parallel

# Keys every training config declares; a task adds its own (`Task.config_keys`).
COMMON_KEYS = {
    "": ("workdir", "seed", "remat", "model", "data", "mesh", "train", "optim", "checkpoint"),
    "mesh": parallel.MESH_AXES,
    "train": ("objective", "num_steps", "num_epochs", "log_every", "grad_accum"),
    "checkpoint": ("every", "keep"),
}


class Task:
  """The interface; see the four task modules in `train/tasks/` for what each method returns."""

  summed_metrics: tuple[str, ...] = ()   # step metrics summed over micro-batches (counts), not averaged

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, abstract: bool = False):
    self.config, self.mesh, self.abstract = config, mesh, abstract

  @classmethod
  def config_keys(cls, config: ml_collections.ConfigDict) -> dict[str, tuple[str, ...]]:
    """{section ("" for the top level): its keys} that this task reads beyond `COMMON_KEYS`."""
    raise NotImplementedError

  # The model and its state.
  def param_shapes(self) -> Any:
    """The trained model's boxed parameter shapes (logical axis names: the shardings come from them)."""
    raise NotImplementedError

  def load_params(self, shardings: Any) -> Any:
    """The starting params, placed on `shardings`: the checkpoint's, or a seeded initialisation."""
    raise NotImplementedError

  def train_mask(self, params: Any) -> Any | None:
    """A tree of bools laid out as the params: what trains (None: everything)."""
    return None

  def optimizer(self, num_steps: int, trained: Any):
    """(optimiser of the trained subtree, learning-rate schedule): `optim.make_optimizer` with the task's choices."""
    raise NotImplementedError

  def reference(self, params: Any, shardings: Any) -> Any | None:
    """The frozen reference the step takes as an argument (never donated), or None."""
    return None

  def loss_fn(self) -> Callable:
    """loss_fn(params, reference, micro_batch, rng) → (loss, metrics) of one micro-batch."""
    raise NotImplementedError

  # The data.
  def num_records(self) -> int:
    raise NotImplementedError

  def num_steps(self) -> int:
    """Optimiser steps: `train.num_epochs` passes over the records (rounded up) when set, else `train.num_steps`.
    Compiling ahead of time reads no data: the schedule's length changes no shape."""
    c = self.config
    if self.abstract:
      return max(c.train.num_steps, 10)
    if not c.train.num_epochs:
      return c.train.num_steps
    num_steps = math.ceil(c.train.num_epochs * self.num_records() / c.data.batch_size)
    logging.info("%s epochs of %d records: %d steps", c.train.num_epochs, self.num_records(), num_steps)
    return num_steps

  def step_inputs(self) -> dict[Any, dict[str, jax.ShapeDtypeStruct]]:
    """{shape key: the step's batch as sharded shapes (A, ...)}, one per shape the step is compiled for; the last is
    the largest (what `train.compile` reports)."""
    raise NotImplementedError

  def shape_key(self, batch: dict) -> Any:
    """The `step_inputs` key of a host batch."""
    return next(iter(self.step_inputs()))

  def stream(self, start: int) -> Iterator[dict]:
    """This host's batches from batch `start` on (numpy, with `index` and `bad`)."""
    raise NotImplementedError

  def place(self, batch: dict) -> dict:
    """The step's inputs of a host batch, as global arrays on the mesh."""
    raise NotImplementedError

  def flops(self, inputs: dict[str, jax.ShapeDtypeStruct]) -> float:
    """Model FLOPs of one optimiser step on global inputs of these shapes."""
    raise NotImplementedError

  def record_id(self, index: int) -> str:
    raise NotImplementedError

  def write_files(self, workdir: str) -> None:
    """Files the run's workdir keeps besides the resolved config (tokenizer, model config); first host only."""

  @classmethod
  def export(cls, config: ml_collections.ConfigDict, params: Any, workdir: Path, dst: Path) -> None:
    """Write the model of a finished (or running) run as a folder `ureward_jax.load` reads: `config` is the run's
    resolved config, `params` the checkpoint's model params on the host, `dst` an empty folder (`train.export`)."""
    raise NotImplementedError
