"""The shapes world: a procedurally drawn stand-in for UnifiedReward's preference data, for the demo and tests.

Images (image_size², RGB PNG) show one or two shapes (circle, square, triangle), each in its own plain colour, on a
mid-grey background; videos are folders of `num_frames` PNG frames of one shape crossing the frame left, right, up
or down. Records are LLaVA training records in the official format, prompts from `reward.prompts` (default wording),
targets the official verdict or `Final Score:` line, plus ground truth the training reader ignores: "task", "mode",
and "winner" (1 | 2) or "score". The user turn opens with one "<image>\n" per visual input as LLaVA-NeXT's trainer
counts them and rewrites them (`train.py::_get_item`): one per image, one per video, where a video pair's frames
are one video to it; not the inference scripts' one per frame (`prompts.image_markers`). An image pair's two markers
are "<image>\n <image>\n", as in the official HPD/OIP records and scripts.

What each task asks and how its target follows from what was drawn:
  image_generation    caption "a red circle and a blue square". pair: the faithful image against one with one
                      mistake (a wrong colour, a wrong shape or a missing shape), the faithful one in a random position.
                      point: an image with 0..n mistakes (n shapes, at most one each); one line per caption element,
                      "circle (object): 1" / "red (color): 0", then Final Score = 1 + 4·right/all (1..5).
  video_generation    caption "a red circle moving right". pair: faithful against one wrong direction, colour or shape.
                      point: 0..3 of those mistakes, c = right elements of 3; the five official dimensions with
                      text-to-video alignment 1 + c (the others 4), then Final Score = 1 + 3c (1, 4, 7, 10).
  image_understanding "What color is the circle?", "Which shape is red?", "How many shapes are there?". pair: the
                      right answer against a wrong one; point: one answer, Final Score 100 if right, else 0.
  video_understanding "Which direction does the circle move?", "What color is the circle?"; point: 5 if right, else 1.
Pairwise targets are the verdict sentence alone; pointwise ones keep to the lines the official format asks for.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import string

import numpy as np
import tokenizers
from PIL import Image, ImageDraw

from ureward_jax.reward import prompts

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30),
          "purple": (140, 60, 180), "orange": (245, 130, 20)}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
# Mid-grey is the zero of SigLIP's pixel normalisation: background patches embed to (almost) nothing, so what a
# model trained from scratch sees first in a patch is the shape in it.
BACKGROUND = (128, 128, 128)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"   # no record writes it; a model trained from scratch takes its video placeholder id here
UNKNOWN_TOKEN = "[UNK]"
# The roles and system message of the qwen_1_5 chat format wrapped around every record.
_CHAT_TEXT = "system user assistant You are a helpful assistant."
_VIDEO_DIMENSIONS = ("visual quality", "temporal consistency", "dynamic degree", "text-to-video alignment",
                     "factual consistency")


@dataclasses.dataclass(frozen=True)
class _Shape:
  """One drawn shape: its colour and kind, and its bounding box (x, y of the top-left corner, side), in pixels."""
  color: str
  kind: str
  x: int
  y: int
  size: int


def _pick(rng: np.random.Generator, choices):
  return choices[int(rng.integers(len(choices)))]


def _draw(shapes, image_size: int) -> Image.Image:
  """An RGB image with `shapes` (None entries are left out) on the background; no anti-aliasing, exact colours."""
  image = Image.new("RGB", (image_size, image_size), BACKGROUND)
  draw = ImageDraw.Draw(image)
  for s in shapes:
    if s is None:
      continue
    box = (s.x, s.y, s.x + s.size - 1, s.y + s.size - 1)
    if s.kind == "circle":
      draw.ellipse(box, fill=COLORS[s.color])
    elif s.kind == "square":
      draw.rectangle(box, fill=COLORS[s.color])
    else:
      draw.polygon([(s.x + (s.size - 1) / 2, s.y), (s.x, box[3]), (box[2], box[3])], fill=COLORS[s.color])
  return image


def _scene(rng: np.random.Generator, image_size: int) -> tuple[_Shape, ...]:
  """One or two shapes of distinct kinds and colours; two split the image into halves, one shape in each."""
  count = int(rng.integers(1, 3))
  kinds = rng.permutation(len(SHAPES))[:count]
  colors = rng.permutation(len(COLORS))[:count]
  vertical = bool(rng.integers(2))
  span = image_size // count
  largest = min(round(0.42 * image_size), span - 2)
  shapes = []
  for i in range(count):
    size = int(rng.integers(min(round(0.28 * image_size), largest), largest + 1))
    along = i * span + int(rng.integers(1, span - size))
    across = int(rng.integers(1, image_size - size))
    x, y = (across, along) if vertical else (along, across)
    shapes.append(_Shape(list(COLORS)[colors[i]], SHAPES[kinds[i]], x, y, size))
  return tuple(shapes)


def _mistake(rng: np.random.Generator, truth, drawn, slot: int):
  """`drawn` with shape `slot` dropped (None) or given a colour or kind that neither `truth` nor `drawn` shows.

  Fresh values keep every caption element either in its own place or absent from the image, so an element's
  presence in the pixels is its ground truth.
  """
  shapes = [s for s in truth + drawn if s is not None]
  colors = [c for c in COLORS if c not in {s.color for s in shapes}]
  kinds = [k for k in SHAPES if k not in {s.kind for s in shapes}]
  mistake = _pick(rng, ["missing", "color"] + (["kind"] if kinds else []))
  changed = None if mistake == "missing" else dataclasses.replace(
      drawn[slot], **{mistake: _pick(rng, colors if mistake == "color" else kinds)})
  return drawn[:slot] + (changed,) + drawn[slot + 1:]


def _a(word: str) -> str:
  return ("an " if word[0] in "aeiou" else "a ") + word


def _caption(scene) -> str:
  return " and ".join(_a(f"{s.color} {s.kind}") for s in scene)


def _elements(truth, drawn) -> list[tuple[str, str, int]]:
  """(word, type, 0 | 1) for each element of the caption of `truth`, checked against the shapes `drawn`."""
  out = []
  for want, got in zip(truth, drawn):
    out.append((want.kind, "object", int(got is not None and got.kind == want.kind)))
    out.append((want.color, "color", int(got is not None and got.color == want.color)))
  return out


def _element_target(elements) -> tuple[str, int]:
  score = 1 + 4 * sum(v for _, _, v in elements) // len(elements)
  return "".join(f"{word} ({kind}): {v}\n" for word, kind, v in elements) + f"Final Score: {score}", score


@dataclasses.dataclass(frozen=True)
class _Video:
  """One shape crossing the frame: its colour, kind and direction, its coordinate across the motion and its side."""
  color: str
  kind: str
  direction: str
  across: int
  size: int

  def frames(self, image_size: int, num_frames: int) -> list[Image.Image]:
    """The shape's box moves from one edge to the other (1-pixel margin) in equal steps."""
    far = image_size - self.size - 1
    start, end = (1, far) if self.direction in ("right", "down") else (far, 1)
    out = []
    for along in np.linspace(start, end, num_frames).round().astype(int):
      x, y = (int(along), self.across) if self.direction in ("left", "right") else (self.across, int(along))
      out.append(_draw([_Shape(self.color, self.kind, x, y, self.size)], image_size))
    return out

  def caption(self) -> str:
    return _a(f"{self.color} {self.kind} moving {self.direction}")


