"""The Diffusion-DPO input pipeline: image-pair JSONL → shuffled, per-host batches of [winners; losers] pixels and
both CLIP tokenizers' ids, resumable by batch index.

Records are DiffusionDPO's (Pick-a-Pic's) rows, as `ureward build-pairs --task image_generation` writes them:
`{"id"?, "caption", "jpg_0", "jpg_1", "label_0"}` with image paths relative to an image folder (default the file's)
and `label_0` 1 when jpg_0 is preferred, 0 when jpg_1 is. Ties (`label_0` 0.5) are dropped at load time, as
DiffusionDPO's train.py eliminates Pick-a-Pic's split decisions; the winner is put first (a swap when label_0 is 0).

Each image is preprocessed as DiffusionDPO's `train_transforms`: torchvision's Resize(resolution, BILINEAR) on the
PIL image, CenterCrop(resolution), an optional horizontal flip drawn per image, ToTensor and Normalize([0.5], [0.5]),
here channels-last (H, W, 3) in [−1, 1]. The flips come from a generator seeded by (seed, record, epoch).

Order follows `pipeline.batches`: records shuffled with `seed` and reshuffled every epoch, split across hosts by
stride, built into pairs and batched; everything is indexed, so batch k is a pure function of (records, seed, k)
whatever the number of loading workers, and resuming needs only the batch index. A pair whose images fail for any reason
(missing, corrupt, too large) is logged with its id and reason and kept in its slot with zero pixels and weight 0,
so batches keep their shape.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Sequence

import grain
import jax
import numpy as np
from PIL import Image

from ureward_jax.data.jsonl import read_records
from ureward_jax.errors import UserError, row_error
from ureward_jax.processing.clip_tokenizer import CLIPTokenizer

REQUIRED = ("caption", "jpg_0", "jpg_1", "label_0")
TIE = 0.5


@dataclasses.dataclass(frozen=True)
class PairDataConfig:
  global_batch: int                 # pairs per optimizer step, across hosts
  grad_accum: int = 1
  resolution: int = 512
  random_flip: bool = True          # flip each image horizontally with probability 1/2
  seed: int = 0
  num_epochs: int | None = None     # None: repeat forever
  workers: int = 0                  # loading processes; 0 loads in the training process
  prefetch: int = 2


def load_pairs(path: str, image_folder: str | None = None) -> list[dict]:
  """The pairs of a JSONL file (or a `.json` list), validated, ties dropped, image paths resolved against
  `image_folder` (default the file's folder); other fields are kept."""
  folder = os.path.dirname(os.path.abspath(path)) if image_folder is None else image_folder
  rows = read_records(path)
  pairs, ties = [], 0
  for where, row in rows:
    missing = [key for key in REQUIRED if key not in row]
    if missing:
      raise UserError(f"{where}: an image pair needs {', '.join(REQUIRED)}; missing {', '.join(missing)}")
    if not isinstance(row["caption"], str):
      raise UserError(f"{where}: caption must be a string, got {row['caption']!r}")
    for key in ("jpg_0", "jpg_1"):
      if not isinstance(row[key], str) or not row[key]:
        raise UserError(f"{where}: {key} must be an image path, got {row[key]!r}")
    label = row["label_0"]
    if isinstance(label, bool) or not isinstance(label, (int, float)) or label not in (0, TIE, 1):
      raise UserError(f"{where}: label_0 must be 1 (jpg_0 preferred), 0 (jpg_1 preferred) or 0.5 (a tie), "
                      f"got {label!r}")
    if label == TIE:
      ties += 1
      continue
    pairs.append({**row, "jpg_0": os.path.join(folder, row["jpg_0"]), "jpg_1": os.path.join(folder, row["jpg_1"])})
  if ties:
    logging.info("%s: dropped %d of %d pairs that are ties (label_0 = 0.5)", path, ties, len(rows))
  return pairs


def preprocess(image: Image.Image, resolution: int, flip: bool) -> np.ndarray:
  """A PIL image → (resolution, resolution, 3) float32 in [−1, 1]: torchvision's Resize(resolution, BILINEAR),
  CenterCrop(resolution), an optional horizontal flip, ToTensor and Normalize([0.5], [0.5]), channels last."""
  if image.mode != "RGB":
    image = image.convert("RGB")
  w, h = image.size
  short, long = (w, h) if w <= h else (h, w)
  new_short, new_long = resolution, int(resolution * long / short)
  size = (new_short, new_long) if w <= h else (new_long, new_short)   # (width, height)
  if size != image.size:
    image = image.resize(size, Image.Resampling.BILINEAR)
  w, h = image.size
  top, left = int(round((h - resolution) / 2.0)), int(round((w - resolution) / 2.0))
  pixels = np.asarray(image, np.uint8)[top:top + resolution, left:left + resolution]
  if flip:
    pixels = pixels[:, ::-1]
  return (pixels.astype(np.float32) / 255 - 0.5) / 0.5


class BuildPair(grain.transforms.MapWithIndex):
  """(position in the repeated stream, record index) → one pair: `pixels` (2, R, R, 3) float32 [winner, loser],
  `ids`, `ids_2` (77,) int32, `index` and `bad` () int32. Runs in the loading workers, which load the tokenizers
  once each."""

  def __init__(self, records: Sequence[dict], resolution: int, random_flip: bool, seed: int, tokenizer_folder: str,
               tokenizer_2_folder: str):
    self.records, self.resolution, self.random_flip, self.seed = records, resolution, random_flip, seed
    self.tokenizer_folder, self.tokenizer_2_folder = str(tokenizer_folder), str(tokenizer_2_folder)
    self._tokenizers = None

  def __getstate__(self):
    return {**self.__dict__, "_tokenizers": None}

  def map_with_index(self, position: int, index: int) -> dict[str, np.ndarray]:
    return self.build(int(index), int(position) // len(self.records))

  def build(self, index: int, epoch: int = 0) -> dict[str, np.ndarray]:
    """Record `index`'s pair; its flips are drawn from (seed, index, epoch)."""
    if self._tokenizers is None:
      self._tokenizers = CLIPTokenizer(self.tokenizer_folder), CLIPTokenizer(self.tokenizer_2_folder)
    record = self.records[index]
    order = ("jpg_0", "jpg_1") if record["label_0"] == 1 else ("jpg_1", "jpg_0")   # the winner first
    flips = np.random.default_rng([self.seed % 2**63, index, epoch]).random(2) < 0.5
    if not self.random_flip:
      flips[:] = False
    r = self.resolution
    try:
      pixels = np.stack([preprocess(_open(record[key]), r, bool(flip)) for key, flip in zip(order, flips)])
      bad = 0
    except Exception as e:   # noqa: BLE001 — whatever one pair's images raise skips it; training goes on
      logging.warning("skipping pair %s (%s): %s", record.get("id", "?"), index, row_error(e))
      pixels, bad = np.zeros((2, r, r, 3), np.float32), 1
    caption = [record["caption"]]   # a string (`load_pairs`), tokenized for a skipped pair too
    return {"pixels": pixels, "ids": self._tokenizers[0](caption)[0], "ids_2": self._tokenizers[1](caption)[0],
            "index": np.int32(index), "bad": np.int32(bad)}


def _open(path: str) -> Image.Image:
  with Image.open(path) as image:
    return image.convert("RGB")   # reads the file; a new image, detached from it


def pair_batches(records: Sequence[dict], data: PairDataConfig, tokenizer_folder: str, tokenizer_2_folder: str,
                 start: int = 0, process_index: int | None = None, process_count: int | None = None
                 ) -> grain.IterDataset:
  """This host's batches from batch `start` on, B = global_batch / hosts pairs in A = grad_accum micro-batches of
  M = B / A: `pixels` (A, 2M, R, R, 3) float32 in [−1, 1], each micro-batch [winners of its M pairs; their losers],
  `ids`, `ids_2` (A, M, 77) int32, `weight` (A, M) float32 (0 for a bad pair), and the flat `index`, `bad` (B,)."""
  if not records:
    raise UserError("the training data has no image pairs")
  build = BuildPair(records, data.resolution, data.random_flip, data.seed, tokenizer_folder, tokenizer_2_folder)
  return pair_stream(len(records), build, data, start, process_index, process_count)


def pair_stream(count: int, transform: grain.transforms.MapWithIndex, data: PairDataConfig, start: int = 0,
                process_index: int | None = None, process_count: int | None = None) -> grain.IterDataset:
  """The order every pair stream shares: `count` records shuffled with `data.seed` (reshuffled each epoch), split
  across hosts by stride, each turned into a pair by `transform(position, index)`, batched and cut into micro-batches
  (`micro_batches`), from batch `start` on."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if data.global_batch % (process_count * data.grad_accum) or data.global_batch <= 0:
    raise UserError(f"global batch {data.global_batch} does not split into {process_count} hosts × "
                    f"{data.grad_accum} micro-batches")
  ds = grain.MapDataset.range(count).seed(data.seed).shuffle().repeat(data.num_epochs)
  ds = ds.map_with_index(transform)[process_index::process_count]   # positions before the split: the epoch is global
  ds = ds.batch(data.global_batch // process_count, drop_remainder=True)
  ds = ds.map(lambda batch: micro_batches(batch, data.grad_accum))[start:]
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=0 if data.workers else 1, prefetch_buffer_size=data.prefetch))
  if data.workers:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.workers, per_worker_buffer_size=data.prefetch))
  return it


# Arrays with a [winner, loser] axis after the batch axis; every other per-pair array is (B, ...).
MEMBER_KEYS = ("pixels", "latent_mean", "latent_logvar")


def micro_batches(batch: dict, grad_accum: int) -> dict:
  """Stacked pairs (B, ...) → A = grad_accum micro-batches of M = B / A pairs: a `MEMBER_KEYS` array (B, 2, ...) →
  (A, 2M, ...), [winners; losers] within each micro-batch; any other array (A, M, ...), plus `weight` (A, M) =
  1 − bad; `index` and `bad` stay flat (B,)."""
  b = batch["index"].shape[0]
  m = b // grad_accum
  out = {"index": batch["index"], "bad": batch["bad"],
         "weight": (1 - batch["bad"]).astype(np.float32).reshape(grad_accum, m)}
  for key, value in batch.items():
    if key in MEMBER_KEYS:
      value = value.reshape(grad_accum, m, *value.shape[1:]).swapaxes(1, 2)   # (A, 2, M, ...)
      out[key] = value.reshape(grad_accum, 2 * m, *value.shape[3:])
    elif key not in out:
      out[key] = value.reshape(grad_accum, m, *value.shape[1:])
  return out
