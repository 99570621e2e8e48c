"""PyTorch `.ckpt` / `.pt` files (`torch.save`'s zip format) read without torch, tensors left on disk until used.

A torch zip holds `<archive>/data.pkl`, a pickle whose tensors point at storages stored uncompressed as
`<archive>/data/<key>`. This unpickler resolves only what tensors need (storage types, `_rebuild_tensor_v2`,
`_rebuild_parameter`, `OrderedDict`); any other class a file names (a Lightning checkpoint's hyper-parameters,
callbacks, optimiser) becomes an inert placeholder, so reading never runs code from the file. A contiguous tensor
becomes a `common.StoredTensor` (memory-mapped on `load()`); a strided view is copied out when read here. Every
tensor must lie within its storage, and a file that is not a zip, a damaged archive or a pickle that does not load
is a ConversionError naming the file.
"""

from __future__ import annotations

import collections
import dataclasses
import pickle
import struct
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np

from converters import common
from converters.common import ConversionError

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "HalfStorage": np.float16, "BFloat16Storage": ml_dtypes.bfloat16,
    "DoubleStorage": np.float64, "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_, "UntypedStorage": np.uint8,
}
_LOCAL_HEADER = struct.Struct("<4s22xHH")   # signature, …, file-name length, extra-field length


@dataclasses.dataclass(frozen=True)
class _Storage:
  member: zipfile.ZipInfo
  dtype: np.dtype


class _Placeholder:
  """Stands in for any object the reader does not need; takes whatever arguments and state the pickle gives it."""

  def __new__(cls, *args, **kwargs):
    return super().__new__(cls)

  def __init__(self, *args, **kwargs):
    pass

  def __setstate__(self, state):
    pass

  def __call__(self, *args, **kwargs):
    return _Placeholder()


def _stand_in(module: str, name: str) -> type:
  return type(name, (_Placeholder,), {"__module__": module})


class _Unpickler(pickle.Unpickler):

  def __init__(self, file, reader: "_ZipReader"):
    super().__init__(file)
    self.reader = reader

  def find_class(self, module, name):
    if module == "torch" and name in _STORAGE_DTYPES:
      return np.dtype(_STORAGE_DTYPES[name])
    if module == "torch.storage" and name == "UntypedStorage":
      return np.dtype(np.uint8)
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
      return self.reader.tensor
    if (module, name) in (("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state")):
      return lambda data, *_: data
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if (module, name) == ("_codecs", "encode"):   # how protocol 2 stores bytes
      return lambda text, encoding="utf-8": text.encode(encoding)
    if (module, name) == ("torch", "Size"):
      return tuple
    return _stand_in(module, name)

  def persistent_load(self, pid):
    if not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage":
      raise ConversionError(f"{self.reader.path}: unsupported persistent object {pid!r} (a torch storage is "
                            "('storage', type, key, location, size))")
    _, dtype, key, _location, _numel = pid
    return _Storage(self.reader.member(f"data/{key}"), np.dtype(dtype))


