"""Diffusion-DPO pairs encoded once: the frozen VAE's posterior of every image and SDXL's text conditioning of every
caption, written by `launch.encode_pairs` and read by training (`data.encoded`) in place of images, so no encoder
runs during training.

A folder holds, for the N pairs of `load_pairs` (in its order) and their C distinct captions:

  latent_mean.npy, latent_logvar.npy   (N, 2, h, w, c) float32   the posterior of [winner, loser]
  weight.npy                           (N,) float32              0 for a pair whose image could not be read
  caption_index.npy                    (N,) int32                each pair's row in the caption arrays
  prompt_embeds.npy                    (C, 77, D) float32        both encoders' penultimate states, concatenated
  text_embeds.npy                      (C, P) float32            encoder 2's projected EOS state
  encoded.json                         the settings it was made with, and the progress of the pass

Each image keeps the flip drawn for epoch 0 (`BuildPair`) in every epoch, where encoding during training redraws
it each epoch; within the first epoch both give the same inputs. `time_ids` are not stored: they depend only on
the resolution. The arrays are memory-mapped, so a host reads only the pairs it trains on.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Sequence

import grain
import numpy as np

from ureward_jax.data.image_pairs import PairDataConfig, pair_stream
from ureward_jax.errors import UserError
from ureward_jax.pipelines.sdxl import micro_conditions

META = "encoded.json"
PAIR_ARRAYS = ("latent_mean", "latent_logvar", "weight", "caption_index")
CAPTION_ARRAYS = ("prompt_embeds", "text_embeds")


def settings_for(records: Sequence[dict], data: PairDataConfig, checkpoint: str) -> dict:
  """What an encoding depends on: the pairs (captions, labels and image names, in order), the resolution and the
  flips (`random_flip`, `seed`), and the pipeline folder (recorded, not compared: a path can move)."""
  digest = hashlib.sha256()
  for r in records:
    digest.update(json.dumps([r["caption"], r["label_0"], os.path.basename(r["jpg_0"]),
                              os.path.basename(r["jpg_1"])]).encode())
  return {"pairs": len(records), "pairs_sha256": digest.hexdigest(), "resolution": data.resolution,
          "random_flip": data.random_flip, "seed": data.seed, "checkpoint": os.path.abspath(checkpoint)}


def distinct_captions(records: Sequence[dict]) -> tuple[list[str], np.ndarray]:
  """(the distinct captions in order of first use, each record's index into them (N,) int32)."""
  rows: dict[str, int] = {}
  index = np.array([rows.setdefault(r["caption"], len(rows)) for r in records], np.int32)
  return list(rows), index


class EncodedFolder:
  """A folder of encoded pairs being written: memory-mapped arrays and `progress` (`captions_done`, `pairs_done`,
  `complete`), saved after each chunk by `save` so an interrupted pass resumes where it stopped."""

  def __init__(self, folder: str, settings: dict, shapes: dict[str, tuple[int, ...]]):
    """Creates the folder, or reopens one made with the same settings and shapes; any other is an error."""
    self.folder = folder
    settings = json.loads(json.dumps(settings))
    meta_path = os.path.join(folder, META)
    if os.path.exists(meta_path):
      meta = _read_meta(folder)
      _check_settings(folder, meta["settings"], settings, compare_checkpoint=True)
      self.progress = meta["progress"]
      self.arrays = {key: np.lib.format.open_memmap(self._path(key), mode="r+") for key in shapes}
      for key, shape in shapes.items():
        if self.arrays[key].shape != tuple(shape):
          raise UserError(f"{self._path(key)} has shape {self.arrays[key].shape}, expected {tuple(shape)}: the "
                          "folder was encoded with another pipeline; use another folder or delete it")
    else:
      os.makedirs(folder, exist_ok=True)
      self.progress = {"captions_done": 0, "pairs_done": 0, "complete": False}
      self.arrays = {key: np.lib.format.open_memmap(self._path(key), mode="w+", shape=tuple(shape),
                                                    dtype=np.int32 if key == "caption_index" else np.float32)
                     for key, shape in shapes.items()}
    self.settings = settings

  def _path(self, key: str) -> str:
    return os.path.join(self.folder, f"{key}.npy")

  def save(self, **progress) -> None:
    """Flushes the arrays, then records `progress` (written atomically, after the data it describes)."""
    for array in self.arrays.values():
      array.flush()
    self.progress.update(progress)
    tmp = os.path.join(self.folder, META + ".tmp")
    with open(tmp, "w") as f:
      json.dump({"settings": self.settings, "progress": self.progress}, f, indent=2)
    os.replace(tmp, os.path.join(self.folder, META))


def check_encoded(folder: str, settings: dict) -> dict:
  """The folder's metadata, after checking that its encoding is complete and was made from the same pairs with the
  same resolution and flips as `settings` (`settings_for`)."""
  meta = _read_meta(folder)
  if not meta["progress"].get("complete"):
    raise UserError(f"{folder}: the encoding pass did not finish; run `python -m launch.encode_pairs` with the same "
                    "config again to complete it")
  _check_settings(folder, meta["settings"], json.loads(json.dumps(settings)), compare_checkpoint=False)
  return meta


def _read_meta(folder: str) -> dict:
  path = os.path.join(folder, META)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} is missing: {folder} is not a folder of encoded pairs "
                            "(python -m launch.encode_pairs writes one)")
  with open(path) as f:
    return json.load(f)


