"""One training record → one fixed-shape example: tokens, labels, pixels and the sample's own visual layout.

Visual inputs are laid out as LLaVA-NeXT's trainer lays them out (`train.py::_get_item`):
  - `image` (one): anyres tiles, unpadded, capped, a newline per row ("tiled");
  - `images` with one or two entries (a generated pair): one padded square view per image plus a newline ("single");
  - `images` with more entries, or `video` (a file or a folder of frames): one video behind a single `<image>`,
    pooled 2× with newlines by the checkpoint's `video_newline`.
The text must hold one `<image>` per image (per video); each is expanded to its item's visual tokens.

An example holds (T = max_length, P = max_patches, V = T): `input_ids`, `labels`, `attention_mask`, `positions`
(T,) int32; `pixels` (P, H, W, 3) float32; `visual_src`/`visual_weight` (V, 4) into [P·L features ; newline];
`visual_dest` (V,) with T for unused rows; and the scalars `index` (position in the source), `truncated`, `bad`.
A record that cannot be used raises `BadRecord` (a file Pillow refuses may raise Pillow's own error);
`pipeline.BuildExample` puts `empty_example` in the slot of either, so batches keep their shape.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import tokenizers
from PIL import Image, UnidentifiedImageError

from ureward_jax.data.sources import Record
from ureward_jax.errors import UserError
from ureward_jax.processing.chat import IGNORE, tokenize_conversation, tokenize_preference
from ureward_jax.processing.feature_layout import IMAGE_MARKER, LayoutConfig, VisualItem, item_layout
from ureward_jax.processing.image import ImageProcessor
from ureward_jax.processing.video import frame_indices, read_frames
from ureward_jax.reward import prompts
from ureward_jax.runners.llava import image_processor, layout_config


class BadRecord(UserError):
  """A record that cannot become an example (missing or corrupt file, empty conversation, ...)."""


@dataclasses.dataclass(frozen=True)
class ExampleConfig:
  """What the model and the step's shapes fix about an example."""
  max_length: int
  max_patches: int
  processor: ImageProcessor
  layout: LayoutConfig
  image_token_id: int
  video_token_id: int
  video_frames: int = 8
  assistant_only: bool = False
  pad_token_id: int = 0

  @classmethod
  def for_model(cls, model, max_length: int, max_patches: int, **kwargs) -> "ExampleConfig":
    """From a `LlavaOnevisionConfig`."""
    return cls(max_length, max_patches, image_processor(model), layout_config(model), model.image_token_id,
               model.video_token_id, **kwargs)


def _open_image(path) -> Image.Image:
  """An RGB image from a file, or from decoded (H, W, C) uint8 pixels as a TFDS source yields them."""
  if isinstance(path, np.ndarray):
    return Image.fromarray(path[..., 0] if path.shape[-1] == 1 else path).convert("RGB")
  try:
    with Image.open(path) as image:
      return image.convert("RGB")
  except FileNotFoundError:
    raise BadRecord(f"missing file {path}") from None
  except (UnidentifiedImageError, OSError) as e:
    raise BadRecord(f"corrupt image {path} ({e})") from None


def visual_inputs(record: Record, cfg: ExampleConfig) -> list[tuple[VisualItem, np.ndarray]]:
  """The record's visual items, in marker order, with their patches (n, H, W, 3) float32; raises BadRecord."""
  data = record.data
  join = lambda p: p if not isinstance(p, str) or p.startswith("/") else f"{record.image_folder}/{p}"
  proc = cfg.processor
  nhwc = lambda x: x.transpose(0, 2, 3, 1)
  if "video" in data:
    try:
      if isinstance(data["video"], np.ndarray):   # decoded frames (T, H, W, 3), sampled as a video file's are
        frames = data["video"][frame_indices(len(data["video"]), cfg.video_frames)]
      else:
        frames = read_frames(join(data["video"]), cfg.video_frames)
    except FileNotFoundError as e:
      raise BadRecord(f"missing file {e.filename or data['video']}") from None
    except (ValueError, OSError) as e:
      raise BadRecord(f"unreadable video: {e}") from None
    return [(VisualItem("video", len(frames)), nhwc(proc.preprocess_video(frames)))]
  paths = data.get("images", [data["image"]] if "image" in data else [])
  if isinstance(paths, (str, np.ndarray)):
    paths = [paths]
  images = [_open_image(join(p)) for p in paths]
  if len(images) > 2:
    if len({image.size for image in images}) > 1:
      raise BadRecord(f"the {len(images)} frames of a video differ in size")
    frames = np.stack([np.asarray(image) for image in images])
    return [(VisualItem("video", len(frames)), nhwc(proc.preprocess_video(frames)))]
  if len(images) == 1:
    pixels = proc(images)["pixel_values"][0]   # one image: exactly its base view and tiles
    return [(VisualItem("tiled", len(pixels), (images[0].height, images[0].width)), nhwc(pixels))]
  if not images:
    return []
  return [(VisualItem("single"), nhwc(p)) for p in proc(images, [len(images)])["pixel_values"]]