class _ZipReader:

  def __init__(self, path: Path, archive: zipfile.ZipFile):
    self.path, self.archive = path, archive
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
      raise ConversionError(f"{path}: not a torch checkpoint (no single <archive>/data.pkl inside)")
    self.root = pickles[0][: -len("data.pkl")]

  def member(self, name: str) -> zipfile.ZipInfo:
    try:
      return self.archive.getinfo(self.root + name)
    except KeyError:
      raise ConversionError(f"{self.path}: storage {name!r} is missing from the archive") from None

  def tensor(self, storage: _Storage, offset: int, shape, stride, *_):
    shape, stride = tuple(shape), tuple(stride)
    info = storage.member
    # The last element a view reaches must lie inside its storage: past it are other members' bytes, or the end.
    size = info.file_size // storage.dtype.itemsize
    if offset < 0 or len(shape) != len(stride) or min(shape + stride, default=0) < 0 or \
        (0 not in shape and offset + sum((n - 1) * s for n, s in zip(shape, stride)) >= size):
      raise ConversionError(f"{self.path}: a tensor of shape {shape} (stride {stride}, offset {offset}) does not fit "
                            f"its storage {info.filename!r} of {size} elements")
    contiguous = stride == tuple(int(np.prod(shape[i + 1:])) for i in range(len(shape)))
    if info.compress_type == zipfile.ZIP_STORED and (contiguous or not shape):
      return common.StoredTensor(self.path, self._data_start(info) + offset * storage.dtype.itemsize, storage.dtype,
                                 shape)
    data = np.frombuffer(self.archive.read(info), storage.dtype)
    view = np.lib.stride_tricks.as_strided(data[offset:], shape, [s * storage.dtype.itemsize for s in stride])
    return common.InMemoryTensor(np.ascontiguousarray(view))

  def _data_start(self, info: zipfile.ZipInfo) -> int:
    with open(self.path, "rb") as f:
      f.seek(info.header_offset)
      signature, name_length, extra_length = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
      end = f.seek(0, 2)
    start = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
    if signature != b"PK\x03\x04" or start + info.file_size > end:
      raise ConversionError(f"{self.path}: corrupt zip entry {info.filename!r}")
    return start


def load(path: str | Path):
  """The object `torch.save` wrote to `path`, with every tensor a lazy `StoredTensor` (or `InMemoryTensor`)."""
  path = Path(path)
  if path.is_dir():
    raise ConversionError(f"{path} is a folder; a checkpoint file (.ckpt, .pt) was expected")
  if not path.is_file():
    raise ConversionError(f"checkpoint file {path} does not exist")
  if not zipfile.is_zipfile(path):
    raise ConversionError(f"{path}: not a torch zip checkpoint, or a truncated one (files written by torch < 1.6 "
                          "must be re-saved with a newer torch first)")
  with open(path, "rb") as file:
    try:
      with zipfile.ZipFile(file) as archive:
        reader = _ZipReader(path, archive)
        with archive.open(reader.root + "data.pkl") as f:
          return _Unpickler(f, reader).load()
    except ConversionError:
      raise
    except Exception as e:   # noqa: BLE001 — the unpickler calls only this module's code: any failure is the file's
      raise ConversionError(f"{path}: a damaged torch checkpoint ({type(e).__name__}: {e})") from None


def state_dict(path: str | Path) -> dict:
  """The model tensors of a checkpoint: a Lightning file's `state_dict`, a DeepSpeed file's `module` (its
  `_forward_module.` prefix removed), or a plain state dict; entries that are not tensors are dropped."""
  obj = load(path)
  if not isinstance(obj, dict):
    raise ConversionError(f"{path}: holds a {type(obj).__name__}, not a state dict")
  if isinstance(obj.get("state_dict"), dict):
    obj = obj["state_dict"]
  elif isinstance(obj.get("module"), dict):
    obj = {k.removeprefix("_forward_module."): v for k, v in obj["module"].items()}
  tensors = {k: v for k, v in obj.items() if hasattr(v, "load")}
  if not tensors:
    raise ConversionError(f"{path}: no tensors found (keys: {sorted(obj)[:10]})")
  return tensors


def save(tensors: dict[str, np.ndarray], path: str | Path) -> None:
  """Write `{"state_dict": tensors}` as a torch checkpoint, which the original code's loaders read. Needs torch."""
  try:
    import torch
  except ImportError:
    raise ConversionError("writing a torch checkpoint needs torch: pip install torch") from None
  as_torch = {}
  for name, value in tensors.items():
    value = np.ascontiguousarray(value)
    if value.dtype == ml_dtypes.bfloat16:   # numpy has no bf16 that torch knows: pass the bits
      as_torch[name] = torch.from_numpy(value.view(np.int16)).view(torch.bfloat16)
    else:
      as_torch[name] = torch.from_numpy(value)
  torch.save({"state_dict": as_torch}, Path(path))