def _check_settings(folder: str, found: dict, expected: dict, compare_checkpoint: bool) -> None:
  keys = [k for k in expected if k != "checkpoint" or compare_checkpoint]
  differ = [f"{k}: {found.get(k)!r} there, {expected[k]!r} here" for k in keys if found.get(k) != expected[k]]
  if differ:
    raise UserError(f"{folder} was encoded from other pairs or settings ({'; '.join(differ)}); encode again into "
                    "another folder or delete it")


class ReadEncodedPair(grain.transforms.MapWithIndex):
  """(position, record index) → one encoded pair: `latent_mean`, `latent_logvar` (2, h, w, c) [winner, loser],
  `prompt_embeds` (77, D), `text_embeds` (P,), `time_ids` (6,) float32, `index` and `bad` () int32. Opens the
  memory maps lazily, once per loading process."""

  def __init__(self, folder: str, resolution: int):
    self.folder, self.time_ids = folder, np.asarray(micro_conditions(1, resolution, resolution)[0])
    self._arrays = None

  def __getstate__(self):
    return {**self.__dict__, "_arrays": None}

  def map_with_index(self, position: int, index: int) -> dict[str, np.ndarray]:
    if self._arrays is None:
      self._arrays = {key: np.load(os.path.join(self.folder, f"{key}.npy"), mmap_mode="r")
                      for key in PAIR_ARRAYS + CAPTION_ARRAYS}
    a, index = self._arrays, int(index)
    caption = int(a["caption_index"][index])
    return {"latent_mean": np.array(a["latent_mean"][index]), "latent_logvar": np.array(a["latent_logvar"][index]),
            "prompt_embeds": np.array(a["prompt_embeds"][caption]), "text_embeds": np.array(a["text_embeds"][caption]),
            "time_ids": self.time_ids, "index": np.int32(index), "bad": np.int32(a["weight"][index] == 0)}


def encoded_batches(folder: str, data: PairDataConfig, start: int = 0, process_index: int | None = None,
                    process_count: int | None = None) -> grain.IterDataset:
  """This host's batches of encoded pairs from batch `start` on, in the order of `pair_batches` over the same
  records: the step's `PAIR_KEYS` arrays, `latent_mean` and `latent_logvar` (A, 2M, h, w, c) [winners; losers] per
  micro-batch, conditioning (A, M, ...), `weight` (A, M), and the flat `index`, `bad` (B,)."""
  count = _read_meta(folder)["settings"]["pairs"]
  return pair_stream(count, ReadEncodedPair(folder, data.resolution), data, start, process_index, process_count)
