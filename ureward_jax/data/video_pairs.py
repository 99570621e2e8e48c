"""The video Diffusion-DPO input pipeline: video-pair JSONL → shuffled, per-host batches of [chosen; rejected] clips
and the caption's OpenCLIP ids, resumable by batch index (the order of `image_pairs.pair_stream`).

Records are what `ureward build-pairs --task video_generation` writes: `{"id"?, "caption", "chosen", "rejected",
"score"?}`, the videos mp4 files or folders of frame images, relative to a video folder (default the file's).

Each clip is VideoDPO's (`data/video_data.py`): the frame positions 0, s, 2s, … (s = `frame_stride`; every frame when
that gives fewer than `video_length`), `video_length` consecutive ones of them from a random start, each clip of the
pair with its own start; frames at `height` × `width` mapped to [−1, 1]. A video of another size is resized to it
bilinearly, as VideoDPO's reader does (aspect not kept), or with `center_crop` scaled to cover it and centre-cropped;
UnifiedReward's T2V-Turbo videos are generated at the clip size, so neither happens there. The caption is
replaced by "" with probability `caption_dropout` for the pair (VideoDPO's `uncond_prob`); each pair's loss factor
is (0.72 / score)^dupbeta, score 1 when the record has none (VideoDPO's re-weighting; 0.72 for UnifiedReward's
pairs). Random draws come from a generator seeded by (seed, record, epoch). A pair whose videos fail for any reason
(missing, unreadable, a frame too large, shorter than a clip) is logged with its id and reason and kept in its slot
with zero pixels and weight 0.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Sequence

import grain
import numpy as np
from PIL import Image

from ureward_jax.data.image_pairs import PairDataConfig, pair_stream
from ureward_jax.data.jsonl import read_records
from ureward_jax.errors import UserError, row_error
from ureward_jax.processing.clip_tokenizer import OpenCLIPTokenizer
from ureward_jax.processing.video import read_clip

REQUIRED = ("caption", "chosen", "rejected")
DUP_FACTOR = 0.72   # VideoDPO's numerator of the pair weight (0.72 / score)^dupbeta


@dataclasses.dataclass(frozen=True)
class ClipConfig:
  video_length: int = 2
  frame_stride: int = 4
  height: int = 320
  width: int = 512
  caption_dropout: float = 0.2
  dupbeta: float = 1.0
  center_crop: bool = False


def load_video_pairs(path: str, video_folder: str | None = None) -> list[dict]:
  """The pairs of a JSONL file (or a `.json` list), validated, video paths resolved against `video_folder` (default
  the file's folder); other fields are kept."""
  folder = os.path.dirname(os.path.abspath(path)) if video_folder is None else video_folder
  pairs = []
  for where, row in read_records(path):
    missing = [key for key in REQUIRED if key not in row]
    if missing:
      raise UserError(f"{where}: a video pair needs {', '.join(REQUIRED)}; missing {', '.join(missing)}")
    if not isinstance(row["caption"], str):
      raise UserError(f"{where}: caption must be a string, got {row['caption']!r}")
    for key in ("chosen", "rejected"):
      if not isinstance(row[key], str) or not row[key]:
        raise UserError(f"{where}: {key} must be a video file or frame folder path, got {row[key]!r}")
    score = row.get("score", 1.0)
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not score > 0:
      raise UserError(f"{where}: score must be a positive number, got {score!r}")
    pairs.append({**row, "chosen": os.path.join(folder, row["chosen"]),
                  "rejected": os.path.join(folder, row["rejected"])})
  return pairs


def clip_positions(total: int, clip: ClipConfig, rng: np.random.Generator) -> list[int]:
  """VideoDPO's frames of a `total`-frame video: `video_length` consecutive strided positions from a random start."""
  if total < clip.video_length:
    raise UserError(f"{total} frames, fewer than the {clip.video_length} of a clip")
  positions = list(range(0, total, clip.frame_stride))
  if len(positions) < clip.video_length:
    positions = list(range(total))
  start = int(rng.integers(0, len(positions) - clip.video_length + 1))
  return positions[start:start + clip.video_length]


def read_video_clip(path: str, clip: ClipConfig, rng: np.random.Generator) -> np.ndarray:
  """(video_length, height, width, 3) float32 in [−1, 1]: the clip `clip_positions` picks from `path`."""
  frames = read_clip(path, lambda total: clip_positions(total, clip, rng))
  height, width = frames.shape[1:3]
  if (height, width) != (clip.height, clip.width):
    size = (clip.width, clip.height)
    if clip.center_crop:
      scale = max(clip.height / height, clip.width / width)
      size = (max(clip.width, round(width * scale)), max(clip.height, round(height * scale)))
    frames = np.stack([np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BILINEAR)) for f in frames])
    top, left = (frames.shape[1] - clip.height) // 2, (frames.shape[2] - clip.width) // 2
    frames = frames[:, top:top + clip.height, left:left + clip.width]
  return (frames.astype(np.float32) / 255 - 0.5) * 2


