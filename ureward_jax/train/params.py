"""Parameters of a training run as the tasks make them: loaded from a converted folder or initialised, placed on the
mesh by their logical axes, cast for a frozen reference, or stood in for by sharded shapes when compiling ahead of
time."""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ureward_jax import parallel, pretrained


def abstract(boxed_shapes: Any, shardings: Any) -> Any:
  """Params as sharded `jax.ShapeDtypeStruct`s, from a model's boxed parameter shapes."""
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), nn.unbox(boxed_shapes),
                      shardings)


def is_abstract(params: Any) -> bool:
  return all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(params))


def cast(params: Any, dtype: str, shardings: Any) -> Any:
  """A copy of `params` in `dtype` on `shardings` (a frozen reference: the step donates the params, never it)."""
  dtype = jnp.dtype(dtype)
  if is_abstract(params):
    return jax.tree.map(lambda p, sh: jax.ShapeDtypeStruct(p.shape, dtype, sharding=sh), params, shardings)
  return jax.jit(lambda p: jax.tree.map(lambda x: x.astype(dtype), p), out_shardings=shardings)(params)


def load(folder: str, shardings: Any, dtype=np.float32) -> Any:
  """The params of a converted checkpoint folder, placed on `shardings`."""
  return parallel.place(pretrained.load_params(folder, dtype), shardings)


def component_config(folder: str, name: str, config_cls):
  """The config of one component (`unet`, `vae`, ...) of a converted pipeline folder."""
  return config_cls.from_dict(pretrained.read_config(os.path.join(folder, name)))
