"""Where every visual token of LLaVA-OneVision comes from, computed on the host in numpy.

The tower turns P patches (tiles, images, frames) into P × L projected features, L = tokens_per_side². Every
visual token the language model sees is a weighted sum of at most four of those features or the learned
`image_newline`: a plain token takes one feature, a token of a bilinearly resized map (the anyres_max cap, the 2×2
video pooling) takes four. So one gather + weighted sum expresses tiling, unpadding, the cap, pooling and all
newline layouts, and the jitted model never sees data-dependent shapes beyond the token count.

A layout is `(src, weight)`: src (V, 4) int32 indices into the feature table [P·L features ; newline] (index P·L is
the newline), weight (V, 4) float32.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from ureward_jax.errors import UserError
from ureward_jax.processing import anyres

KINDS = ("tiled", "single", "plain", "video")
VIDEO_NEWLINES = ("one_token", "grid", "frame", "no_token")
VIDEO_POOLS = ("bilinear", "average")


@dataclasses.dataclass(frozen=True)
class VisualItem:
  """One image or video as the model lays it out.

  kind: "tiled" (anyres: base view + tiles, unpadded, capped, a newline per row), "single" (one patch + one newline:
  HF multi-image), "plain" (one patch, no newline: UnifiedReward's per-frame images), "video" (frames pooled, newlines
  by `video_newline`). num_patches: patches (frames) it takes from the stack. size: original (H, W) for "tiled".
  """
  kind: str
  num_patches: int = 1
  size: tuple[int, int] | None = None


@dataclasses.dataclass(frozen=True)
class LayoutConfig:
  tokens_per_side: int
  tile: int
  grid_pinpoints: tuple[tuple[int, int], ...]
  aspect_ratio: str = "anyres_max_9"
  video_newline: str = "one_token"
  video_pool: str = "bilinear"
  exact_round: bool = True


def _one(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Taps for tokens copied unchanged from `indices` (any shape, flattened row-major)."""
  src = np.repeat(indices.reshape(-1, 1), 4, axis=1)
  weight = np.zeros(src.shape, np.float32)
  weight[:, 0] = 1.0
  return src, weight


def _linear_taps(in_size: int, out_size: int):
  """PyTorch's bilinear (align_corners=False, no antialias) taps along one axis: (i0, i1, w0, w1) per output.

  Bit-faithful to PyTorch's CPU kernel: a float32 scale, and the source coordinate scale · (i + ½) − ½ formed with
  one rounding (a fused multiply-add), which moves the weights by ~1e-6 against naive float32 arithmetic.
  """
  scale = np.float64(np.float32(in_size) / np.float32(out_size))
  pos = np.maximum(scale * (np.arange(out_size) + 0.5) - 0.5, 0.0).astype(np.float32)
  i0 = np.floor(pos).astype(np.int64)
  i1 = np.minimum(i0 + 1, in_size - 1)
  w1 = np.clip(pos - i0.astype(np.float32), 0, 1).astype(np.float32)
  return i0, i1, np.float32(1) - w1, w1


def _resize(grid: np.ndarray, out_h: int, out_w: int) -> tuple[np.ndarray, np.ndarray]:
  """Taps of a bilinear resize of a map of feature indices `grid` (h, w) to (out_h, out_w); tokens row-major."""
  r0, r1, rw0, rw1 = _linear_taps(grid.shape[0], out_h)
  c0, c1, cw0, cw1 = _linear_taps(grid.shape[1], out_w)
  src = np.stack([grid[r0][:, c0], grid[r0][:, c1], grid[r1][:, c0], grid[r1][:, c1]], axis=-1)
  weight = np.stack([np.outer(rw0, cw0), np.outer(rw0, cw1), np.outer(rw1, cw0), np.outer(rw1, cw1)], axis=-1)
  return src.reshape(-1, 4), weight.reshape(-1, 4).astype(np.float32)