def _random_video(rng: np.random.Generator, image_size: int) -> _Video:
  size = int(rng.integers(round(0.28 * image_size), round(0.38 * image_size) + 1))
  return _Video(_pick(rng, list(COLORS)), _pick(rng, SHAPES), _pick(rng, DIRECTIONS),
                int(rng.integers(1, image_size - size)), size)


def _video_mistake(rng: np.random.Generator, video: _Video, field: str) -> _Video:
  options = {"color": list(COLORS), "kind": list(SHAPES), "direction": list(DIRECTIONS)}[field]
  return dataclasses.replace(video, **{field: _pick(rng, [o for o in options if o != getattr(video, field)])})


class _Writer:
  """Writes one task × mode's media under out_dir/media/<split>/<folder: task_mode>/ and builds its records."""

  def __init__(self, out_dir: pathlib.Path, split: str, seed: int, task: str, mode: str, num_frames: int,
               folder: str = ""):
    self.out_dir, self.task, self.mode, self.num_frames = out_dir, task, mode, num_frames
    self.prefix = f"media/{split}/{folder or f'{task}_{mode}'}"
    self.id_prefix = f"shapes-{split}-{seed}-{task}-{mode}"
    (out_dir / self.prefix).mkdir(parents=True, exist_ok=True)

  def image(self, image: Image.Image, name: str) -> str:
    path = f"{self.prefix}/{name}.png"
    image.save(self.out_dir / path)
    return path

  def video(self, frames: list[Image.Image], name: str) -> list[str]:
    """Saves the frames as <name>/frame_000.png, ...; returns their paths (the folder is their parent)."""
    (self.out_dir / self.prefix / name).mkdir(exist_ok=True)
    paths = [f"{self.prefix}/{name}/frame_{j:03d}.png" for j in range(len(frames))]
    for frame, path in zip(frames, paths):
      frame.save(self.out_dir / path)
    return paths

  def record(self, index: int, media: dict, target: str, truth: dict, **fields: str) -> dict:
    markers = 2 if len(media.get("images", ())) == 2 else 1
    # An image pair's markers are spaced as the official records and scripts space them ("<image>\n <image>\n").
    space = markers == 2 and prompts.template(self.task, self.mode).space_between_inputs
    human = prompts.user_turn(prompts.render(self.task, self.mode, **fields), markers, space)
    return {"id": f"{self.id_prefix}-{index:06d}", **media,
            "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": target}],
            "task": self.task, "mode": self.mode, **truth}


