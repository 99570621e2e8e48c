"""Training checkpoints: params, optimiser state and the data position, saved asynchronously by Orbax.

`workdir/checkpoints/<step>/` holds `state` (params and optimiser state, sharded arrays) and `data` (JSON:
`next_batch`, the number of batches consumed). Restoring takes the current mesh's shardings, so a run can resume on
a different mesh shape or device count.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from ureward_jax.errors import UserError


class Checkpointer:
  """Keeps the last `keep` checkpoints of a run, saving every `every` steps (and whenever `force` is given)."""

  def __init__(self, directory: str, every: int, keep: int, async_save: bool = True):
    if every <= 0 or keep <= 0:
      raise UserError(f"checkpoint.every and checkpoint.keep must be positive, got {every} and {keep}")
    self.every = every
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, params: Any, opt_state: Any, data_state: dict, force: bool = False) -> bool:
    """Start saving if `step` is a multiple of `every` or `force` (returns at once unless a previous save is still
    being written); True if a save began."""
    if step % self.every and not force:
      return False
    # The interval is decided here: Orbax's own policy would also save the first step of every run.
    return self.manager.save(step, force=True, args=ocp.args.Composite(
        state=ocp.args.StandardSave({"params": params, "opt_state": opt_state}),
        data=ocp.args.JsonSave(data_state)))

  def restore(self, step: int, params: Any, opt_state: Any) -> tuple[Any, Any, dict]:
    """(params, opt_state, data_state) of `step`, laid out like the given arrays or `jax.ShapeDtypeStruct`s."""
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                            {"params": params, "opt_state": opt_state})
    restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                  data=ocp.args.JsonRestore()))
    return restored.state["params"], restored.state["opt_state"], restored.data

  def close(self):
    """Wait for pending saves to finish."""
    self.manager.wait_until_finished()
    self.manager.close()
