"""LLaVA-OneVision pixel preprocessing (images and video frames) in numpy + PIL.

Outputs equal transformers' `LlavaOnevisionImageProcessorPil` (images) and `LlavaOnevisionVideoProcessor` on CPU
(video frames) bit for bit. Inputs are PIL images (any mode) or (H, W, 3) uint8 arrays; pixel outputs are float32 NCHW.
Image sizes are (height, width). The tiling geometry and token counts come from `anyres`, which the model shares.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from typing import Sequence

import numpy as np
from PIL import Image

from ureward_jax.errors import UserError
from ureward_jax.processing import anyres

ImageLike = Image.Image | np.ndarray
# Pillow's limit is one global; opening under our own limit switches it off, one file at a time.
_PILLOW_LIMIT = threading.Lock()


class ImageTooLarge(UserError):
  """An image file with more pixels than the limit it was opened under."""


def open_image(path: str, max_pixels: int | None = None) -> Image.Image:
  """The decoded image of a file (its own mode), detached from the file.

  max_pixels: refuse, with ImageTooLarge naming the file and its size, an image of more pixels, before decoding it
  (`Image.open` reads only the header). The limit replaces Pillow's decompression-bomb check (a warning above
  `Image.MAX_IMAGE_PIXELS`, an error above twice that) for this file, so a limit below Pillow's refuses sooner and
  one above it is honoured; None keeps Pillow's check.
  """
  if max_pixels is None:
    with Image.open(path) as image:
      image.load()
      return image.copy()
  with _PILLOW_LIMIT:
    pillow_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
      with Image.open(path) as image:
        width, height = image.size
        if width * height > max_pixels:
          raise ImageTooLarge(f"image {path} is {width}×{height} ({width * height:,} pixels), over the limit of "
                              f"{max_pixels:,} pixels; --max-pixels raises it")
        image.load()   # some formats check again while decoding
        return image.copy()
    finally:
      Image.MAX_IMAGE_PIXELS = pillow_limit



def to_rgb_array(image: ImageLike, what: str = "image") -> np.ndarray:
  """(H, W, 3) uint8 from a PIL image of any mode or an (H, W, 3) uint8 array.

  Transparent PIL images (an alpha band or a `transparency` entry) are composited onto white, as transformers does;
  other modes go through `convert("RGB")`.
  """
  if isinstance(image, Image.Image):
    if "A" in image.getbands() or image.info.get("transparency") is not None:
      rgba = image.convert("RGBA")
      white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
      image = Image.alpha_composite(white, rgba)
    array = np.asarray(image.convert("RGB"))
  elif isinstance(image, np.ndarray):
    if image.ndim != 3 or image.shape[-1] != 3:
      raise UserError(f"{what} array must be (H, W, 3) RGB, got shape {image.shape}; convert grayscale or RGBA "
                      "arrays with PIL (Image.fromarray(a).convert('RGB')) first")
    if image.dtype != np.uint8:
      raise UserError(f"{what} array must be uint8 in [0, 255], got dtype {image.dtype}")
    array = image
  else:
    raise TypeError(f"{what} must be a PIL image or a numpy array, got {type(image).__name__}")
  if array.shape[0] == 0 or array.shape[1] == 0:
    raise UserError(f"{what} is empty: size {array.shape[:2]}")
  return array


def _resize_pil(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Bicubic resize of an (H, W, 3) uint8 image to `size` (h, w) with Pillow, kept in uint8 as transformers does."""
  height, width = size
  return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC))