def _folder(frame_paths: list[str]) -> str:
  return frame_paths[0].rsplit("/", 1)[0]


def _verdict(task: str, winner: int) -> str:
  return prompts.template(task, "pair").verdicts[winner]


def _image_generation(rng, w: _Writer, i: int, image_size: int) -> dict:
  truth = _scene(rng, image_size)
  if w.mode == "pair":
    wrong = _mistake(rng, truth, truth, int(rng.integers(len(truth))))
    winner = int(rng.integers(1, 3))
    first, second = (truth, wrong) if winner == 1 else (wrong, truth)
    paths = [w.image(_draw(first, image_size), f"{i:06d}_1"), w.image(_draw(second, image_size), f"{i:06d}_2")]
    return w.record(i, {"images": paths}, _verdict(w.task, winner), {"winner": winner}, caption=_caption(truth))
  drawn = truth
  for slot in rng.permutation(len(truth))[:int(rng.integers(len(truth) + 1))]:
    drawn = _mistake(rng, truth, drawn, int(slot))
  target, score = _element_target(_elements(truth, drawn))
  path = w.image(_draw(drawn, image_size), f"{i:06d}")
  return w.record(i, {"image": path}, target, {"score": score}, caption=_caption(truth))


def _video_generation(rng, w: _Writer, i: int, image_size: int) -> dict:
  truth = _random_video(rng, image_size)
  fields = ["direction", "color", "kind"]
  if w.mode == "pair":
    wrong = _video_mistake(rng, truth, _pick(rng, fields))
    winner = int(rng.integers(1, 3))
    first, second = (truth, wrong) if winner == 1 else (wrong, truth)
    paths = [path for k, video in ((1, first), (2, second))
             for path in w.video(video.frames(image_size, w.num_frames), f"{i:06d}_{k}")]
    return w.record(i, {"images": paths}, _verdict(w.task, winner), {"winner": winner}, caption=truth.caption())
  wrong_fields = [fields[k] for k in rng.permutation(3)[:int(rng.integers(4))]]
  drawn = truth
  for field in wrong_fields:
    drawn = _video_mistake(rng, drawn, field)
  right = 3 - len(wrong_fields)
  scores = dict.fromkeys(_VIDEO_DIMENSIONS, 4) | {"text-to-video alignment": 1 + right}
  target = "".join(f"{name}: {v}\n" for name, v in scores.items()) + f"Final Score: {1 + 3 * right}"
  folder = _folder(w.video(drawn.frames(image_size, w.num_frames), f"{i:06d}"))
  return w.record(i, {"video": folder}, target, {"score": 1 + 3 * right}, caption=truth.caption())


def _image_question(rng, scene) -> tuple[str, str, str]:
  """(question, right answer, wrong answer) about `scene`."""
  shape = _pick(rng, scene)
  kind = _pick(rng, ("color", "shape", "count"))
  if kind == "color":
    wrong = _pick(rng, [c for c in COLORS if c != shape.color])
    return f"What color is the {shape.kind}?", f"The {shape.kind} is {shape.color}.", f"The {shape.kind} is {wrong}."
  if kind == "shape":
    wrong = _pick(rng, [k for k in SHAPES if k != shape.kind])
    return f"Which shape is {shape.color}?", f"The {shape.color} shape is a {shape.kind}.", (
        f"The {shape.color} shape is a {wrong}.")
  wrong = _pick(rng, [n for n in (1, 2, 3) if n != len(scene)])
  return "How many shapes are there?", _count_sentence(len(scene)), _count_sentence(wrong)


def _count_sentence(n: int) -> str:
  return "There is 1 shape." if n == 1 else f"There are {n} shapes."


def _video_question(rng, video: _Video) -> tuple[str, str, str]:
  if rng.integers(2):
    wrong = _pick(rng, [d for d in DIRECTIONS if d != video.direction])
    return (f"Which direction does the {video.kind} move?", f"The {video.kind} moves {video.direction}.",
            f"The {video.kind} moves {wrong}.")
  wrong = _pick(rng, [c for c in COLORS if c != video.color])
  return f"What color is the {video.kind}?", f"The {video.kind} is {video.color}.", f"The {video.kind} is {wrong}."


