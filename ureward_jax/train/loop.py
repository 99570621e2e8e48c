"""The training loop shared by every step: compiled steps per batch shape, metrics, checkpoints, preemption.

Each iteration takes a host batch, places it on the mesh and runs the step compiled for its shape. Every step's
loss is checked: a non-finite loss stops the run with the step and the ids of the records in its batch. Metrics
(averaged over `log_every` steps) go to `MetricsWriter`; checkpoints every `checkpoint.every` steps, at the end and
on SIGTERM (the signal lets the current step finish, then the loop saves and returns). Ctrl-C (SIGINT) does the same
and then raises KeyboardInterrupt, so the entry point reports "interrupted; re-run to resume" with nothing lost; a
second Ctrl-C interrupts at once, losing the steps since the last checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from typing import Any, Callable, Iterable

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from ureward_jax.data.pipeline import batch_stats
from ureward_jax.train.checkpoint import Checkpointer
from ureward_jax.train.metrics import MetricsWriter


class NonFiniteLoss(FloatingPointError):
  pass


@dataclasses.dataclass
class LoopState:
  step: int          # optimiser steps done
  params: Any
  opt_state: Any


@dataclasses.dataclass
class Loop:
  """step_for(batch) → the compiled step for that batch's shape; place(batch) → device arrays of its model inputs;
  flops(batch) → model FLOPs of one step on it; record_ids(indices) → the ids of those source records."""
  step_for: Callable[[dict], Callable]
  place: Callable[[dict], dict]
  flops: Callable[[dict], float]
  record_ids: Callable[[list[int]], list[str]]
  num_steps: int
  log_every: int
  checkpointer: Checkpointer
  metrics: MetricsWriter
  learning_rate: Callable[[int], float]
  peak_flops: float | None = None   # per device; None: no utilisation figure

  def run(self, state: LoopState, batches: Iterable[dict]) -> LoopState:
    """Train from `state.step` to `num_steps` on `batches` (which start at the batch after `state.step`)."""
    stop = {"signal": None}

    def request_stop(signum, _):
      stop["signal"] = signum
      if signum == signal.SIGINT:
        logging.warning("Ctrl-C: saving after this step (press it again to stop at once)")
        signal.signal(signal.SIGINT, signal.default_int_handler)
    previous = {signum: signal.signal(signum, request_stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    window, skipped_ids = [], []
    start = time.perf_counter()
    progress = tqdm(total=self.num_steps, initial=state.step, desc="train", unit="step",
                    disable=jax.process_index() != 0)
    try:
      for batch in batches:
        if state.step >= self.num_steps or stop["signal"] is not None:
          break
        step_fn = self.step_for(batch)
        state.params, state.opt_state, metrics = step_fn(state.params, state.opt_state, self.place(batch))
        state.step += 1
        progress.update()
        loss = float(metrics["loss"])
        if not math.isfinite(loss):
          ids = self.record_ids(batch["index"].tolist())
          raise NonFiniteLoss(f"loss is {loss} at step {state.step}; the batch held records {ids}")
        stats = batch_stats(batch)
        skipped_ids += self.record_ids(stats.pop("bad_indices"))
        extra = {k: float(v) for k, v in metrics.items() if k not in ("loss", "grad_norm")}
        # Token batches count tokens; image batches (Diffusion-DPO) count their records.
        tokens = int(batch["attention_mask"].sum()) if "attention_mask" in batch else None
        window.append(dict(loss=loss, grad_norm=float(metrics["grad_norm"]), tokens=tokens,
                           samples=len(batch["index"]),
                           flops=self.flops(batch), extra=extra, **stats))
        if state.step % self.log_every == 0 or state.step == self.num_steps:
          self._log(state.step, window, time.perf_counter() - start, skipped_ids)
          progress.set_postfix(loss=f"{loss:.4f}")
          window, skipped_ids, start = [], [], time.perf_counter()
        self.checkpointer.save(state.step, state.params, state.opt_state, {"next_batch": state.step})
    finally:
      progress.close()
      for signum, handler in previous.items():
        signal.signal(signum, handler)
    # The end of the run, or a preemption: save where we are (a no-op if this step is already saved).
    if self.checkpointer.latest_step() != state.step:
      self.checkpointer.save(state.step, state.params, state.opt_state, {"next_batch": state.step}, force=True)
    self.checkpointer.close()
    self.metrics.close()
    if stop["signal"] == signal.SIGINT:
      raise KeyboardInterrupt   # after saving: the entry point says so
    return state

  def _log(self, step: int, window: list[dict], seconds: float, skipped_ids: list[str]):
    total = lambda key: sum(w[key] for w in window)
    row = dict(loss=float(np.mean([w["loss"] for w in window])), grad_norm=window[-1]["grad_norm"],
               learning_rate=float(self.learning_rate(step - 1)), samples_per_second=total("samples") / seconds,
               skipped_records=total("bad"), truncated_samples=total("truncated"), seconds_per_step=seconds / len(window))
    if window[-1]["tokens"] is not None:
      row["tokens_per_second"] = total("tokens") / seconds
    for key in window[-1]["extra"]:   # further scalars of the step (DPO rewards), averaged like the loss
      row[key] = float(np.mean([w["extra"][key] for w in window]))
    if self.peak_flops:
      row["mfu"] = total("flops") / seconds / (self.peak_flops * jax.device_count())
    if skipped_ids:
      row["skipped_ids"] = skipped_ids
    self.metrics.write(step, row)