def make_example(record: Record, index: int, cfg: ExampleConfig, tokenizer: tokenizers.Tokenizer) -> dict[str, Any]:
  """The example of `record` (see the module docstring); raises BadRecord."""
  conversations = record.data.get("conversations")
  if not isinstance(conversations, list) or not conversations:
    raise BadRecord("empty conversation")
  if not all(isinstance(m, dict) and isinstance(m.get("value", m.get("content")), str) for m in conversations):
    raise BadRecord("a conversation message is not {'from': ..., 'value': text}")
  if not any(m.get("from", m.get("role")) in ("gpt", "assistant") and m.get("value", m.get("content", "")).strip()
             for m in conversations):
    raise BadRecord("no assistant turn")
  try:
    ids, labels = tokenize_conversation(tokenizer, conversations, assistant_only=cfg.assistant_only)
  except ValueError as e:
    raise BadRecord(str(e)) from None
  return _expand(ids, labels, visual_inputs(record, cfg), index, cfg)


def make_preference_example(record: Record, index: int, cfg: ExampleConfig,
                            tokenizer: tokenizers.Tokenizer) -> dict[str, Any]:
  """A DPO record's chosen and rejected examples, stacked on a leading axis of 2; raises BadRecord.

  The record: {"id", "prompt", "chosen", "rejected", "image" | "images" | "video"} (the pair-construction output);
  a prompt without `<image>` markers gets one "<image>\n" per visual input in front, as LLaVA's DPO data loader
  adds them. Labels follow `tokenize_preference`.
  """
  data = record.data
  texts = [data.get(key) for key in ("prompt", "chosen", "rejected")]
  if not all(isinstance(t, str) and t.strip() for t in texts):
    raise BadRecord("a preference record needs non-empty 'prompt', 'chosen' and 'rejected'")
  visuals = visual_inputs(record, cfg)
  prompt = texts[0] if "<image>" in texts[0] else prompts.user_turn(texts[0], len(visuals))
  try:
    pair = tokenize_preference(tokenizer, prompt, *texts[1:])
  except ValueError as e:
    raise BadRecord(str(e)) from None
  examples = [_expand(ids, labels, visuals, index, cfg) for ids, labels in pair]
  return {key: np.stack([e[key] for e in examples]) for key in examples[0]}


def _expand(ids: np.ndarray, labels: np.ndarray, visuals: list, index: int, cfg: ExampleConfig) -> dict[str, Any]:
  """The fixed-shape example of tokenised text with markers and its visual inputs; raises BadRecord."""
  markers = int(np.sum(ids == IMAGE_MARKER))
  if markers != len(visuals):
    raise BadRecord(f"{markers} <image> markers in the text for {len(visuals)} visual inputs")
  patches = sum(item.num_patches for item, _ in visuals)
  if patches > cfg.max_patches:
    raise BadRecord(f"needs {patches} patches; the budget is {cfg.max_patches} per sample (data.patches_per_sample)")

  # Expand each marker into its item's tokens; their taps index this sample's stacked patches, newline last.
  table_newline = cfg.max_patches * cfg.layout.tokens_per_side**2
  out_ids, out_labels, srcs, weights, dests = [], [], [], [], []
  offset, queue = 0, iter(visuals)
  for token, label in zip(ids.tolist(), labels.tolist()):
    if token != IMAGE_MARKER:
      out_ids.append(token)
      out_labels.append(label)
      continue
    item, _ = next(queue)
    src, weight = item_layout(item, cfg.layout)
    srcs.append(np.where(src < 0, table_newline, src + offset))
    weights.append(weight)
    dests.append(len(out_ids) + np.arange(len(src)))
    offset += item.num_patches * cfg.layout.tokens_per_side**2
    placeholder = cfg.video_token_id if item.kind == "video" else cfg.image_token_id
    out_ids += [placeholder] * len(src)
    out_labels += [IGNORE] * len(src)

  example = empty_example(index, cfg)
  length = min(len(out_ids), cfg.max_length)
  example["input_ids"][:length] = out_ids[:length]
  example["labels"][:length] = out_labels[:length]
  example["attention_mask"][:length] = 1
  example["positions"][:] = np.arange(cfg.max_length)
  example["truncated"] = np.int32(len(out_ids) > cfg.max_length)
  example["bad"] = np.int32(0)
  if visuals:
    pixels = np.concatenate([p for _, p in visuals])
    example["pixels"][:len(pixels)] = pixels
    src, weight, dest = np.concatenate(srcs), np.concatenate(weights), np.concatenate(dests)
    kept = dest < cfg.max_length   # visual tokens cut off by truncation are dropped with the text
    count = int(kept.sum())
    example["visual_src"][:count] = src[kept]
    example["visual_weight"][:count] = weight[kept]
    example["visual_dest"][:count] = dest[kept]
  return example


def empty_example(index: int, cfg: ExampleConfig) -> dict[str, Any]:
  """An example with nothing to learn (no labels, no tokens): the stand-in for a bad record."""
  length, side = cfg.max_length, cfg.processor.size
  return dict(
      input_ids=np.full(length, cfg.pad_token_id, np.int32), labels=np.full(length, IGNORE, np.int32),
      attention_mask=np.zeros(length, np.int32), positions=np.arange(length, dtype=np.int32),
      pixels=np.zeros((cfg.max_patches, side, side, 3), np.float32),
      visual_src=np.zeros((length, 4), np.int32), visual_weight=np.zeros((length, 4), np.float32),
      visual_dest=np.full(length, length, np.int32),
      index=np.int32(index), truncated=np.int32(0), bad=np.int32(1))
