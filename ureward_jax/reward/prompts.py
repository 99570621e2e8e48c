"""The UnifiedReward prompt templates (LLaVA checkpoints), per task × mode × variant: the official wordings, kept
verbatim from CodeGoat24/UnifiedReward at commit ff6f520 in `generation_wordings` and `understanding_wordings` (the
model answers differently to small wording changes), with the verdict sentences and score ranges each asks for.

Variants, by where the official code uses a wording:
  default  the reference inference scripts `inference_llava/<task>/{pair_rank,point_score}_<task>.py`, which are the
           wording of the training records too.
  eval     the benchmark scripts of `benchmark_evaluation/LLaVA_evaluation/`, pairwise only: VL-RewardBench (image
           understanding, "Answer 1 is better"), GenAI-Bench video (video generation, "Video 1 is better"), the
           video-understanding assessment script. GenAI-Bench image and VideoGen-RewardBench use the default wording.
  dpo      the preference-data sifting scripts: `DiffusionDPO/sift_dpo_data.py`, `VideoDPO/sift_dpo_data.py`,
           `preference_data_construction/{image,video}_understanding/infer+sift.py` ("Overall Judgment", 1–10 scores).

Fields: {caption} for generation; {question} with {response} (point) or {response_1}, {response_2} (pair) for
understanding. Texts carry no `<image>` markers: `image_markers` counts what the scripts prepend and `user_turn`
prepends them, spacing included.
"""

from __future__ import annotations

import dataclasses
import string
import types
from typing import Mapping

from ureward_jax.errors import UserError
from ureward_jax.reward import generation_wordings, understanding_wordings

TASKS = ("image_generation", "video_generation", "image_understanding", "video_understanding")
MODES = ("pair", "point")
_MARKER = "<image>\n"


@dataclasses.dataclass(frozen=True)
class Template:
  """One official wording.

  text: a `str.format` text with named fields. verdicts (pair): {1: first input wins, 2: second wins, 0: tie, where
  the wording names one} → the sentence the model is asked to emit. score_range (point): the (lowest, highest)
  `Final Score:` the wording asks for. space_between_inputs: the script writes " " before the second input's first
  `<image>` marker.
  """
  text: str
  verdicts: Mapping[int, str] | None = None
  score_range: tuple[int, int] | None = None
  space_between_inputs: bool = False

  @property
  def fields(self) -> tuple[str, ...]:
    return tuple(name for _, name, _, _ in string.Formatter().parse(self.text) if name)



def _verdicts(first: str, second: str, tie: str | None = None) -> Mapping[int, str]:
  return types.MappingProxyType({1: first, 2: second} | ({0: tie} if tie else {}))


_IMAGES = _verdicts("Image 1 is better than Image 2.", "Image 2 is better than Image 1.",
                    "Both images are equally good.")
_VIDEOS = _verdicts("Video 1 is better than Video 2.", "Video 2 is better than Video 1.",
                    "Both videos are equally good.")
# The default understanding wordings name no verdict sentence; this is the form of the official assessment data
# (test_llava_video_understanding_assessment.py), matching the "Response 1 / Response 2" labels.
_RESPONSES = _verdicts("Response 1 is better than Response 2.", "Response 2 is better than Response 1.")
_JUDGMENT_THAN = _verdicts("Overall Judgment: Answer 1 is better than Answer 2.",
                           "Overall Judgment: Answer 2 is better than Answer 1.")

# Wordings shared by several variants.
_IMAGE_PAIR = Template(generation_wordings.IMAGE_PAIR, _IMAGES, space_between_inputs=True)
_IMAGE_UNDERSTANDING_POINT_TEMPLATE = Template(understanding_wordings.IMAGE_POINT, score_range=(0, 100))