def _question_item(rng, w: _Writer, i: int, image_size: int) -> tuple[dict, str, str, str]:
  """(media, question, right answer, wrong answer) of one drawn image or video of an understanding task."""
  if w.task == "image_understanding":
    scene = _scene(rng, image_size)
    question, right, wrong = _image_question(rng, scene)
    return {"image": w.image(_draw(scene, image_size), f"{i:06d}")}, question, right, wrong
  video = _random_video(rng, image_size)
  question, right, wrong = _video_question(rng, video)
  return {"video": _folder(w.video(video.frames(image_size, w.num_frames), f"{i:06d}"))}, question, right, wrong


def _understanding(rng, w: _Writer, i: int, image_size: int) -> dict:
  media, question, right, wrong = _question_item(rng, w, i, image_size)
  if w.mode == "pair":
    winner = int(rng.integers(1, 3))
    first, second = (right, wrong) if winner == 1 else (wrong, right)
    return w.record(i, media, _verdict(w.task, winner), {"winner": winner}, question=question, response_1=first,
                    response_2=second)
  correct = bool(rng.integers(2))
  low, high = prompts.template(w.task, "point").score_range
  score = high if correct else low
  target = f"The response is {'right' if correct else 'wrong'}: {right}\nFinal Score: {score}"
  return w.record(i, media, target, {"score": score}, question=question, response=right if correct else wrong)


_MAKERS = {"image_generation": _image_generation, "video_generation": _video_generation,
           "image_understanding": _understanding, "video_understanding": _understanding}


def generate(out_dir, num_per_task: int = 256, split: str = "train", seed: int = 0, image_size: int = 32,
             num_frames: int = 4) -> dict[str, int]:
  """Writes `num_per_task` records for every task × mode; returns {"<task>_<mode>": record count}.

  Layout under out_dir: media/<split>/<task>_<mode>/ (PNGs; a video is a folder of frame_000.png, ...),
  <split>/<task>_<mode>.json (a JSON list of records, paths relative to out_dir) and <split>.yaml, the mixture in
  the form of UnifiedReward's dataset/train_data.yaml (paths relative to out_dir, the folder holding it). Each
  (seed, split, task, mode) draws from its own random stream; the same arguments write byte-identical files.
  A record names its media as "image" (one PNG), "images" (the two images of a generation pair, or both videos'
  frames, first video first) or "video" (a frame folder).
  """
  out_dir = pathlib.Path(out_dir)
  (out_dir / split).mkdir(parents=True, exist_ok=True)
  counts, entries = {}, []
  for t, task in enumerate(prompts.TASKS):
    for m, mode in enumerate(prompts.MODES):
      rng = np.random.default_rng([seed, t, m, len(split), *split.encode()])
      writer = _Writer(out_dir, split, seed, task, mode, num_frames)
      records = [_MAKERS[task](rng, writer, i, image_size) for i in range(num_per_task)]
      name = f"{split}/{task}_{mode}.json"
      (out_dir / name).write_text(json.dumps(records, indent=1) + "\n")
      counts[f"{task}_{mode}"] = len(records)
      entries.append(f"  - json_path: {name}\n    sampling_strategy: all\n    image_folder: .\n")
  (out_dir / f"{split}.yaml").write_text("datasets:\n" + "".join(entries))
  return counts


def generate_preference(out_dir, num_per_task: int = 256, split: str = "train", seed: int = 0, image_size: int = 32,
                        num_frames: int = 4) -> dict[str, int]:
  """Writes DPO records for image and video understanding: the right answer chosen, a wrong one rejected.

  Layout under out_dir: media/<split>/<task>_dpo/, <split>/<task>_dpo.json (records in the form `ureward
  build-pairs` writes: {"id", "image" | "video", "prompt", "chosen", "rejected"}, paths relative to out_dir) and
  <split>_dpo.yaml, the mixture of both; returns {"<task>_dpo": record count}. Same arguments, byte-identical files.
  """
  out_dir = pathlib.Path(out_dir)
  (out_dir / split).mkdir(parents=True, exist_ok=True)
  counts = {}
  for t, task in enumerate(("image_understanding", "video_understanding")):
    rng = np.random.default_rng([seed, t, 7, len(split), *split.encode()])
    writer = _Writer(out_dir, split, seed, task, "dpo", num_frames)
    records = []
    for i in range(num_per_task):
      media, question, right, wrong = _question_item(rng, writer, i, image_size)
      records.append({"id": f"{writer.id_prefix}-{i:06d}", **media, "prompt": question, "chosen": right,
                      "rejected": wrong})
    (out_dir / f"{split}/{task}_dpo.json").write_text(json.dumps(records, indent=1) + "\n")
    counts[f"{task}_dpo"] = len(records)
  (out_dir / f"{split}_dpo.yaml").write_text("datasets:\n" + "".join(
      f"  - json_path: {split}/{name}.json\n    sampling_strategy: all\n    image_folder: .\n" for name in counts))
  return counts


