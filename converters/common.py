"""Checkpoint conversion machinery shared by every converter: safetensors I/O and declarative name tables.

A converter is a list of `Rule`s, each mapping one of our parameters (a '/'-joined path) to one source tensor name
and saying how the layout changes. Stacked (scanned) parameters name their source with `{i}` for the layer index.
`convert` applies the table and fails on every missing, unexpected, mis-shaped or non-floating tensor, naming it;
`export` is the exact inverse, so a round trip is bit-exact. The readers check a file against itself before any
tensor is read, so a damaged or truncated checkpoint fails naming the file, never later inside numpy.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import struct
from pathlib import Path
from typing import Iterable, Mapping

import ml_dtypes
import numpy as np
from tqdm import tqdm

from ureward_jax.errors import UserError

_DTYPES = {"BF16": ml_dtypes.bfloat16, "F16": np.float16, "F32": np.float32, "F64": np.float64,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}
# The dtypes a parameter may have: integer and boolean tensors are buffers (ids, masks, counters), never weights.
FLOATING = tuple(np.dtype(_DTYPES[name]) for name in ("F16", "BF16", "F32", "F64"))
FLOATING_NAMES = ", ".join(str(dtype) for dtype in FLOATING)


class ConversionError(UserError):
  """A checkpoint does not match what the model expects; the message names every offending tensor."""


# --- safetensors -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StoredTensor:
  """A tensor inside a safetensors file, read lazily by memory map (bf16 included, no fp32 round trip)."""
  path: Path
  offset: int
  dtype: np.dtype
  shape: tuple[int, ...]

  def load(self) -> np.ndarray:
    count = math.prod(self.shape)
    return np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset, shape=(count,)).reshape(self.shape)


@dataclasses.dataclass(frozen=True)
class InMemoryTensor:
  """An array already in memory (a loaded `.ckpt`, a module's `state_dict()`), with `StoredTensor`'s interface."""
  array: np.ndarray

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.array.shape)

  @property
  def dtype(self) -> np.dtype:
    return self.array.dtype

  def load(self) -> np.ndarray:
    return self.array


def as_stored(tensors: Mapping[str, object]) -> dict[str, object]:
  """`tensors` with every plain array wrapped as an `InMemoryTensor`, so all share the `load()` interface."""
  return {k: v if hasattr(v, "load") else InMemoryTensor(np.asarray(v)) for k, v in tensors.items()}


def is_floating(dtype) -> bool:
  """Whether a tensor of `dtype` can be a parameter (one of `FLOATING`)."""
  return np.dtype(dtype) in FLOATING


def listing(items: list[str], limit: int = 10) -> str:
  """The first `limit` of `items` and how many more, for a message that must stay readable."""
  return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def source_folder(path: str | os.PathLike) -> Path:
  """`path` as a checkpoint folder to read; a missing path or a file is a ConversionError saying which."""
  path = Path(path)
  if path.is_file():
    raise ConversionError(f"{path} is a file; a checkpoint folder was expected (the folder holding config.json and "
                          "the weights)")
  if not path.is_dir():
    raise ConversionError(f"checkpoint folder {path} does not exist")
  return path


def read_json(path: Path) -> dict:
  """The JSON object in `path` (a source's config.json, model_index.json, ...); a missing file, invalid JSON or
  another JSON value is a ConversionError naming the file."""
  if not path.is_file():
    raise ConversionError(f"{path.parent} has no {path.name}")
  try:
    value = json.loads(path.read_bytes())
  except ValueError as e:   # JSONDecodeError, and UnicodeDecodeError for bytes that are not text
    raise ConversionError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(value, dict):
    raise ConversionError(f"{path}: holds a JSON {type(value).__name__}, not an object")
  return value


def _sizes(value) -> bool:
  """Whether a header value is a list of non-negative integers (JSON's true and false are not sizes)."""
  return isinstance(value, list) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value)


def _entry_problem(info, data_bytes: int) -> str | None:
  """What is wrong with one safetensors header entry, given the size of the file's data section; None if nothing."""
  if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
    return "the header entry lacks dtype, shape or data_offsets"
  dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
  if not isinstance(dtype, str) or dtype not in _DTYPES:
    return f"unsupported dtype {dtype!r} (supported: {', '.join(_DTYPES)})"
  if not _sizes(shape):
    return f"shape {shape!r} is not a list of sizes"
  if not _sizes(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
    return f"data_offsets {offsets!r} is not a [start, end] pair"
  if offsets[1] > data_bytes:
    return f"data_offsets {offsets} run past the end of the data ({data_bytes} bytes): the file is truncated"
  nbytes = math.prod(shape) * np.dtype(_DTYPES[dtype]).itemsize
  if offsets[1] - offsets[0] != nbytes:
    return f"data_offsets {offsets} span {offsets[1] - offsets[0]} bytes, but shape {shape} of {dtype} takes {nbytes}"
  return None


def read_safetensors_header(path: str | os.PathLike) -> dict[str, StoredTensor]:
  """The tensors of one safetensors file, read lazily. The header is checked against the file first (its length,
  JSON, every entry's dtype, shape and data offsets), so a damaged or truncated file is a ConversionError naming it
  and the tensor rather than a failure when a tensor is read."""
  path = Path(path)
  with open(path, "rb") as f:
    size = os.fstat(f.fileno()).st_size
    if size < 8:
      raise ConversionError(f"{path}: not a safetensors file ({size} bytes, fewer than its 8-byte header length)")
    (length,) = struct.unpack("<Q", f.read(8))
    if length > size - 8:
      raise ConversionError(f"{path}: the header is {length} bytes long, but only {size - 8} follow its length: the "
                            "file is truncated or not a safetensors file")
    try:
      header = json.loads(f.read(length))
    except ValueError as e:
      raise ConversionError(f"{path}: the header is not JSON ({e}): the file is damaged or not a safetensors "
                            "file") from None
  if not isinstance(header, dict):
    raise ConversionError(f"{path}: the header is a JSON {type(header).__name__}, not an object")
  tensors, problems = {}, []
  for name, info in header.items():
    if name == "__metadata__":
      continue
    problem = _entry_problem(info, size - 8 - length)
    if problem:
      problems.append(f"tensor {name!r}: {problem}")
      continue
    tensors[name] = StoredTensor(path, 8 + length + info["data_offsets"][0], np.dtype(_DTYPES[info["dtype"]]),
                                 tuple(info["shape"]))
  if problems:
    raise ConversionError(f"{path}: damaged safetensors file: {listing(problems)}")
  return tensors


def read_safetensors_files(paths: Iterable[Path]) -> dict[str, StoredTensor]:
  """The tensors of several safetensors files; a name stored in two of them is an error (which copy would win is
  an accident of file order)."""
  tensors, twice = {}, []
  for path in paths:
    for name, tensor in read_safetensors_header(path).items():
      if name in tensors:
        twice.append(f"{name!r} ({tensors[name].path.name}, {path.name})")
      tensors[name] = tensor
  if twice:
    raise ConversionError(f"tensors stored in more than one file: {listing(twice)}")
  return tensors


def open_safetensors(folder: str | os.PathLike) -> dict[str, StoredTensor]:
  """Every tensor of a checkpoint folder: `model.safetensors`, or the shards of its index, or all `*.safetensors`.
  An index must say where each tensor is, and its shards must hold what it lists."""
  folder = source_folder(folder)
  index = folder / "model.safetensors.index.json"
  weight_map = None
  if index.exists():
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
      raise ConversionError(f"{index}: no 'weight_map' object of tensor name → shard file name")
    files = sorted({folder / f for f in weight_map.values()})
  else:
    files = sorted(folder.glob("*.safetensors"))
  if not files:
    raise ConversionError(f"no *.safetensors files in {folder}")
  missing = [path.name for path in files if not path.is_file()]
  if missing:
    raise ConversionError(f"shards {missing} listed in {index.name} are missing from {folder}")
  tensors = read_safetensors_files(files)
  if weight_map is not None:
    elsewhere = [name for name, f in weight_map.items() if name not in tensors or tensors[name].path != folder / f]
    if elsewhere:
      raise ConversionError(f"{index}: tensors its shards do not hold where it says: {listing(elsewhere)}")
  return tensors


def save_safetensors(tensors: Mapping[str, np.ndarray], folder: str | os.PathLike,
                     max_shard_bytes: int = 5 * 2**30) -> None:
  """Write `tensors` as `model.safetensors`, or as shards plus `model.safetensors.index.json` when large."""
  folder = Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  shards, current, current_bytes = [], {}, 0
  for name in sorted(tensors):
    nbytes = tensors[name].nbytes
    if current and current_bytes + nbytes > max_shard_bytes:
      shards.append(current)
      current, current_bytes = {}, 0
    current[name] = tensors[name]
    current_bytes += nbytes
  shards.append(current)
  names = ["model.safetensors"] if len(shards) == 1 else \
      [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
  for file_name, shard in zip(names, shards):
    _write_file(folder / file_name, shard)
  if len(shards) > 1:
    weight_map = {name: file_name for file_name, shard in zip(names, shards) for name in shard}
    total = sum(t.nbytes for t in tensors.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def _write_file(path: Path, tensors: Mapping[str, np.ndarray]) -> None:
  header, offset = {"__metadata__": {"format": "pt"}}, 0
  for name, array in tensors.items():
    header[name] = {"dtype": _NAMES[np.dtype(array.dtype)], "shape": list(array.shape),
                    "data_offsets": [offset, offset + array.nbytes]}
    offset += array.nbytes
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for array in tensors.values():
      f.write(np.ascontiguousarray(array).tobytes())


# --- declarative tables ------------------------------------------------------------------------------------------

# How a source tensor's layout becomes ours. "dense": PyTorch Linear (out, in) → kernel (in, *out) (out split into
# heads when the target says so); "dense_out": Linear (out, in) → kernel (*in, out), in split into (heads, head_dim);
# "conv": a Conv1d/2d/3d kernel (O, I, *k) → (*k, I, O); "heads": a flat bias (N·H,) → (N, H); "copy": unchanged.
KINDS = ("dense", "dense_out", "conv", "heads", "copy")


@dataclasses.dataclass(frozen=True)
class Rule:
  target: str             # our parameter path, '/'-joined
  source: str             # source tensor name; '{i}' = layer index for stacked parameters
  kind: str = "copy"

  @property
  def stacked(self) -> bool:
    return "{i}" in self.source


def _to_ours(array: np.ndarray, kind: str, shape: tuple[int, ...]) -> np.ndarray:
  if kind in ("dense", "dense_out"):
    array = array.T
  elif kind == "conv":
    array = array.transpose(*range(2, array.ndim), 1, 0)
  return array.reshape(shape)


def _to_source(array: np.ndarray, kind: str, shape: tuple[int, ...]) -> np.ndarray:
  if kind in ("dense", "dense_out"):
    return array.reshape(shape[1], shape[0]).T
  if kind == "conv":
    n = len(shape)
    return array.reshape(*shape[2:], shape[1], shape[0]).transpose(n - 1, n - 2, *range(n - 2))
  return array.reshape(shape)


def source_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  """The PyTorch shape of one (per-layer) tensor whose target shape is `shape`."""
  if kind == "dense":
    return (math.prod(shape[1:]), shape[0])
  if kind == "dense_out":
    return (shape[-1], math.prod(shape[:-1]))
  if kind == "conv":
    return (shape[-1], shape[-2], *shape[:-2])
  if kind == "heads":
    return (math.prod(shape),)
  return tuple(shape)


def count_layers(names: Iterable[str], pattern: str) -> int:
  """Number of layers present for a source pattern with '{i}' (max index + 1; 0 when absent); gaps are errors."""
  regex = re.compile(re.escape(pattern).replace(re.escape("{i}"), r"(\d+)") + "$")
  found = sorted({int(m.group(1)) for n in names if (m := regex.match(n))})
  if found and found != list(range(len(found))):
    raise ConversionError(f"layers of {pattern!r} are not contiguous: found indices {found}")
  return len(found)


def convert(tensors: Mapping[str, StoredTensor], rules: list[Rule], expected: Mapping[str, tuple[int, ...]],
            num_layers: Mapping[str, int], dtype=None, ignore: Iterable[str] = ()) -> dict[str, np.ndarray]:
  """Apply `rules` to the source `tensors`; returns flat {our path: array}.

  expected: our path → shape (from `jax.eval_shape` of the model's init). num_layers: our path prefix of each stack
  → layer count. dtype: cast to this floating dtype (None keeps each tensor's stored dtype; the layers of a stack
  must then share one). ignore: source names (regexes) that are known not to be parameters (e.g. rotary `inv_freq`
  buffers). Every source tensor a rule reads must be floating (`FLOATING`): an integer or boolean one is a damaged
  or mislabelled checkpoint, never cast. Every problem is collected and raised together.
  """
  cast = None if dtype is None else np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
  if cast is not None and not is_floating(cast):
    raise ConversionError(f"cannot convert to dtype {cast}: parameters take a floating dtype ({FLOATING_NAMES})")
  problems, out, used = [], {}, set()
  ignore = [re.compile(p) for p in ignore]
  targets = {r.target for r in rules}
  problems += [f"model parameter {p!r} has no rule" for p in expected if p not in targets]
  for rule in tqdm(rules, desc="converting", unit="param", leave=False):
    if rule.target not in expected:
      problems.append(f"rule target {rule.target!r} is not a parameter of the model")
      continue
    shape = tuple(expected[rule.target])
    layers = next((n for prefix, n in num_layers.items() if rule.target.startswith(prefix + "/")), None) \
        if rule.stacked else None
    names = [rule.source.format(i=i) for i in range(layers)] if rule.stacked else [rule.source]
    per_layer = shape[1:] if rule.stacked else shape
    want = source_shape(rule.kind, per_layer)
    missing = [n for n in names if n not in tensors]
    if missing:
      problems.append(f"missing tensor {missing[0]!r}" + (f" (and {len(missing) - 1} more layers)"
                                                         if len(missing) > 1 else ""))
      continue
    bad = [(n, tensors[n].shape) for n in names if tuple(tensors[n].shape) != want]
    if bad:
      problems.append(f"tensor {bad[0][0]!r} has shape {bad[0][1]}, expected {want} for {rule.target!r}")
      continue
    wrong = [n for n in names if not is_floating(tensors[n].dtype)]
    if wrong:
      more = f" (and {len(wrong) - 1} more layers)" if len(wrong) > 1 else ""
      problems.append(f"tensor {wrong[0]!r} has dtype {np.dtype(tensors[wrong[0]].dtype)}{more}; {rule.target!r} "
                      f"takes a floating dtype ({FLOATING_NAMES})")
      continue
    stored = np.dtype(tensors[names[0]].dtype)
    other = next((n for n in names if np.dtype(tensors[n].dtype) != stored), None)
    if cast is None and other is not None:
      problems.append(f"the layers of {rule.target!r} are stored in different dtypes: {names[0]!r} is {stored}, "
                      f"{other!r} is {np.dtype(tensors[other].dtype)}; give a dtype (--dtype) to cast them to one")
      continue
    array = np.empty(shape, stored if cast is None else cast)
    for i, name in enumerate(names):
      value = _to_ours(tensors[name].load(), rule.kind, per_layer)
      if rule.stacked:
        array[i] = value
      else:
        array[...] = value
    out[rule.target] = array
    used.update(names)
  unexpected = sorted(n for n in tensors if n not in used and not any(p.search(n) for p in ignore))
  if unexpected:
    problems.append(f"unexpected tensors in the checkpoint: {unexpected[:10]}"
                    + (f" and {len(unexpected) - 10} more" if len(unexpected) > 10 else ""))
  if problems:
    raise ConversionError("checkpoint does not match the model: " + "; ".join(problems))
  return out


def export(params: Mapping[str, np.ndarray], rules: list[Rule]) -> dict[str, np.ndarray]:
  """The inverse of `convert`: flat {our path: array} → {source name: array in the source layout}. Every parameter
  must have a rule (none is dropped) and be floating, as `convert` made it; all problems are raised together."""
  targets = {rule.target for rule in rules}
  problems = [f"parameter {path!r} has no place in the exported format" for path in params if path not in targets]
  out = {}
  for rule in rules:
    if rule.target not in params:
      problems.append(f"parameter {rule.target!r} is missing from the checkpoint being exported")
      continue
    array = np.asarray(params[rule.target])
    if not is_floating(array.dtype):
      problems.append(f"parameter {rule.target!r} has dtype {array.dtype}; only floating parameters "
                      f"({FLOATING_NAMES}) are exported")
      continue
    per_layer = array.shape[1:] if rule.stacked else array.shape
    shape = source_shape(rule.kind, per_layer)
    if rule.stacked:
      for i in range(array.shape[0]):
        out[rule.source.format(i=i)] = np.ascontiguousarray(_to_source(array[i], rule.kind, shape))
    else:
      out[rule.source] = np.ascontiguousarray(_to_source(array, rule.kind, shape))
  if problems:
    raise ConversionError("the checkpoint cannot be exported: " + "; ".join(problems))
  return out


def flatten(tree: Mapping, prefix: str = "") -> dict[str, object]:
  """{"a": {"b": x}} → {"a/b": x}."""
  out = {}
  for key, value in tree.items():
    path = f"{prefix}/{key}" if prefix else key
    if isinstance(value, Mapping):
      out.update(flatten(value, path))
    else:
      out[path] = value
  return out


def flat_shapes(tree: Mapping) -> dict[str, tuple[int, ...]]:
  """{path: shape} of a parameter tree (arrays or `jax.ShapeDtypeStruct`s), flattened as `flatten` does."""
  return {path: tuple(leaf.shape) for path, leaf in flatten(tree).items()}


def unflatten(flat: Mapping[str, object]) -> dict:
  out: dict = {}
  for path, value in flat.items():
    node = out
    *parents, leaf = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return out
