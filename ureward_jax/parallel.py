"""Meshes and sharding: the one place where logical axis names meet mesh axes.

Parameters and activations carry logical names (`embed`, `heads`, `mlp`, `vocab`, ...); `RULES` maps them to the
mesh axes `data`, `fsdp`, `tensor`. A dimension that a mesh axis does not divide (4 kv heads on 8-way tensor
parallelism, SigLIP's 4304-wide MLP on 3 devices) stays unsharded on that axis instead of failing.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ureward_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis → mesh axes. Weights shard their width over `fsdp` and their head/MLP/vocabulary axis over `tensor`;
# the batch of every activation over (`data`, `fsdp`).
RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("embed", "fsdp"),
    ("vision_embed", "fsdp"),
    ("embed_out", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("conv_in", None),
    ("conv_out", "fsdp"),
    ("layers", None),
    ("norm", None),
)


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (default: all); one size may be -1 for "the rest"."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise UserError(f"mesh sizes must be positive, with at most one -1; got data={data}, fsdp={fsdp}, "
                    f"tensor={tensor}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise UserError(f"{len(devices)} devices do not split into a mesh with data={data}, fsdp={fsdp}, "
                      f"tensor={tensor}")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise UserError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                    f"{len(devices)} are available")
  return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def logical_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
  """The PartitionSpec for an array with logical axis `names`, leaving out mesh axes that do not divide it."""
  rules = dict(RULES)
  spec, used = [], set()
  for name, size in zip(names, shape):
    if name is not None and name not in rules:
      raise ValueError(f"logical axis {name!r} has no rule in parallel.RULES")
    wanted = rules.get(name) if name is not None else None
    axes = (wanted,) if isinstance(wanted, str) else tuple(wanted or ())
    fitting, divisor = [], 1
    for axis in axes:
      if axis in used:   # a mesh axis shards at most one dimension of an array
        continue
      if size % (divisor * mesh.shape[axis]) == 0:
        fitting.append(axis)
        divisor *= mesh.shape[axis]
    used.update(fitting)
    spec.append(tuple(fitting) if len(fitting) > 1 else (fitting[0] if fitting else None))
  return PartitionSpec(*spec)


def param_shardings(boxed_shapes: Any, mesh: Mesh) -> Any:
  """NamedShardings for a parameter tree of `nn.LogicallyPartitioned` shapes (from `jax.eval_shape` of an init)."""
  def sharding(leaf):
    if isinstance(leaf, nn.LogicallyPartitioned):
      return NamedSharding(mesh, logical_spec(leaf.names, leaf.value.shape, mesh))
    return NamedSharding(mesh, PartitionSpec())
  return jax.tree.map(sharding, boxed_shapes, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def init_sharded(init_fn, rng: jax.Array, mesh: Mesh):
  """Run `init_fn(rng)` (returning boxed params) so that every parameter is created directly on its shards.

  Returns (params as plain arrays, their shardings).
  """
  shardings = param_shardings(jax.eval_shape(init_fn, rng), mesh)
  params = jax.jit(lambda r: nn.unbox(init_fn(r)), out_shardings=shardings)(rng)
  return params, shardings


def optimizer_shardings(optimizer: optax.GradientTransformation, params: Any, shardings: Any, mesh: Mesh) -> Any:
  """Shardings of `optimizer.init(params)`: every part laid out like a parameter (Adam's moments) sharded as that
  parameter, the rest (step counts, masked-out placeholders) whole.

  Left to XLA, the zeros of `init` depend on nothing sharded and come out whole on every device: 64 GB of a 7B's
  moments per chip. A state leaf is matched to the parameter whose key path ends its own, with the same shape.
  """
  by_path = {tuple(path): (leaf.shape, sharding) for (path, leaf), sharding in
             zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(shardings))}
  whole = NamedSharding(mesh, PartitionSpec())

  def pick(path, leaf):
    for start in range(len(path)):
      shape, sharding = by_path.get(tuple(path[start:]), (None, None))
      if shape == leaf.shape:
        return sharding
    return whole
  return jax.tree_util.tree_map_with_path(pick, jax.eval_shape(optimizer.init, params))


def place(params: Any, shardings: Any) -> Any:
  """Put host arrays (e.g. a loaded checkpoint) onto their shards."""
  return jax.tree.map(jax.device_put, params, shardings)


def replicated_fraction(params: Any, shardings: Any = None) -> float:
  """Fraction of parameter bytes held in full by every device (0 = everything sharded).

  `params` are arrays, or shapes (`jax.ShapeDtypeStruct`) with `shardings` given alongside for a compile-only check.
  """
  shardings = jax.tree.map(lambda p: p.sharding, params) if shardings is None else shardings
  total = replicated = 0
  for leaf, sharding in zip(jax.tree.leaves(params), jax.tree.leaves(shardings)):
    nbytes = leaf.size * leaf.dtype.itemsize
    total += nbytes
    if sharding.is_fully_replicated:
      replicated += nbytes
  return replicated / total if total else 0.0


def data_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
  """Sharding of an input whose axis `batch_axis` is the batch: spread over (data, fsdp), every other axis whole."""
  return NamedSharding(mesh, PartitionSpec(*([None] * batch_axis), ("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding of a value every device holds whole (a random key, a scalar)."""
  return NamedSharding(mesh, PartitionSpec())


def batch_shards(mesh: Mesh) -> int:
  """How many ways the batch is split."""
  return mesh.shape["data"] * mesh.shape["fsdp"]


_ACTIVE_MESH: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar("active_mesh", default=None)


@contextlib.contextmanager
def activation_rules(mesh: Mesh):
  """Within this context (while tracing), `constrain` shards activations on `mesh` by `RULES`."""
  token = _ACTIVE_MESH.set(mesh)
  try:
    yield
  finally:
    _ACTIVE_MESH.reset(token)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Shard activation `x` by logical `names` on the active mesh; a no-op outside `activation_rules`."""
  mesh = _ACTIVE_MESH.get()
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_spec(names, x.shape, mesh)))