def _world_texts() -> list[str]:
  """Every word a record of the world can hold, in the positions they take (a sample of each sentence form)."""
  words = [*COLORS, *SHAPES, *DIRECTIONS, *string.digits]
  return [" ".join(words), "\n".join(words), _CHAT_TEXT, _Video("red", "circle", "right", 1, 8).caption(),
          _caption([_Shape("orange", "circle", 0, 0, 1)] * 2),
          _element_target([("circle", "object", 1), ("red", "color", 0)])[0],
          "".join(f"{name}: 4\n" for name in _VIDEO_DIMENSIONS),
          "The response is right: The response is wrong:",
          "What color is the circle? Which shape is red? The red shape is a circle. The circle is red.",
          "How many shapes are there? There is 1 shape. There are 2 shapes.",
          "Which direction does the circle move? The circle moves right.",
          # The base VLM's dialogues (`shapes_base`).
          "Describe the image. Describe the first video. Is there a circle? Is anything red? Yes. No.",
          "Describe the second image. Which image has a red circle? Which video shows Both. The first. Neither."]


def _wording_phrases() -> list[str]:
  """The fixed stretches of every official wording (its text between fields, two words or more) and its verdicts."""
  phrases = set()
  for task in prompts.TASKS:
    for mode in prompts.MODES:
      for variant in prompts.variants(task, mode):
        t = prompts.template(task, mode, variant)
        phrases.update(text for text, _, _, _ in string.Formatter().parse(t.text) if len(text.split()) > 1)
        phrases.update((t.verdicts or {}).values())
  return sorted(phrases)


def _template_texts() -> list[str]:
  """Every official wording and verdict, fields left empty."""
  texts = []
  for task in prompts.TASKS:
    for mode in prompts.MODES:
      for variant in prompts.variants(task, mode):
        t = prompts.template(task, mode, variant)
        texts.append(prompts.render(task, mode, variant, **dict.fromkeys(t.fields, "")))
        texts.extend((t.verdicts or {}).values())
  return texts


def shapes_tokenizer() -> tokenizers.Tokenizer:
  """A word-level tokenizer for the shapes world: every word of the world and of the official wordings, ~1k ids.

  Each fixed stretch of an official wording and each verdict sentence is also one added token, matched whole before
  pre-tokenisation: a reward prompt is its fields' words and a handful of ids (~30 tokens besides the visual ones, not
  ~400), so a tiny model spends its compute on the images and the fields, and a pairwise verdict is one token.
  Pre-tokenisation: "\\n" alone; spaces become "▁" joined to the next word (so decoding restores them exactly);
  punctuation and digits one character each. Every word is in the vocabulary with and without its "▁", so any
  arrangement of known words encodes without `[UNK]` (id 0, what unknown words become). The Qwen chat tokens
  `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` are special tokens and `<image>`, `<video>` added ones, all matched before
  pre-tokenisation. Save with `tokenizer.save(path)`, load with `tokenizers.Tokenizer.from_file(path)`.
  """
  pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
      tokenizers.pre_tokenizers.Split("\n", behavior="isolated"),
      tokenizers.pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True),
      tokenizers.pre_tokenizers.Punctuation(behavior="isolated"),
      tokenizers.pre_tokenizers.Digits(individual_digits=True),
  ])
  pieces = set()
  for text in _template_texts() + _world_texts():
    for piece, _ in pre_tokenizer.pre_tokenize_str(text):
      word = piece.removeprefix("▁")
      pieces.update({piece, word, "▁" + word} if word.isalnum() else {piece})
  vocab = {UNKNOWN_TOKEN: 0} | {piece: i + 1 for i, piece in enumerate(sorted(pieces))}
  tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token=UNKNOWN_TOKEN))
  tokenizer.pre_tokenizer = pre_tokenizer
  tokenizer.decoder = tokenizers.decoders.Metaspace(replacement="▁", prepend_scheme="never", split=True)
  tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
  tokenizer.add_tokens([IMAGE_TOKEN, VIDEO_TOKEN])
  tokenizer.add_tokens(_wording_phrases())
  return tokenizer
