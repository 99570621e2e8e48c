"""One row to judge → the official prompt text and the visual inputs, laid out as the checkpoint expects them.

Rows (dicts, as `ureward score` reads them from JSONL):
  image_generation / video_generation   "prompt"; pair: "images" | "videos": [a, b]; point: "image" | "video"
  image_understanding / video_understanding  "question" and "image" | "video"; pair: "responses": [r1, r2];
                                        point: "response"
An image is a path (any format PIL reads), a PIL image or an (H, W, 3) uint8 array; a video is a file (PyAV), a
folder of frame images, or an (F, H, W, 3) uint8 array. Relative paths are taken from `root`.

Layouts: the reference inference and evaluation scripts that produced the published numbers give every image of a
pair its full anyres tiling (`pair_layout="anyres"`) and feed a video as its frames, one `<image>` and one plain
tile each (`video_layout="frames"`). LLaVA-NeXT's trainer
instead pads pair images to one square tile (`"pad"`) and pools a video's frames behind one `<image>`
(`"pooled"`): the layouts of a model trained here (the shapes demo).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ureward_jax.errors import UserError
from ureward_jax.processing.feature_layout import VisualItem
from ureward_jax.processing.image import ImageProcessor, ImageTooLarge, open_image, to_rgb_array
from ureward_jax.processing.video import frame_indices, read_frames
from ureward_jax.reward import prompts

PAIR_LAYOUTS = ("anyres", "pad")
VIDEO_LAYOUTS = ("frames", "pooled")

# One visual input as the model takes it: its layout item and its pixels (n_patches, C, H, W), NCHW.
Visual = tuple[VisualItem, np.ndarray]


class BadInput(UserError):
  """A row that cannot be judged: a missing field, an empty text, a missing, unreadable or oversized file."""


@dataclasses.dataclass(frozen=True)
class InputOptions:
  """How media become model inputs.

  num_frames: frames sampled uniformly per video (LLaVA-NeXT's `linspace` rule). resize: side to resize every image
  and frame to first (the official evaluation and sifting scripts use 512; None keeps the original size).
  max_pixels: an image file or frame image of more pixels is the row's error, found before it is decoded (default
  Pillow's own decompression-bomb limit; a larger one is honoured, see `processing.image.open_image`).
  """
  num_frames: int = 8
  resize: int | None = None
  pair_layout: str = "anyres"
  video_layout: str = "frames"
  max_pixels: int = Image.MAX_IMAGE_PIXELS

  def __post_init__(self):
    if self.num_frames < 1:
      raise UserError(f"num_frames must be at least 1, got {self.num_frames}")
    if self.resize is not None and self.resize < 1:
      raise UserError(f"resize must be a positive side in pixels or None, got {self.resize}")
    if self.max_pixels < 1:
      raise UserError(f"max_pixels must be at least 1, got {self.max_pixels}")
    if self.pair_layout not in PAIR_LAYOUTS:
      raise UserError(f"unknown pair_layout {self.pair_layout!r}; expected one of {PAIR_LAYOUTS}")
    if self.video_layout not in VIDEO_LAYOUTS:
      raise UserError(f"unknown video_layout {self.video_layout!r}; expected one of {VIDEO_LAYOUTS}")


def text_field(value, name: str) -> str:
  """`value` if it is a non-empty string, else a BadInput saying which of missing, not text or empty it is."""
  if value is None:
    raise BadInput(f"{name} is missing")
  if not isinstance(value, str):
    raise BadInput(f"{name} must be text, got {type(value).__name__} {json.dumps(value)[:40]}")
  if not value.strip():
    raise BadInput(f"{name} is empty")
  return value


def _text(row: dict, key: str) -> str:
  return text_field(row.get(key), repr(key))


def _two(row: dict, key: str) -> list:
  value = row.get(key)
  if not isinstance(value, (list, tuple)) or len(value) != 2:
    raise BadInput(f"{key!r} must hold exactly two entries")
  return list(value)


def media_key(row: dict, task: str, mode: str) -> str:
  """The row's media field: "images" | "videos" for generation pairs, "image" | "video" otherwise."""
  video = task.startswith("video")
  if mode == "pair" and task.endswith("generation"):
    key = "videos" if video else "images"
  else:
    key = "video" if video else "image"
  if key not in row:
    raise BadInput(f"a {task} {mode} row needs {key!r}")
  return key


def fields(row: dict, task: str, mode: str) -> dict[str, str]:
  """The template fields of `row` (caption, question, responses); BadInput for a missing or empty one."""
  if task.endswith("generation"):
    return {"caption": _text(row, "prompt")}
  out = {"question": _text(row, "question")}
  if mode == "pair":
    responses = _two(row, "responses")
    for i, response in enumerate(responses, 1):
      out[f"response_{i}"] = text_field(response, f"response {i}")
  else:
    out["response"] = _text(row, "response")
  return out


def swapped(row: dict, task: str, mode: str) -> dict:
  """`row` with its two candidates in the other order (the two images or videos, or the two responses)."""
  if mode != "pair":
    raise ValueError("only pairs have an order to swap")
  key = media_key(row, task, mode) if task.endswith("generation") else "responses"
  a, b = _two(row, key)
  return {**row, key: [b, a]}


def _path(value, root: str | None) -> str:
  return value if root is None or os.path.isabs(value) else os.path.join(root, value)


def load_image(value, root: str | None, resize: int | None = None,
               max_pixels: int = InputOptions.max_pixels) -> np.ndarray:
  """(H, W, 3) uint8 of an image path, PIL image or array, optionally resized to resize²; an image file of more than
  max_pixels pixels is refused before decoding. Raises BadInput."""
  if isinstance(value, str):
    path = _path(value, root)
    try:
      value = open_image(path, max_pixels)
    except FileNotFoundError:
      raise BadInput(f"image not found: {path}") from None
    except ImageTooLarge as e:
      raise BadInput(str(e)) from None
    except (UnidentifiedImageError, OSError) as e:
      raise BadInput(f"cannot read image {path}: {e}") from None
  try:
    rgb = to_rgb_array(value)
  except (TypeError, ValueError) as e:
    raise BadInput(str(e)) from None
  if resize is not None:
    rgb = np.asarray(Image.fromarray(rgb).resize((resize, resize), Image.Resampling.BICUBIC))
  return rgb


def load_frames(value, root: str | None, options: InputOptions) -> np.ndarray:
  """(num_frames, H, W, 3) uint8 of a video file, frame folder or array, sampled uniformly; raises BadInput."""
  if isinstance(value, str):
    try:
      frames = read_frames(_path(value, root), options.num_frames, options.max_pixels)
    except (OSError, ValueError) as e:   # missing, unreadable, empty or oversized
      raise BadInput(str(e)) from None
  elif isinstance(value, np.ndarray) and value.ndim == 4 and value.shape[-1] == 3 and value.dtype == np.uint8:
    frames = value[frame_indices(len(value), options.num_frames)]
  else:
    raise BadInput("a video must be a file, a folder of frames or an (F, H, W, 3) uint8 array")
  if options.resize is not None:
    size = (options.resize, options.resize)
    frames = np.stack([np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BICUBIC)) for f in frames])
  return frames