def _keys_cubic(x: np.ndarray) -> np.ndarray:
  """Keys cubic kernel with a = -0.5, the antialiasing filter of torch's (and Pillow's) bicubic resize."""
  a = -0.5
  x = np.abs(x)
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _int_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, int]:
  """Fixed-point antialiased bicubic taps of one axis, as torch computes them for uint8 input.

  Returns the first input index per output (out,), integer weights (out, k) that are zero past each window, and the
  number of fractional bits. Window bounds, weights and their normalisation are in float64; the weights are then
  scaled by the largest power of two that keeps the largest one under 2^15 and rounded half away from zero.
  """
  scale = in_size / out_size
  support = 2.0 * scale if scale >= 1.0 else 2.0
  taps = math.ceil(support) * 2 + 1
  inv_scale = 1.0 / scale if scale >= 1.0 else 1.0
  centre = scale * (np.arange(out_size) + 0.5)
  # astype(int64) truncates toward zero, like the C++ casts it restates.
  first = np.maximum((centre - support + 0.5).astype(np.int64), 0)
  count = np.clip(np.minimum((centre + support + 0.5).astype(np.int64), in_size) - first, 0, taps)
  offsets = np.arange(taps)
  weights = _keys_cubic(((offsets + first[:, None]) - centre[:, None] + 0.5) * inv_scale)
  weights = np.where(offsets < count[:, None], weights, 0.0)
  # A running sum keeps torch's left-to-right accumulation order. Every window's sum is positive (the kernel is a
  # partition of unity up to its small negative lobes), so torch's guard against a zero sum never fires.
  weights = weights / np.cumsum(weights, axis=1)[:, -1:]
  largest = weights.max()
  bits = 0
  while bits < 22 and int(0.5 + largest * (1 << (bits + 1))) < (1 << 15):
    bits += 1
  scaled = weights * (1 << bits)
  fixed = np.trunc(scaled + np.where(scaled < 0, -0.5, 0.5)).astype(np.int32)
  return first, fixed, bits


def _resample_axis(pixels: np.ndarray, out_size: int, axis: int) -> np.ndarray:
  """One separable pass along `axis` of uint8 `pixels`: integer dot products, rounded, clamped to uint8."""
  in_size = pixels.shape[axis]
  first, fixed, bits = _int_taps(in_size, out_size)
  shape = list(pixels.shape)
  shape[axis] = out_size
  weight_shape = [1] * pixels.ndim
  weight_shape[axis] = out_size
  acc = np.full(shape, 1 << (bits - 1), np.int32)
  for tap in range(fixed.shape[1]):
    # Windows near the border run past the image; their weights there are zero, so any valid index will do.
    index = np.minimum(first + tap, in_size - 1)
    acc += np.take(pixels, index, axis=axis).astype(np.int32) * fixed[:, tap].reshape(weight_shape)
  return np.clip(acc >> bits, 0, 255).astype(np.uint8)


