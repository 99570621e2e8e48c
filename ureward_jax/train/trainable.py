"""Training part of a model: its params split into a trained and a frozen subtree, and the rules that choose them.

The one freezing mechanism of every task (`Task.train_mask`): a frozen leaf gets no gradient (none is computed), no
update and no optimiser state, as the optimiser is initialised on the trained subtree alone. Both subtrees are nested
dicts laid out as the params, each holding only its own leaves.
"""

from __future__ import annotations

from typing import Any

from flax import traverse_util


def split(params: dict, mask: dict | None) -> tuple[dict, dict]:
  """(trained, frozen) subtrees of `params` by `mask`, a tree of bools laid out as `params` (None: all trained)."""
  if mask is None:
    return params, {}
  flat, flat_mask = traverse_util.flatten_dict(params), traverse_util.flatten_dict(mask)
  if flat.keys() != flat_mask.keys():
    raise ValueError(f"the trainable mask does not match the params: {sorted(flat.keys() ^ flat_mask.keys())[:4]}")
  trained = {path: leaf for path, leaf in flat.items() if flat_mask[path]}
  frozen = {path: leaf for path, leaf in flat.items() if not flat_mask[path]}
  return traverse_util.unflatten_dict(trained), traverse_util.unflatten_dict(frozen)


def merge(trained: dict, frozen: dict) -> dict:
  """The params again from the two subtrees of `split`."""
  return traverse_util.unflatten_dict(traverse_util.flatten_dict(trained) | traverse_util.flatten_dict(frozen))


def linear_layers(params: dict) -> dict[str, Any]:
  """True for every leaf of a fully connected layer (a module whose `kernel` is a matrix: a torch `nn.Linear`, bias
  included), False for convolutions of any rank (Conv1d kernels are (1, C_in, C_out) here) and norms: VideoDPO's
  choice of what trains in T2V-Turbo, "all parameters of the UNet's `nn.Linear` modules"."""
  flat = traverse_util.flatten_dict(params)
  linear = {path[:-1] for path, leaf in flat.items() if path[-1] == "kernel" and leaf.ndim == 2}
  return traverse_util.unflatten_dict({path: path[:-1] in linear for path in flat})