def _video_visuals(frames: np.ndarray, processor: ImageProcessor, layout: str) -> list[Visual]:
  if layout == "pooled":
    return [(VisualItem("video", len(frames)), processor.preprocess_video(frames))]
  return [(VisualItem("plain"), view[None]) for view in processor.plain_views(frames)]


def visual_inputs(row: dict, task: str, mode: str, processor: ImageProcessor, options: InputOptions,
                  root: str | None = None) -> list[Visual]:
  """The row's visual inputs in prompt order: one per `<image>` marker of `prompt_text`. Raises BadInput."""
  key = media_key(row, task, mode)
  values = _two(row, key) if key in ("images", "videos") else [row[key]]
  if task.startswith("video"):
    return [v for value in values for v in _video_visuals(load_frames(value, root, options), processor,
                                                          options.video_layout)]
  images = [load_image(value, root, options.resize, options.max_pixels) for value in values]
  if len(images) == 2 and options.pair_layout == "pad":
    return [(VisualItem("single"), p[:1]) for p in processor(images, [2])["pixel_values"]]
  out = []
  for image in images:
    pixels = processor([image])["pixel_values"][0]
    out.append((VisualItem("tiled", len(pixels), image.shape[:2]), pixels))
  return out


def prompt_text(row: dict, task: str, mode: str, variant: str, num_markers: int) -> str:
  """The user message: `num_markers` `<image>` markers (spaced as the template's script does), then the prompt."""
  template = prompts.template(task, mode, variant)
  text = prompts.render(task, mode, variant, **fields(row, task, mode))
  space = template.space_between_inputs and mode == "pair" and task.endswith("generation")
  return prompts.user_turn(text, num_markers, space)


def prepare(row: dict[str, Any], task: str, mode: str, processor: ImageProcessor, options: InputOptions,
            variant: str = "default", root: str | None = None) -> tuple[str, list[Visual]]:
  """(user message, visual inputs) of one row; BadInput names what is wrong with it."""
  if not isinstance(row, dict):
    raise BadInput(f"a row must be a JSON object, got {type(row).__name__}")
  fields(row, task, mode)   # text errors first: they need no file access
  visuals = visual_inputs(row, task, mode, processor, options, root)
  return prompt_text(row, task, mode, variant, len(visuals)), visuals
