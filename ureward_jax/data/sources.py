"""Training records: LLaVA JSON / JSONL files and the mixture file that combines them.

A record is the official training format: `{"id", "conversations": [{"from": "human" | "gpt", "value"}, ...]}` with
`"image"` (one path), `"images"` (paths: the two images of a pair, or the frames of a video) or `"video"` (a video
file or a folder of frames); other fields are carried along and ignored. Paths are relative to the source's
`image_folder`.

A mixture file is LLaVA-NeXT's `train_data.yaml`, whose entries may also name a TensorFlow Datasets dataset:

  datasets:
    - json_path: data/hpd.json
      sampling_strategy: all            # all | first:N | end:N | random:N | random:P%
      image_folder: media/              # optional: default the global image folder, else the file's directory
    - tfds_name: unified_reward_pairs   # a TFDS dataset prepared as ArrayRecord (`file_format="array_record"`)
      split: train                      # optional: train
      data_dir: tfds/                   # optional: TFDS's default data directory

Sampling is seeded (`random:N` draws the same N records every run), unlike the original, which drew anew per launch.

A TFDS source is read by index through `tfds.data_source` (ArrayRecord random access; no TensorFlow graph, and
TensorFlow itself is not needed), one record at a time as the pipeline asks for it. Its features follow the JSON
record: `id` (Text), `conversations` (Text holding the JSON list, or a Sequence of {"from", "value"} Text),
`image` (Image), `images` (Sequence of Image: a pair, or a video's frames) and `video` (Text: a path relative to
`image_folder`, or a Sequence of Image frames); decoded images are used as they are, without files.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import math
import os
from typing import Any, Sequence

import numpy as np
import yaml

from ureward_jax.data.jsonl import read_records
from ureward_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Record:
  """One training record and the folder its media paths are relative to."""
  data: dict
  image_folder: str
  source: str   # the file it came from, for messages


def sample_indices(total: int, strategy: str, seed: int = 0) -> np.ndarray:
  """The indices a sampling strategy keeps of `total` records: all, first:N, end:N, random:N or random:P% (seeded)."""
  if strategy == "all":
    return np.arange(total)
  kind, _, amount = strategy.partition(":")
  if kind not in ("first", "end", "random") or not amount:
    raise UserError(f"unknown sampling strategy {strategy!r}; expected all, first:N, end:N, random:N or random:P%")
  try:
    count = math.ceil(float(amount[:-1]) * total / 100) if amount.endswith("%") else int(amount)
  except ValueError:
    raise UserError(f"sampling strategy {strategy!r}: {amount!r} is not a count or a percentage") from None
  count = min(count, total)
  if kind == "first":
    return np.arange(count)
  if kind == "end":
    return np.arange(total - count, total)
  return np.random.default_rng(seed).permutation(total)[:count]


def sample(records: Sequence[Any], strategy: str, seed: int = 0) -> list[Any]:
  """The records a sampling strategy keeps (`sample_indices`)."""
  return [records[i] for i in sample_indices(len(records), strategy, seed)]


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def _record_data(example: dict) -> dict:
  """A decoded TFDS example as a JSON-form record: Text as str, conversations as a list, images as arrays."""
  data = {}
  for key, value in example.items():
    if key == "conversations":
      if isinstance(value, dict):   # a Sequence({"from", "value"}) feature: parallel arrays
        value = [{"from": _text(f), "value": _text(v)} for f, v in zip(value["from"], value["value"])]
      else:
        value = json.loads(_text(value))
    elif key in ("image", "images", "video") and isinstance(value, (np.ndarray, list)) and len(value) and \
        not isinstance(value[0], (bytes, str)):
      # Decoded pixels: one image, a list of images (sizes may differ), or a video's stacked frames.
      value = list(value) if key == "images" else np.asarray(value)
    elif isinstance(value, bytes):
      value = _text(value)
    elif isinstance(value, np.ndarray) and value.dtype == object:
      value = [_text(v) for v in value]
    elif isinstance(value, np.generic):
      value = value.item()
    data[key] = value
  return data


class TfdsSource(Sequence[Record]):
  """The records of one split of a TFDS dataset prepared as ArrayRecord, decoded when indexed.

  The `tfds.data_source` is opened on first access in each process, so the source pickles into loading workers.
  """

  def __init__(self, name: str, split: str = "train", data_dir: str | None = None, image_folder: str = ""):
    self.name, self.split, self.data_dir, self.image_folder = name, split, data_dir, image_folder
    try:
      self._source = self._open()
    except ImportError:
      raise ImportError("a `tfds_name` mixture entry needs TensorFlow Datasets: pip install 'ureward_jax[tfds]'") from None
    except Exception as e:   # TFDS raises several kinds for a missing or unprepared dataset
      raise UserError(f"TFDS dataset {name!r} (split {split!r}, data_dir {data_dir!r}) cannot be read as an "
                      f"ArrayRecord data source: {e}") from None
    self._length = len(self._source)

  def _open(self):
    import tensorflow_datasets as tfds
    return tfds.data_source(self.name, split=self.split, data_dir=self.data_dir)

  def __getstate__(self):
    return {**self.__dict__, "_source": None}

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int) -> Record:
    if self._source is None:
      self._source = self._open()
    return Record(_record_data(self._source[int(index)]), self.image_folder, f"tfds:{self.name}/{self.split}")


class Mixture(Sequence[Record]):
  """Records of several sources, each through its chosen indices, concatenated in entry order."""

  def __init__(self, parts: Sequence[tuple[Sequence[Record], np.ndarray]]):
    self.parts = [(source, np.asarray(indices, np.int64)) for source, indices in parts]
    self._ends = np.cumsum([len(indices) for _, indices in self.parts]).tolist()

  def __len__(self) -> int:
    return self._ends[-1] if self._ends else 0

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    if index < 0:
      index += len(self)
    if not 0 <= index < len(self):
      raise IndexError(f"record {index} of a mixture of {len(self)}")
    part = bisect.bisect_right(self._ends, index)
    source, indices = self.parts[part]
    return source[int(indices[index - (self._ends[part - 1] if part else 0)])]


def load_mixture(path: str, image_folder: str | None = None, seed: int = 0) -> Sequence[Record]:
  """All records of a mixture (`.yaml`) or of one JSON / JSONL file, in entry order then record order."""
  if not path.endswith((".yaml", ".yml")):
    folder = image_folder or os.path.dirname(os.path.abspath(path))
    return [Record(r, folder, path) for _, r in read_records(path)]
  with open(path) as f:
    spec = yaml.safe_load(f)
  if not isinstance(spec, dict) or not isinstance(spec.get("datasets"), list):
    raise UserError(f"{path}: a mixture file needs a `datasets:` list of entries with `json_path` or `tfds_name`")
  base = os.path.dirname(os.path.abspath(path))
  parts = []
  for index, entry in enumerate(spec["datasets"]):
    if not isinstance(entry, dict) or ("json_path" in entry) == ("tfds_name" in entry):
      raise UserError(f"{path}: dataset entry {index} needs one of `json_path` or `tfds_name`")
    if "json_path" in entry:
      json_path = os.path.join(base, entry["json_path"])
      folder = os.path.join(base, entry.get("image_folder") or image_folder or os.path.dirname(json_path))
      source = [Record(r, folder, json_path) for _, r in read_records(json_path)]
    else:
      data_dir = entry.get("data_dir") and os.path.join(base, entry["data_dir"])
      folder = os.path.join(base, entry.get("image_folder") or image_folder or ".")
      source = TfdsSource(entry["tfds_name"], str(entry.get("split", "train")), data_dir, folder)
    # Each entry draws with its own seed, so adding a source does not change what the others sample.
    parts.append((source, sample_indices(len(source), str(entry.get("sampling_strategy", "all")), seed + index)))
  return Mixture(parts)
