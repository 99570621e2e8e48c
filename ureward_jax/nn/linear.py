"""Dense layers whose parameters carry logical axis names (mapped to mesh axes only in `parallel.py`)."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

default_kernel_init = nn.initializers.normal(stddev=0.02)
# A freshly built torch `nn.Linear`'s kernel (kaiming-uniform with a = √5: U(±1/√fan_in)), for layers that the
# original creates outside `from_pretrained` and so starts from torch's default rather than the 0.02 normal.
torch_linear_kernel_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def logical(init, names: Sequence[str | None]):
  """An initialiser whose parameter is annotated with logical axis names."""
  return nn.with_logical_partitioning(init, tuple(names))


def dense(features: int | Sequence[int], axes: Sequence[str], *, name: str | None = None, use_bias: bool = True, dtype=None,
          param_dtype=jnp.float32, contract: int | Sequence[int] = -1,
          kernel_init=default_kernel_init) -> nn.DenseGeneral:
  """A `DenseGeneral` whose kernel has logical `axes` (input axes then output axes); the bias takes the output axes.

  `contract` names the input axes summed over (-1 for a plain Linear; (-2, -1) to fold heads back into the width).
  """
  n_out = 1 if isinstance(features, int) else len(features)
  return nn.DenseGeneral(features=features, axis=contract, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                         kernel_init=logical(kernel_init, axes),
                         bias_init=logical(nn.initializers.zeros, axes[-n_out:]), name=name)


def conv(features: int, kernel_size: int, *, name: str, stride: int = 1, padding: int | None = None, dtype=None,
         param_dtype=jnp.float32, kernel_init=default_kernel_init) -> nn.Conv:
  """A square 2-D convolution on channels-last input, padded like torch's `Conv2d(padding=padding)`.

  padding defaults to `kernel_size // 2` ("same" for odd kernels). Explicit symmetric padding, never Flax's "SAME",
  which pads a stride-2 input on one side only. Kernel (kh, kw, in, out) with logical axes (-, -, conv_in, conv_out).
  """
  pad = kernel_size // 2 if padding is None else padding
  return nn.Conv(features, (kernel_size, kernel_size), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                 dtype=dtype, param_dtype=param_dtype,
                 kernel_init=logical(kernel_init, (None, None, "conv_in", "conv_out")),
                 bias_init=logical(nn.initializers.zeros, ("conv_out",)), name=name)
