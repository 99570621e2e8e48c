"""Training records: LLaVA JSON / JSONL files and the mixture file that combines them.

A record is the official training format: `{"id", "conversations": [{"from": "human" | "gpt", "value"}, ...]}` with
`"image"` (one path), `"images"` (paths: the two images of a pair, or the frames of a video) or `"video"` (a video
file or a folder of frames); other fields are carried along and ignored. Paths are relative to the source's
`image_folder`.

A mixture file is LLaVA-NeXT's `train_data.yaml`:

  datasets:
    - json_path: data/hpd.json
      sampling_strategy: all            # all | first:N | end:N | random:N | random:P%
      image_folder: media/              # optional: default the global image folder, else the file's directory

Sampling is seeded (`random:N` draws the same N records every run), unlike the original, which drew anew per launch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Sequence

import numpy as np
import yaml


@dataclasses.dataclass(frozen=True)
class Record:
  """One training record and the folder its media paths are relative to."""
  data: dict
  image_folder: str
  source: str   # the file it came from, for messages


def read_records(path: str) -> list[dict]:
  """The records of a `.json` list or a `.jsonl` file (one object per line; blank lines allowed)."""
  with open(path) as f:
    if path.endswith(".jsonl"):
      records = []
      for number, line in enumerate(f, 1):
        if line.strip():
          try:
            records.append(json.loads(line))
          except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number}: not a JSON object ({e.msg})") from None
    else:
      try:
        records = json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
  if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
    raise ValueError(f"{path}: expected a list of records (JSON objects)")
  return records


def sample(records: Sequence[Any], strategy: str, seed: int = 0) -> list[Any]:
  """Apply a sampling strategy: all, first:N, end:N, random:N or random:P% (seeded)."""
  if strategy == "all":
    return list(records)
  kind, _, amount = strategy.partition(":")
  if kind not in ("first", "end", "random") or not amount:
    raise ValueError(f"unknown sampling strategy {strategy!r}; expected all, first:N, end:N, random:N or random:P%")
  try:
    count = math.ceil(float(amount[:-1]) * len(records) / 100) if amount.endswith("%") else int(amount)
  except ValueError:
    raise ValueError(f"sampling strategy {strategy!r}: {amount!r} is not a count or a percentage") from None
  if kind == "first":
    return list(records[:count])
  if kind == "end":
    return list(records[-count:]) if count else []
  order = np.random.default_rng(seed).permutation(len(records))[:count]
  return [records[i] for i in order]


def load_mixture(path: str, image_folder: str | None = None, seed: int = 0) -> list[Record]:
  """All records of a mixture (`.yaml`) or of one JSON / JSONL file, in file order then record order."""
  if not path.endswith((".yaml", ".yml")):
    folder = image_folder or os.path.dirname(os.path.abspath(path))
    return [Record(r, folder, path) for r in read_records(path)]
  with open(path) as f:
    spec = yaml.safe_load(f)
  if not isinstance(spec, dict) or not isinstance(spec.get("datasets"), list):
    raise ValueError(f"{path}: a mixture file needs a `datasets:` list of entries with `json_path`")
  base = os.path.dirname(os.path.abspath(path))
  records = []
  for index, entry in enumerate(spec["datasets"]):
    if not isinstance(entry, dict) or "json_path" not in entry:
      raise ValueError(f"{path}: dataset entry {index} has no `json_path`")
    json_path = os.path.join(base, entry["json_path"])
    folder = os.path.join(base, entry.get("image_folder") or image_folder or os.path.dirname(json_path))
    # Each entry draws with its own seed, so adding a source does not change what the others sample.
    chosen = sample(read_records(json_path), str(entry.get("sampling_strategy", "all")), seed + index)
    records += [Record(r, folder, json_path) for r in chosen]
  return records