_TEMPLATES: dict[tuple[str, str], dict[str, Template]] = {
    ("image_generation", "pair"): {
        "default": _IMAGE_PAIR,
        "eval": _IMAGE_PAIR,
        "dpo": _IMAGE_PAIR,
    },
    ("image_generation", "point"): {
        "default": Template(generation_wordings.IMAGE_POINT, score_range=(1, 5)),
        "dpo": Template(generation_wordings.IMAGE_POINT_SIFT, score_range=(1, 10)),
    },
    ("video_generation", "pair"): {
        "default": Template(generation_wordings.VIDEO_PAIR, _VIDEOS),
        "eval": Template(generation_wordings.VIDEO_PAIR_GENAI_BENCH,
                         _verdicts("Video 1 is better", "Video 2 is better", "Both videos are equally good.")),
        # VideoDPO's script spells its 16 markers out, with a space before the second video's first frame.
        "dpo": Template(generation_wordings.VIDEO_PAIR, _VIDEOS, space_between_inputs=True),
    },
    ("video_generation", "point"): {
        "default": Template(generation_wordings.VIDEO_POINT, score_range=(1, 10)),
        "dpo": Template(generation_wordings.VIDEO_POINT_SIFT, score_range=(1, 10)),
    },
    ("image_understanding", "pair"): {
        "default": Template(understanding_wordings.IMAGE_PAIR, _RESPONSES),
        "eval": Template(understanding_wordings.IMAGE_PAIR_VL_REWARDBENCH,
                         _verdicts("Answer 1 is better", "Answer 2 is better")),
        "dpo": Template(understanding_wordings.IMAGE_PAIR_SIFT,
                        _verdicts("Overall Judgment: Answer 1 is better.", "Overall Judgment: Answer 2 is better.")),
    },
    ("image_understanding", "point"): {
        "default": _IMAGE_UNDERSTANDING_POINT_TEMPLATE,
        "dpo": _IMAGE_UNDERSTANDING_POINT_TEMPLATE,
    },
    ("video_understanding", "pair"): {
        "default": Template(understanding_wordings.VIDEO_PAIR, _RESPONSES),
        "eval": Template(understanding_wordings.VIDEO_PAIR_ASSESSMENT, _JUDGMENT_THAN),
        "dpo": Template(understanding_wordings.VIDEO_PAIR_SIFT, _JUDGMENT_THAN),
    },
    ("video_understanding", "point"): {
        "default": Template(understanding_wordings.VIDEO_POINT, score_range=(1, 5)),
        "dpo": Template(understanding_wordings.VIDEO_POINT_SIFT, score_range=(1, 5)),
    },
}


def _check(task: str, mode: str) -> None:
  if task not in TASKS:
    raise UserError(f"unknown task {task!r}; expected one of {TASKS}")
  if mode not in MODES:
    raise UserError(f"unknown mode {mode!r}; expected one of {MODES}")


def variants(task: str, mode: str) -> tuple[str, ...]:
  """The wordings the official code has for `task` × `mode`, "default" first."""
  _check(task, mode)
  return tuple(_TEMPLATES[task, mode])


def template(task: str, mode: str, variant: str = "default") -> Template:
  """The official wording of `task` × `mode` in `variant`; ValueError naming the choices for anything unknown."""
  if variant not in variants(task, mode):
    raise UserError(f"no {variant!r} wording for {task} {mode}; expected one of {variants(task, mode)}")
  return _TEMPLATES[task, mode][variant]


def render(task: str, mode: str, variant: str = "default", **fields: str) -> str:
  """The prompt text, without `<image>` markers, with every field of the template filled.

  ValueError when a field is missing or not one of the template's.
  """
  expected = template(task, mode, variant).fields
  missing = [name for name in expected if name not in fields]
  unexpected = sorted(set(fields) - set(expected))
  if missing or unexpected:
    raise UserError(f"the {task} {mode} ({variant}) prompt takes fields {expected}; "
                    f"missing {missing}, unexpected {unexpected}")
  return template(task, mode, variant).text.format(**fields)


def image_markers(task: str, mode: str, num_frames: int = 8) -> int:
  """How many `<image>` markers the official scripts prepend: one per image, one per frame of each video.

  Pairwise generation shows two images or two videos; everything else one image or one video.
  """
  _check(task, mode)
  per_input = num_frames if task.startswith("video") else 1
  return per_input * (2 if mode == "pair" and task.endswith("generation") else 1)


def user_turn(text: str, markers: int, space_between_inputs: bool = False) -> str:
  """`text` after `markers` × "<image>\\n", as the official scripts build the user message.

  space_between_inputs (see `Template`): the image-pair scripts write "<image>\\n <image>\\n" and VideoDPO's sifting
  script a space before its ninth of 16 markers; the space is in the tokenised text, so it is kept. Needs an even,
  positive `markers`: the second half belongs to the second input.
  """
  if not space_between_inputs:
    return _MARKER * markers + text
  if markers <= 0 or markers % 2:
    raise UserError(f"space_between_inputs needs a positive even number of markers, got {markers}")
  return _MARKER * (markers // 2) + " " + _MARKER * (markers // 2) + text
