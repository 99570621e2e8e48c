"""Geometry of LLaVA-OneVision's "anyres" image handling, shared by the processor and the model.

All sizes are (height, width) in pixels unless a name says tokens. The processor uses these functions to cut an
image into tiles and to count its visual tokens; the model's feature layout uses the same functions to place the
tiles' features, so the two always agree.
"""

from __future__ import annotations

import math
from typing import Sequence

from ureward_jax.errors import UserError


def select_best_resolution(size: tuple[int, int], pinpoints: Sequence[Sequence[int]]) -> tuple[int, int]:
  """The pinpoint (h, w) that keeps the most image pixels, ties broken by the least padding (first wins)."""
  height, width = size
  best, best_effective, best_wasted = None, 0, math.inf
  for cand_h, cand_w in pinpoints:
    scale = min(cand_w / width, cand_h / height)
    effective = min(int(width * scale) * int(height * scale), width * height)
    wasted = cand_w * cand_h - effective
    if effective > best_effective or (effective == best_effective and wasted < best_wasted):
      best, best_effective, best_wasted = (int(cand_h), int(cand_w)), effective, wasted
  if best is None:
    raise UserError(f"no grid pinpoint fits an image of size {size}; pinpoints: {list(pinpoints)}")
  return best


def grid_shape(size: tuple[int, int], pinpoints: Sequence[Sequence[int]], tile: int) -> tuple[int, int]:
  """(rows, cols) of tiles of side `tile` covering the best resolution for an image of `size`."""
  best_h, best_w = select_best_resolution(size, pinpoints)
  return best_h // tile, best_w // tile


def num_patches(size: tuple[int, int], pinpoints: Sequence[Sequence[int]], tile: int) -> int:
  """Patches the processor emits for one tiled image: the base view plus every tile."""
  rows, cols = grid_shape(size, pinpoints, tile)
  return 1 + rows * cols


def fit_size(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
  """Size of the image resized, aspect kept, to fit inside `target` (touching it on one side)."""
  height, width = size
  target_h, target_w = target
  scale_w, scale_h = target_w / width, target_h / height
  if scale_w < scale_h:
    return min(math.ceil(height * scale_w), target_h), target_w
  return target_h, min(math.ceil(width * scale_h), target_w)


def unpad_box(current: tuple[int, int], size: tuple[int, int], exact_round: bool = True) -> tuple[int, int, int, int]:
  """Rows [top, bottom) and columns [left, right) of a `current` feature map that hold the original image.

  The tiles were padded symmetrically to the pinpoint's aspect; this removes that padding. `exact_round` rounds the
  scaled size to 7 decimals first, as transformers (model and processor) does; LLaVA-NeXT floors it, which differs
  only in rare float cases (e.g. a 369×820 image: 2403 vs 2349 tokens).
  """
  cur_h, cur_w = current
  height, width = size
  if width / height > cur_w / cur_h:
    scaled = height * (cur_w / width)
    new_h = int(round(scaled, 7)) if exact_round else int(scaled)
    pad = (cur_h - new_h) // 2
    return pad, cur_h - pad, 0, cur_w
  scaled = width * (cur_h / height)
  new_w = int(round(scaled, 7)) if exact_round else int(scaled)
  pad = (cur_w - new_w) // 2
  return 0, cur_h, pad, cur_w - pad


def capped_shape(height: int, width: int, max_tiles: int, tokens_per_side: int) -> tuple[int, int]:
  """Token map size after the anyres_max_N cap: bilinear down-scaling once the map exceeds 1.1x N tiles' worth."""
  ratio = math.sqrt(height * width / (max_tiles * tokens_per_side**2))
  if ratio > 1.1:
    return int(height // ratio), int(width // ratio)
  return height, width


def max_tiles_of(aspect_ratio: str) -> int | None:
  """9 for "anyres_max_9"; None for plain "anyres" (no cap)."""
  if aspect_ratio.startswith("anyres_max_"):
    return int(aspect_ratio[len("anyres_max_"):])
  if aspect_ratio == "anyres":
    return None
  raise UserError(f"unsupported vision_aspect_ratio {aspect_ratio!r}; expected 'anyres' or 'anyres_max_N'")


def tiled_feature_shape(size: tuple[int, int], pinpoints, tile: int, tokens_per_side: int, aspect_ratio: str,
                        exact_round: bool = True) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
  """For a tiled image: the unpad box on the full token map, and the map's final (rows, cols) after the cap."""
  rows, cols = grid_shape(size, pinpoints, tile)
  box = unpad_box((rows * tokens_per_side, cols * tokens_per_side), size, exact_round)
  top, bottom, left, right = box
  max_tiles = max_tiles_of(aspect_ratio)
  final = (bottom - top, right - left)
  if max_tiles is not None:
    final = capped_shape(*final, max_tiles, tokens_per_side)
  return box, final


def tiled_token_count(size: tuple[int, int], pinpoints, tile: int, tokens_per_side: int, aspect_ratio: str,
                      exact_round: bool = True) -> int:
  """Visual tokens of one tiled image: the base view, then each row of the unpadded map plus its newline."""
  _, (rows, cols) = tiled_feature_shape(size, pinpoints, tile, tokens_per_side, aspect_ratio, exact_round)
  return tokens_per_side**2 + rows * (cols + 1)
