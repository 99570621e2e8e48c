"""The activations of the ported models, by their transformers names (`hidden_act`, `projector_hidden_act`).

JAX's `gelu` defaults to the tanh approximation; transformers' "gelu" is the exact erf form.
"""

from __future__ import annotations

from typing import Callable

import jax

from ureward_jax.errors import UserError

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
}


def check_activation(name: str, what: str) -> str:
  """`name` if it is one of ACTIVATIONS, else a ValueError naming `what` (e.g. "SigLIP hidden_act")."""
  if name not in ACTIVATIONS:
    raise UserError(f"{what} {name!r} is not supported; expected one of {list(ACTIVATIONS)}")
  return name
