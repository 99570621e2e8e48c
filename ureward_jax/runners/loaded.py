"""What a runner of one network holds: its config, its params and the Flax module built from the config."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass
class Loaded:
  """A loaded model of `module_class`: `config`, `params`, the Flax `module` and its jitted `apply`; subclasses add
  the numpy methods of the PyTorch model it was converted from."""
  config: Any
  params: Any
  module: nn.Module
  module_class: ClassVar[type[nn.Module]]

  @classmethod
  def from_params(cls, config, params, dtype=jnp.float32, **module_kwargs):
    return cls(config, params, cls.module_class(config, dtype=dtype, **module_kwargs))

  @functools.cached_property
  def _jitted(self):
    return jax.jit(self.module.apply)
