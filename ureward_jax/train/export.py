"""A training run's checkpoint as a model folder, the kind `ureward_jax.load` and every `ureward` command read.

`export(workdir, dst, step=None, dtype=None)` reads the run's resolved config (`workdir/config.json`), restores only
the model's params of checkpoint `step` (the latest by default) into host memory — never the optimiser state, which
is twice their size — and has the run's task write the folder (`Task.export`): a reward-SFT or DPO run becomes a
LLaVA-OneVision folder (config, params, tokenizer), a Diffusion-DPO run its SDXL pipeline folder with the trained
UNet, a video DPO run its T2V-Turbo pipeline folder. The folder is staged and renamed into place
(`outputs.staged_folder`), so `dst` is never left half-written and never written over a folder of the user's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from ureward_jax import outputs
from ureward_jax.errors import UserError
from ureward_jax.train.tasks import task_class

TOOL = "launch.export"


def run_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
  """The resolved config a run wrote to its workdir."""
  path = Path(workdir) / "config.json"
  if not path.is_file():
    raise UserError(f"{workdir} is not a training workdir: {path.name} is missing (the runner writes it when a run "
                    "starts)")
  try:
    return ml_collections.ConfigDict(json.loads(path.read_text()))
  except json.JSONDecodeError as e:
    raise UserError(f"{path} is not valid JSON ({e})") from None


def checkpoint_steps(workdir: str | os.PathLike) -> list[int]:
  """The steps of the run's complete checkpoints, oldest first."""
  folder = Path(workdir) / "checkpoints"
  if not folder.is_dir():
    return []
  return [int(p.name) for p in sorted(folder.iterdir(), key=lambda p: (len(p.name), p.name))
          if p.name.isdigit() and (p / "state").is_dir()]


def restore_params(workdir: str | os.PathLike, step: int | None = None) -> tuple[int, Any]:
  """(step, the model params of that checkpoint as host numpy arrays); the latest checkpoint by default."""
  steps = checkpoint_steps(workdir)
  if not steps:
    raise UserError(f"{workdir} holds no checkpoint yet (checkpoints/<step>/state); train first")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise UserError(f"{workdir} has no checkpoint of step {step}; it has steps {steps}")
  path = Path(workdir).absolute() / "checkpoints" / str(step) / "state"
  with ocp.PyTreeCheckpointer() as checkpointer:
    stored = checkpointer.metadata(path).item_metadata["params"]
    item = {"params": jax.tree.map(lambda leaf: np.empty(leaf.shape, leaf.dtype), stored)}
    restore = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(item=item, restore_args=restore,
                                                                      partial_restore=True))
  return step, restored["params"]


def export(workdir: str | os.PathLike, dst: str | os.PathLike, step: int | None = None,
           dtype: str | None = None) -> dict:
  """Write checkpoint `step` (default: the latest) of the run in `workdir` as a model folder at `dst`, its params
  cast to `dtype` if given; returns {"step", "objective", "dst"}."""
  config = run_config(workdir)
  task = task_class(config)
  dst = outputs.check_destination(dst, TOOL, [workdir])   # before the params are read: they can be large
  step, params = restore_params(workdir, step)
  if dtype is not None:
    params = jax.tree.map(lambda x: x.astype(jnp.dtype(dtype)), params)
  with outputs.staged_folder(dst, TOOL, [workdir]) as staging:
    task.export(config, params, Path(workdir), staging)
  return {"step": step, "objective": config.train.objective, "dst": str(dst)}