class BuildVideoPair(grain.transforms.MapWithIndex):
  """(position in the repeated stream, record index) → one pair: `pixels` (2, T, H, W, 3) float32 [chosen,
  rejected], `ids` (77,) int32, `factor` () float32, `index` and `bad` () int32. Runs in the loading workers, which
  load the tokenizer once each."""

  def __init__(self, records: Sequence[dict], clip: ClipConfig, seed: int, tokenizer_folder: str):
    self.records, self.clip, self.seed, self.tokenizer_folder = records, clip, seed, str(tokenizer_folder)
    self._tokenizer = None

  def __getstate__(self):
    return {**self.__dict__, "_tokenizer": None}

  def map_with_index(self, position: int, index: int) -> dict[str, np.ndarray]:
    return self.build(int(index), int(position) // len(self.records))

  def build(self, index: int, epoch: int = 0) -> dict[str, np.ndarray]:
    """Record `index`'s pair; its clip starts and caption dropout are drawn from (seed, index, epoch)."""
    if self._tokenizer is None:
      self._tokenizer = OpenCLIPTokenizer(self.tokenizer_folder)
    record, clip = self.records[index], self.clip
    rng = np.random.default_rng([self.seed % 2**63, index, epoch])
    try:
      pixels, bad = np.stack([read_video_clip(record[key], clip, rng) for key in ("chosen", "rejected")]), 0
    except Exception as e:   # noqa: BLE001 — whatever one pair's videos raise skips it; training goes on
      logging.warning("skipping pair %s (%s): %s", record.get("id", "?"), index, row_error(e))
      pixels, bad = np.zeros((2, clip.video_length, clip.height, clip.width, 3), np.float32), 1
    caption = "" if rng.random() < clip.caption_dropout else record["caption"]
    factor = (DUP_FACTOR / record.get("score", 1.0)) ** clip.dupbeta
    return {"pixels": pixels, "ids": self._tokenizer([caption])[0], "factor": np.float32(factor),
            "index": np.int32(index), "bad": np.int32(bad)}


def video_pair_batches(records: Sequence[dict], data: PairDataConfig, clip: ClipConfig, tokenizer_folder: str,
                       start: int = 0, process_index: int | None = None, process_count: int | None = None
                       ) -> grain.IterDataset:
  """This host's batches from batch `start` on, B = global_batch / hosts pairs in A = grad_accum micro-batches of
  M = B / A: `pixels` (A, 2M, T, H, W, 3) float32 in [−1, 1], each micro-batch [chosen of its M pairs; their
  rejected], `ids` (A, M, 77) int32, `factor` and `weight` (A, M) float32 (weight 0 for a bad pair), and the flat
  `index`, `bad` (B,)."""
  if not records:
    raise UserError("the training data has no video pairs")
  build = BuildVideoPair(records, clip, data.seed, tokenizer_folder)
  return pair_stream(len(records), build, data, start, process_index, process_count)
