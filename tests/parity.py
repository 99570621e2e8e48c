"""The parity measure every port's tests share."""

import numpy as np


def max_rel(ours, ref) -> float:
  """max |ours − ref| / max |ref|: the error relative to the output's scale."""
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))