def _average_pool(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Taps of a 2×2, stride-2 average pool (floor), as `avg_pool2d(stride=2)`."""
  h, w = grid.shape[0] // 2 * 2, grid.shape[1] // 2 * 2
  g = grid[:h, :w].reshape(h // 2, 2, w // 2, 2).transpose(0, 2, 1, 3).reshape(-1, 4)
  return g, np.full(g.shape, 0.25, np.float32)


def _with_row_newlines(src: np.ndarray, weight: np.ndarray, rows: int, newline: int):
  """Append a newline token after each of `rows` equal rows of tokens."""
  cols = src.shape[0] // rows
  nl_src, nl_weight = _one(np.full((rows, 1), newline))
  src = np.concatenate([src.reshape(rows, cols, 4), nl_src.reshape(rows, 1, 4)], axis=1).reshape(-1, 4)
  weight = np.concatenate([weight.reshape(rows, cols, 4), nl_weight.reshape(rows, 1, 4)], axis=1).reshape(-1, 4)
  return src, weight


def _tiled(item: VisualItem, cfg: LayoutConfig, newline: int):
  t, side = cfg.tokens_per_side, cfg.tokens_per_side**2
  rows, cols = anyres.grid_shape(item.size, cfg.grid_pinpoints, cfg.tile)
  if item.num_patches != 1 + rows * cols:
    raise ValueError(f"an image of size {item.size} needs {1 + rows * cols} patches (base + {rows}x{cols} tiles), "
                     f"got {item.num_patches}")
  (top, bottom, left, right), (out_h, out_w) = anyres.tiled_feature_shape(
      item.size, cfg.grid_pinpoints, cfg.tile, t, cfg.aspect_ratio, cfg.exact_round)
  r = np.arange(rows * t)[:, None]
  c = np.arange(cols * t)[None, :]
  full = (1 + (r // t) * cols + c // t) * side + (r % t) * t + (c % t)
  grid = full[top:bottom, left:right]
  if (out_h, out_w) == grid.shape:
    src, weight = _one(grid)
  else:
    src, weight = _resize(grid, out_h, out_w)
  src, weight = _with_row_newlines(src, weight, out_h, newline)
  base_src, base_weight = _one(np.arange(side))
  return np.concatenate([base_src, src]), np.concatenate([base_weight, weight])


def _video(item: VisualItem, cfg: LayoutConfig, newline: int):
  t, side = cfg.tokens_per_side, cfg.tokens_per_side**2
  frames = []
  for f in range(item.num_patches):
    grid = f * side + np.arange(side).reshape(t, t)
    if cfg.video_pool == "bilinear":
      pooled = _resize(grid, math.ceil(t / 2), math.ceil(t / 2))
    else:
      pooled = _average_pool(grid)
    pooled_rows = math.ceil(t / 2) if cfg.video_pool == "bilinear" else t // 2
    if cfg.video_newline == "grid":
      pooled = _with_row_newlines(*pooled, pooled_rows, newline)
    elif cfg.video_newline == "frame":
      pooled = _with_row_newlines(*pooled, 1, newline)
    frames.append(pooled)
  src = np.concatenate([s for s, _ in frames])
  weight = np.concatenate([w for _, w in frames])
  if cfg.video_newline == "one_token":
    src, weight = _with_row_newlines(src, weight, 1, newline)
  return src, weight


def item_layout(item: VisualItem, cfg: LayoutConfig) -> tuple[np.ndarray, np.ndarray]:
  """Taps of one item with indices local to its own patches; the newline is index -1."""
  side = cfg.tokens_per_side**2
  if item.kind == "tiled":
    return _tiled(item, cfg, -1)
  if item.kind == "single":
    return _with_row_newlines(*_one(np.arange(side)), 1, -1)
  if item.kind == "plain":
    return _one(np.arange(side))
  if item.kind == "video":
    if cfg.video_newline not in VIDEO_NEWLINES:
      raise UserError(f"unknown video newline layout {cfg.video_newline!r}; expected one of {VIDEO_NEWLINES}")
    if cfg.video_pool not in VIDEO_POOLS:
      raise UserError(f"unknown video pooling {cfg.video_pool!r}; expected one of {VIDEO_POOLS}")
    return _video(item, cfg, -1)
  raise ValueError(f"unknown visual item kind {item.kind!r}; expected one of {KINDS}")


def num_tokens(item: VisualItem, cfg: LayoutConfig) -> int:
  return item_layout(item, cfg)[0].shape[0]


def build_layout(items: Sequence[VisualItem], cfg: LayoutConfig) -> tuple[np.ndarray, np.ndarray]:
  """Taps of all items, in order, into the table of their stacked patches' features followed by the newline."""
  total = sum(item.num_patches for item in items) * cfg.tokens_per_side**2
  srcs, weights, offset = [], [], 0
  for item in items:
    src, weight = item_layout(item, cfg)
    srcs.append(np.where(src < 0, total, src + offset))
    weights.append(weight)
    offset += item.num_patches * cfg.tokens_per_side**2
  if not srcs:
    return np.zeros((0, 4), np.int32), np.zeros((0, 4), np.float32)
  return np.concatenate(srcs).astype(np.int32), np.concatenate(weights).astype(np.float32)


# LLaVA-NeXT's `IMAGE_TOKEN_INDEX`: one marker per image, video or frame in a tokenised prompt.
IMAGE_MARKER = -200


def splice_markers(rows: Sequence[Sequence[int]], items: Sequence[VisualItem], cfg: LayoutConfig,
                   image_token_id: int, video_token_id: int, pad_token_id: int = 0):
  """Expand LLaVA-NeXT prompts: each `IMAGE_MARKER` becomes its item's tokens, as placeholders.

  rows: token ids per sample with markers; items: one per marker, in reading order over all rows. Placeholders are
  `video_token_id` for videos and `image_token_id` otherwise, so the model fills them exactly as LLaVA-NeXT
  splices its features. Returns left-padded (input_ids, attention_mask, position_ids), each (B, T) int64, with
  positions counting real tokens only.
  """
  markers = sum(list(row).count(IMAGE_MARKER) for row in rows)
  if markers != len(items):
    raise ValueError(f"the prompts hold {markers} image markers ({IMAGE_MARKER}) but {len(items)} visual items "
                     "were given")
  queue = iter(items)
  expanded = []
  for row in rows:
    out = []
    for token in row:
      if token != IMAGE_MARKER:
        out.append(int(token))
        continue
      item = next(queue)
      out += [video_token_id if item.kind == "video" else image_token_id] * num_tokens(item, cfg)
    expanded.append(out)
  length = max(len(r) for r in expanded)
  ids = np.full((len(expanded), length), pad_token_id, np.int64)
  mask = np.zeros((len(expanded), length), np.int64)
  for i, row in enumerate(expanded):
    ids[i, length - len(row):] = row
    mask[i, length - len(row):] = 1
  return ids, mask, np.maximum(np.cumsum(mask, axis=1) - 1, 0)
