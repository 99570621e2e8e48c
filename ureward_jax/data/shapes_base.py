"""The shapes world's dialogues for the demo's base VLM: its images and videos described and questioned, one at a
time and in pairs, before the base is fine-tuned into the reward model (`configs/demo_base.py`).

Records are LLaVA multi-turn conversations ({"id", "image" | "images" | "video", "conversations"}), drawn from the
same scenes, videos and mistakes as the reward records of `shapes`; every answer is true of the pixels.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from ureward_jax.data import shapes
from ureward_jax.reward import prompts

DESCRIBE_IMAGE, DESCRIBE_VIDEO = "Describe the image.", "Describe the video."


def _presence_question(rng, colors: set[str], kinds: set[str]) -> tuple[str, str]:
  """A yes/no question on whether a colour or a kind is in the picture, yes half the time."""
  if rng.integers(2):
    kind = shapes._pick(rng, shapes.SHAPES)
    return f"Is there a {kind}?", "Yes." if kind in kinds else "No."
  color = shapes._pick(rng, list(shapes.COLORS))
  return f"Is anything {color}?", "Yes." if color in colors else "No."


def _base_image(rng, w: shapes._Writer, i: int, image_size: int, turns: int) -> dict:
  scene = shapes._scene(rng, image_size)
  dialogue = [(DESCRIBE_IMAGE, shapes._caption(scene))]
  for _ in range(turns - 1):
    if rng.integers(2):
      dialogue.append(_presence_question(rng, {s.color for s in scene}, {s.kind for s in scene}))
    else:
      dialogue.append(shapes._image_question(rng, scene)[:2])
  return _dialogue(w, i, {"image": w.image(shapes._draw(scene, image_size), f"{i:06d}")}, dialogue)


def _base_video(rng, w: shapes._Writer, i: int, image_size: int, turns: int) -> dict:
  video = shapes._random_video(rng, image_size)
  dialogue = [(DESCRIBE_VIDEO, video.caption())]
  for _ in range(turns - 1):
    if rng.integers(2):
      dialogue.append(_presence_question(rng, {video.color}, {video.kind}))
    else:
      dialogue.append(shapes._video_question(rng, video)[:2])
  folder = shapes._folder(w.video(video.frames(image_size, w.num_frames), f"{i:06d}"))
  return _dialogue(w, i, {"video": folder}, dialogue)


_WHICH = {(True, True): "Both.", (True, False): "The first.", (False, True): "The second.", (False, False): "Neither."}


def _base_image_pair(rng, w: shapes._Writer, i: int, image_size: int, turns: int) -> dict:
  """Two images, the second one mistake away from the first (as a generation pair's are), in random order: each
  described, then which of them shows a shape of either (or a random one)."""
  truth = shapes._scene(rng, image_size)
  pair = [truth, shapes._mistake(rng, truth, truth, int(rng.integers(len(truth))))]
  if rng.integers(2):
    pair.reverse()
  paths = [w.image(shapes._draw(scene, image_size), f"{i:06d}_{k}") for k, scene in enumerate(pair, 1)]
  shown = [{(s.color, s.kind) for s in scene if s is not None} for scene in pair]
  dialogue = [(f"Describe the {nth} image.", shapes._caption([s for s in scene if s is not None]))
              for nth, scene in zip(("first", "second"), pair)]
  candidates = sorted(shown[0] ^ shown[1]) + sorted(shown[0] & shown[1])
  for _ in range(turns - 2):
    color, kind = (shapes._pick(rng, candidates) if rng.random() < 0.8 else
                   (shapes._pick(rng, list(shapes.COLORS)), shapes._pick(rng, shapes.SHAPES)))
    dialogue.append((f"Which image has {shapes._a(f'{color} {kind}')}?", _WHICH[(color, kind) in shown[0],
                                                                            (color, kind) in shown[1]]))
  return _dialogue(w, i, {"images": paths}, dialogue, markers=2)


def _base_video_pair(rng, w: shapes._Writer, i: int, image_size: int, turns: int) -> dict:
  """Two videos one mistake apart, in random order, as one visual input of both videos' frames (as a pair's are):
  each described, then which of them shows either caption (or a random one)."""
  truth = shapes._random_video(rng, image_size)
  pair = [truth, shapes._video_mistake(rng, truth, shapes._pick(rng, ["direction", "color", "kind"]))]
  if rng.integers(2):
    pair.reverse()
  paths = [path for k, video in enumerate(pair, 1)
           for path in w.video(video.frames(image_size, w.num_frames), f"{i:06d}_{k}")]
  dialogue = [(f"Describe the {nth} video.", video.caption()) for nth, video in zip(("first", "second"), pair)]
  for _ in range(turns - 2):
    asked = shapes._pick(rng, pair) if rng.random() < 0.8 else shapes._random_video(rng, image_size)
    same = [(v.color, v.kind, v.direction) == (asked.color, asked.kind, asked.direction) for v in pair]
    dialogue.append((f"Which video shows {asked.caption()}?", _WHICH[tuple(same)]))
  return _dialogue(w, i, {"images": paths}, dialogue)


def _dialogue(w: shapes._Writer, i: int, media: dict, dialogue, markers: int = 1) -> dict:
  """A multi-turn record: the markers open the first question (two spaced as an image pair's), each answer follows
  its question."""
  conversations = []
  for n, (question, answer) in enumerate(dialogue):
    conversations += [{"from": "human", "value": prompts.user_turn(question, markers, markers == 2) if n == 0 else
                       question}, {"from": "gpt", "value": answer}]
  return {"id": f"{w.id_prefix}-{i:06d}", **media, "conversations": conversations}


_BASE_MAKERS = {"base_image": _base_image, "base_video": _base_video, "base_image_pair": _base_image_pair,
                "base_video_pair": _base_video_pair}


def generate_base(out_dir, num_per_kind: int = 256, split: str = "train", seed: int = 0, image_size: int = 32,
                  num_frames: int = 4, turns: int = 4) -> dict[str, int]:
  """Writes the base VLM's records: the world's images and videos described and questioned, as dialogues.

  base_image, base_video: `turns` Q&A, the first asking for the caption the generation tasks use ("a red circle and
  a blue square", "a red circle moving right"), the others the understanding tasks' questions with their right
  answers, or whether a kind or colour is present ("Is there a square?", "Is anything red?" → "Yes." / "No.").
  base_image_pair, base_video_pair: two images (videos) one mistake apart, as a generation pair's, each described
  ("Describe the first image."), so the model learns to tell the two inputs of a pair apart.
  Layout under out_dir: media/<split>/<kind>/, <split>/<kind>.json and the mixture <split>_base.yaml; returns
  {kind: record count}. Same arguments, byte-identical files.
  """
  out_dir = pathlib.Path(out_dir)
  (out_dir / split).mkdir(parents=True, exist_ok=True)
  counts = {}
  for k, (name, make) in enumerate(_BASE_MAKERS.items()):
    rng = np.random.default_rng([seed, k, 11, len(split), *split.encode()])
    writer = shapes._Writer(out_dir, split, seed, name, "dialogue", num_frames, folder=name)
    records = [make(rng, writer, i, image_size, turns) for i in range(num_per_kind)]
    (out_dir / f"{split}/{name}.json").write_text(json.dumps(records, indent=1) + "\n")
    counts[name] = len(records)
  (out_dir / f"{split}_base.yaml").write_text("datasets:\n" + "".join(
      f"  - json_path: {split}/{name}.json\n    sampling_strategy: all\n    image_folder: .\n" for name in counts))
  return counts