def resize_bicubic_aa_uint8(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """(N, C, H, W) uint8 → (N, C, h, w) uint8, equal to torch's CPU `interpolate(bicubic, antialias=True)` on uint8.

  This is what torchvision's `resize` runs for uint8 bicubic on CPU (the transformers video processor's resize). It
  is a fixed-point, width-then-height separable filter; Pillow uses more fractional bits and picks the pass order
  itself, so its output differs by a few levels.
  """
  height, width = size
  if frames.shape[-1] != width:
    frames = _resample_axis(frames, width, axis=-1)
  if frames.shape[-2] != height:
    frames = _resample_axis(frames, height, axis=-2)
  return frames


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageProcessor:
  """LLaVA-OneVision preprocessing: anyres tiling for single images, one square view per image otherwise.

  `size` is the tile / tower input side in pixels; `patch_size` the tower's patch side, so a tile has
  (size // patch_size)² tokens. `grid_pinpoints` are (height, width) canvases, each a multiple of `size`: the
  checkpoint's, which `runners.llava.image_processor` passes from the model config.
  """
  grid_pinpoints: Sequence[Sequence[int]]
  size: int = 384
  image_mean: Sequence[float] = (0.5, 0.5, 0.5)
  image_std: Sequence[float] = (0.5, 0.5, 0.5)
  aspect_ratio: str = "anyres_max_9"
  patch_size: int = 14

  def __post_init__(self):
    # Tuples keep the frozen processor hashable and immune to the caller's later edits of a list.
    pinpoints = tuple((int(h), int(w)) for h, w in self.grid_pinpoints)
    object.__setattr__(self, "grid_pinpoints", pinpoints)
    object.__setattr__(self, "image_mean", tuple(float(m) for m in self.image_mean))
    object.__setattr__(self, "image_std", tuple(float(s) for s in self.image_std))
    if self.size <= 0 or self.patch_size <= 0 or self.size < self.patch_size:
      raise UserError(f"need 0 < patch_size <= size, got size={self.size}, patch_size={self.patch_size}")
    if not pinpoints:
      raise UserError("grid_pinpoints is empty")
    bad = [p for p in pinpoints if p[0] <= 0 or p[1] <= 0 or p[0] % self.size or p[1] % self.size]
    if bad:
      raise UserError(f"grid_pinpoints must be positive multiples of size={self.size}; bad entries: {bad}")
    if len(self.image_mean) != 3 or len(self.image_std) != 3:
      raise UserError(f"image_mean and image_std need 3 values (RGB), got {self.image_mean}, {self.image_std}")
    if any(s == 0 for s in self.image_std):
      raise UserError(f"image_std must be non-zero, got {self.image_std}")
    anyres.max_tiles_of(self.aspect_ratio)  # raises on an unknown aspect ratio

  @property
  def tokens_per_side(self) -> int:
    return self.size // self.patch_size

  def __call__(self, images: Sequence[ImageLike], batch_num_images: Sequence[int] | None = None
               ) -> dict[str, np.ndarray]:
    """Pixel values for a flat list of images, grouped into samples by `batch_num_images` (default: one each).

    Returns `pixel_values` float32 (n_images, max_patches, 3, size, size), zero-padded along the patch axis;
    `image_sizes` int64 (n_images, 2) as (H, W); `batch_num_images` int64 (n_samples,). Images of one-image samples
    are tiled (base view first, then tiles row-major); images of multi-image samples give one padded square view.
    """
    if isinstance(images, (Image.Image, np.ndarray)):
      raise TypeError("images must be a list of images; wrap a single image in a list")
    images = list(images)
    if not images:
      raise ValueError("images is empty; pass at least one image")
    if batch_num_images is None:
      batch_num_images = [1] * len(images)
    batch_num_images = [int(n) for n in batch_num_images]
    if any(n < 1 for n in batch_num_images):
      raise ValueError(f"batch_num_images entries must be >= 1 (leave image-less samples out), got {batch_num_images}")
    if sum(batch_num_images) != len(images):
      raise ValueError(f"batch_num_images {batch_num_images} sums to {sum(batch_num_images)} but "
                       f"{len(images)} images were given")

    patches, sizes = [], []
    index = 0
    for count in batch_num_images:
      for _ in range(count):
        rgb = to_rgb_array(images[index], what=f"images[{index}]")
        views = self._tiles(rgb) if count == 1 else self._square_view(rgb)[None]
        patches.append(self._normalize(views))
        sizes.append(rgb.shape[:2])
        index += 1

    max_patches = max(len(p) for p in patches)
    pixel_values = np.zeros((len(patches), max_patches, 3, self.size, self.size), np.float32)
    for i, p in enumerate(patches):
      pixel_values[i, :len(p)] = p
    return {
        "pixel_values": pixel_values,
        "image_sizes": np.asarray(sizes, np.int64),
        "batch_num_images": np.asarray(batch_num_images, np.int64),
    }

  def _tiles(self, image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 → (1 + rows·cols, size, size, 3) uint8: the whole image squashed to a tile, then the tiles.

    The tiles cut the image resized (aspect kept) into the best pinpoint and centred on a black canvas.
    """
    height, width = image.shape[:2]
    canvas_h, canvas_w = anyres.select_best_resolution((height, width), self.grid_pinpoints)
    fit_h, fit_w = anyres.fit_size((height, width), (canvas_h, canvas_w))
    canvas = np.zeros((canvas_h, canvas_w, 3), np.uint8)
    top, left = (canvas_h - fit_h) // 2, (canvas_w - fit_w) // 2
    canvas[top:top + fit_h, left:left + fit_w] = _resize_pil(image, (fit_h, fit_w))
    rows, cols, s = canvas_h // self.size, canvas_w // self.size, self.size
    tiles = canvas.reshape(rows, s, cols, s, 3).transpose(0, 2, 1, 3, 4).reshape(rows * cols, s, s, 3)
    base = _resize_pil(image, (s, s))
    return np.concatenate([base[None], tiles])

  def _square_view(self, image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 → (size, size, 3) uint8: centred on a square of colour int(255·mean), then resized."""
    height, width = image.shape[:2]
    if height != width:
      side = max(height, width)
      square = np.empty((side, side, 3), np.uint8)
      square[...] = [int(m * 255) for m in self.image_mean]
      top, left = (side - height) // 2, (side - width) // 2
      square[top:top + height, left:left + width] = image
      image = square
    return _resize_pil(image, (self.size, self.size))

  def _normalize(self, views: np.ndarray) -> np.ndarray:
    """(N, h, w, 3) uint8 → (N, 3, h, w) float32: ×(1/255) in float64 rounded to float32, then (x − mean) / std.

    The two steps and their dtypes are transformers' (rescale then normalize), so the result matches to the bit.
    """
    x = (views.transpose(0, 3, 1, 2).astype(np.float64) * (1 / 255)).astype(np.float32)
    mean = np.asarray(self.image_mean, np.float32)[:, None, None]
    std = np.asarray(self.image_std, np.float32)[:, None, None]
    return (x - mean) / std

  def plain_views(self, images: np.ndarray | Sequence[ImageLike]) -> np.ndarray:
    """(N, 3, size, size) float32: each image squashed to size × size with Pillow's bicubic, then normalised.

    What SigLIP's own image processor does, and so how UnifiedReward's inference scripts feed each video frame (one
    plain tile per frame, no tiling, aspect not kept). Takes a list of images or an (N, H, W, 3) uint8 array.
    """
    views = [_resize_pil(to_rgb_array(image, what=f"images[{i}]"), (self.size, self.size))
             for i, image in enumerate(images)]
    if not views:
      raise ValueError("images is empty; pass at least one image")
    return self._normalize(np.stack(views))

  def preprocess_video(self, frames: np.ndarray | Sequence[ImageLike]) -> np.ndarray:
    """(F, H, W, 3) uint8 frames, or a list of same-size images → float32 (F, 3, size, size).

    List entries go through `to_rgb_array`. Matches the transformers video processor on CPU: torch's uint8
    antialiased bicubic resize straight to size × size (no tiling, no aspect kept), then one fused
    (x − 255·mean) / (255·std) in float32.
    """
    if isinstance(frames, np.ndarray):
      if frames.ndim != 4 or frames.shape[-1] != 3:
        raise UserError(f"video array must be (F, H, W, 3) RGB, got shape {frames.shape}")
      if frames.dtype != np.uint8:
        raise UserError(f"video array must be uint8 in [0, 255], got dtype {frames.dtype}")
      if 0 in frames.shape:
        raise UserError(f"video is empty: shape {frames.shape}")
    else:
      frames = [to_rgb_array(f, what=f"frames[{i}]") for i, f in enumerate(frames)]
      if not frames:
        raise UserError("frames is empty; pass at least one frame")
      shapes = sorted({f.shape[:2] for f in frames})
      if len(shapes) > 1:
        raise UserError(f"all frames of a video must have one size, got sizes {shapes}")
      frames = np.stack(frames)
    resized = resize_bicubic_aa_uint8(frames.transpose(0, 3, 1, 2), (self.size, self.size))
    # transformers folds the 1/255 rescale into mean and std (float32 products) and normalises once.
    mean = (np.asarray(self.image_mean, np.float32) * np.float32(255.0))[:, None, None]
    std = (np.asarray(self.image_std, np.float32) * np.float32(255.0))[:, None, None]
    return (resized.astype(np.float32) - mean) / std

  def num_image_tokens(self, size_hw: tuple[int, int], tiled: bool = True, exact_round: bool = True) -> int:
    """Visual tokens of one (H, W) image: what transformers' processor expands `<image>` into.

    Tiled (a one-image sample): the base tile's tokens plus the unpadded, anyres_max-capped map with one newline per
    row. Untiled (multi-image sample): one tile's tokens plus one newline. `exact_round=True` rounds the unpadded
    size to 7 decimals as transformers (processor and model, v5) does; False floors it as LLaVA-NeXT does.
    """
    height, width = (int(v) for v in size_hw)
    if height <= 0 or width <= 0:
      raise UserError(f"image size must be positive (H, W), got {size_hw}")
    if not tiled:
      return self.tokens_per_side**2 + 1
    return anyres.tiled_token_count((height, width), self.grid_pinpoints, self.size, self.tokens_per_side,
                                    self.aspect_ratio, exact_round)

  def num_video_tokens(self, num_frames: int) -> int:
    """Tokens of a video: each frame's map pooled to ceil(side / 2)², then one newline for the whole video."""
    if num_frames < 1:
      raise UserError(f"num_frames must be >= 1, got {num_frames}")
    pooled = math.ceil(self.tokens_per_side / 2)
    return num_frames * pooled * pooled + 1
