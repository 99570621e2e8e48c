"""Run metrics: one JSON object per logged step in `workdir/metrics.jsonl`, and TensorBoard scalars beside it.

Only the first host writes. A resumed run first drops the lines of steps after its checkpoint, so the file reads as
one uninterrupted run.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np


class MetricsWriter:

  def __init__(self, workdir: str, resume_step: int = 0):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tensorboard = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    if os.path.exists(self.path):
      with open(self.path) as f:
        kept = [line for line in f if line.strip() and json.loads(line)["step"] <= resume_step]
      with open(self.path, "w") as f:
        f.writelines(kept)
    from tensorboardX import SummaryWriter
    self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict[str, Any]):
    if not self.enabled:
      return
    row = {"step": int(step)}
    for key, value in metrics.items():
      row[key] = value.item() if isinstance(value, (np.generic, np.ndarray, jax.Array)) else value
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    for key, value in row.items():
      if key != "step" and isinstance(value, (int, float)):
        self._tensorboard.add_scalar(key, value, step)
    self._tensorboard.flush()

  def close(self):
    if self._tensorboard is not None:
      self._tensorboard.close()
