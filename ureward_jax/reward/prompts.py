"""The UnifiedReward prompt wordings (LLaVA checkpoints), per task × mode, verbatim from CodeGoat24/UnifiedReward at
commit ff6f520: the model answers differently to small wording changes.

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


_IMAGE_GENERATION_PAIR = (
    "You are given a text caption and two generated images based on that caption. Your task is to evaluate and compare "
    "these images based on two key criteria:\n"
    "1. Alignment with the Caption: Assess how well each image aligns with the provided caption. Consider the accuracy "
    "of depicted objects, their relationships, and attributes as described in the caption.\n"
    "2. Overall Image Quality: Examine the visual quality of each image, including clarity, detail preservation, color "
    "accuracy, and overall aesthetic appeal.\n"
    "Compare both images using the above criteria and select the one that better aligns with the caption while "
    "exhibiting superior visual quality.\n"
    "Provide a clear conclusion such as \"Image 1 is better than Image 2.\", \"Image 2 is better than Image 1.\" and "
    "\"Both images are equally good.\"\n"
    "Your task is provided as follows:\n"
    "Text Caption: [{caption}]"
)

_IMAGE_GENERATION_POINT = (
    "You are given a text caption and a generated image based on that caption. Your task is to evaluate this image "
    "based on two key criteria:\n"
    "1. Alignment with the Caption: Assess how well this image aligns with the provided caption. Consider the accuracy "
    "of depicted objects, their relationships, and attributes as described in the caption.\n"
    "2. Overall Image Quality: Examine the visual quality of this image, including clarity, detail preservation, color "
    "accuracy, and overall aesthetic appeal.\n"
    "Extract key elements from the provided text caption, evaluate their presence in the generated image using the "
    "format: 'element (type): value' (where value=0 means not generated, and value=1 means generated), and assign a "
    "score from 1 to 5 after 'Final Score:'.\n"
    "Your task is provided as follows:\n"
    "Text Caption: [{caption}]"
)

_VIDEO_GENERATION_PAIR = (
    "Suppose you are an expert in judging and evaluating the quality of AI-generated videos. You are given a text "
    "caption and the frames of two generated videos based on that caption. Your task is to evaluate and compare two "
    "videos based on two key criteria:\n"
    "1. Alignment with the Caption: Assess how well each video aligns with the provided caption. Consider the accuracy "
    "of depicted objects, their relationships, and attributes as described in the caption.\n"
    "2. Overall Video Quality: Examine the visual quality of each video, including clarity, detail preservation, color "
    "accuracy, and overall aesthetic appeal.\n"
    "Compare both videos using the above criteria and select the one that better aligns with the caption while "
    "exhibiting superior visual quality.\n"
    "Provide a clear conclusion such as \"Video 1 is better than Video 2.\", \"Video 2 is better than Video 1.\" and "
    "\"Both videos are equally good.\"\n"
    "Your task is provided as follows:\n"
    "Text Caption: [{caption}]"
)

_VIDEO_GENERATION_PAIR_GENAI_BENCH = (
    "Imagine you are an expert tasked with evaluating AI-generated videos. You are provided with a text caption and "
    "two videos generated based on that caption. Your job is to assess and compare these videos based on the following "
    "two main factors:\n"
    "\n"
    "1. Caption Alignment: Evaluate how closely each video matches the description provided in the caption. Pay "
    "attention to the accuracy of objects depicted, their relationships, and any attributes described in the caption.\n"
    "\n"
    "2. Overall Video Quality: Look at the overall visual appeal of each video, considering clarity, the level of "
    "detail, color accuracy, and how aesthetically pleasing the video is.\n"
    "\n"
    "Using these factors, compare the two videos and determine which one better reflects the caption and exhibits "
    "better visual quality.\n"
    "\n"
    "Give your final judgment, such as 'Video 1 is better,' 'Video 2 is better,' or 'Both videos are equally good.'\n"
    "\n"
    "Your task is as follows:\n"
    "Text Caption: [{caption}]\n"
)

# The overall 1–10 score is never trained: the VideoFeedback records have no overall label.
_VIDEO_GENERATION_POINT = (
    "Suppose you are an expert in judging and evaluating the quality of AI-generated videos, please watch the frames "
    "of a given video and see the text prompt for generating the video.\n"
    "Then give scores from 5 different dimensions:\n"
    "(1) visual quality: the quality of the video in terms of clearness, resolution, brightness, and color\n"
    "(2) temporal consistency, the consistency of objects or humans in video\n"
    "(3) dynamic degree, the degree of dynamic changes\n"
    "(4) text-to-video alignment, the alignment between the text prompt and the video content\n"
    "(5) factual consistency, the consistency of the video content with the common-sense and factual knowledge\n"
    "\n"
    "For each dimension, output a number from [1,2,3,4], \n"
    "in which '1' means 'Bad', '2' means 'Average', '3' means 'Good', \n"
    "'4' means 'Real' or 'Perfect' (the video is like a real video)\n"
    "Finally, based on above 5 dimensions, assign a score from 1 to 10 after 'Final Score:'\n"
    "Here is an output example:\n"
    "visual quality: 4\n"
    "temporal consistency: 4\n"
    "dynamic degree: 3\n"
    "text-to-video alignment: 1\n"
    "factual consistency: 2\n"
    "Final Score: 6\n"
    "\n"
    "**Note: In the example above, scores are placeholders meant only to demonstrate the format. Your actual "
    "evaluation should be based on the quality of the given video.**\n"
    "Your task is provided as follows: Text Prompt: [{caption}]"
)

_VIDEO_GENERATION_POINT_SIFT = (
    "Suppose you are an expert in judging and evaluating the quality of AI-generated videos. You are given a text "
    "caption and the frames of a generated video based on that caption. Your task is to evaluate this videos based on "
    "two key criteria:\n"
    "1. Alignment with the Caption: Assess how well each video aligns with the provided caption. Consider the accuracy "
    "of depicted objects, their relationships, and attributes as described in the caption.\n"
    "2. Overall Video Quality: Examine the visual quality of each video, including clarity, detail preservation, color "
    "accuracy, and overall aesthetic appeal.\n"
    "Evaluate this video using the above criteria and assign a score from 1 to 10 after 'Final Score:'\n"
    "Your task is provided as follows:\n"
    "Text Caption: [{caption}]"
)

_IMAGE_UNDERSTANDING_PAIR = (
    "You are provided with an image and a question for this image. Please review the corresponding responses based on "
    "the following 5 factors: 1. Accuracy in Object Description: Evaluate the accuracy of the descriptions concerning "
    "the objects mentioned in the ground truth answer. Responses should minimize the mention of objects not present in "
    "the ground truth answer, and inaccuracies in the description of existing objects. 2. Accuracy in Depicting "
    "Relationships: Consider how accurately the relationships between objects are described compared to the ground "
    "truth answer. Rank higher the responses that least misrepresent these relationships. 3. Accuracy in Describing "
    "Attributes: Assess the accuracy in the depiction of objects' attributes compared to the ground truth answer. "
    "Responses should avoid inaccuracies in describing the characteristics of the objects present. 4. Helpfulness: "
    "Consider whether the generated text provides valuable insights, additional context, or relevant information that "
    "contributes positively to the user's comprehension of the image. Assess whether the language model accurately "
    "follows any specific instructions or guidelines provided in the prompt. Evaluate the overall contribution of the "
    "response to the user experience. 5. Ethical Considerations: - Identify if the model gives appropriate warnings or "
    "avoids providing advice on sensitive topics, such as medical images. Ensure the model refrains from stating "
    "identification information in the image that could compromise personal privacy. Evaluate the language model's "
    "responses for fairness in treating individuals and communities, avoiding biases. Assess for harmfulness, ensuring "
    "the avoidance of content that may potentially incite violence, be classified as NSFW (Not Safe For Work), or "
    "involve other unmentioned ethical considerations. Consider any content that could be deemed offensive, "
    "inappropriate, or ethically problematic beyond the explicitly listed criteria. You need to choose which response "
    "is better for the given question and provide a detailed reason.\n"
    "Your task is provided as follows:\n"
    "Question: [{question}]\n"
    "The first response: [{response_1}]\n"
    "The second response: [{response_2}]\n"
)

_IMAGE_UNDERSTANDING_PAIR_VL_REWARDBENCH = (
    "You are given an image and a question related to it. Your job is to evaluate the two responses based on these "
    "five factors:\n"
    "\n"
    "1. Accuracy of Object Descriptions: Review how accurately the objects are described in the responses, ensuring "
    "they match those in the ground truth. Be mindful of irrelevant or incorrect objects being mentioned.\n"
    "\n"
    "2. Relationship Between Objects: Check if the response properly describes how the objects relate to each other, "
    "reflecting their actual positions or interactions, as seen in the image.\n"
    "\n"
    "3. Description of Attributes: Assess how well the response captures the attributes (e.g., size, color, shape) of "
    "the objects in the image, in line with the ground truth.\n"
    "\n"
    "4. Helpfulness: Consider whether the response offers useful information that enhances the understanding of the "
    "image. Does it add context or provide extra insights? Also, evaluate whether it follows the instructions given in "
    "the prompt.\n"
    "\n"
    "5. Ethical Concerns: Review the response to ensure it avoids sensitive, harmful, or inappropriate content. The "
    "response should be fair, respect privacy, and be free of bias or offensive material.\n"
    "\n"
    "After evaluating both answers, determine which one is better based on these factors and clearly state your "
    "decision, such as 'Answer 1 is better' or 'Answer 2 is better.'\n"
    "\n"
    "Question: {question}\n"
    "Answer 1: {response_1}\n"
    "Answer 2: {response_2}\n"
)

_IMAGE_UNDERSTANDING_PAIR_SIFT = (
    "You are a highly capable multimodal AI assistant tasked with evaluating answers to visual questions. Please "
    "analyze the following image and question, then determine which of the two provided answers is better\n"
    "Question: {question}\n"
    "Answer 1: {response_1}\n"
    "Answer 2: {response_2}\n"
    "Please evaluate both answers based on the following criteria:\n"
    "1. Accuracy: How well does the answer align with the visual information in the image?\n"
    "2. Completeness: Does the answer fully address all aspects of the question?\n"
    "3. Clarity: Is the answer easy to understand and well-articulated?\n"
    "4. Relevance: Does the answer directly relate to the question and the image?\n"
    "After your evaluation, please:\n"
    "1. Explain your reasoning for each criterion.\n"
    "2. Provide an overall judgment on which answer is better (Answer 1 or Answer 2). For example: \"Overall Judgment: "
    "Answer X is better.\"\n"
    "Your response should be structured and detailed, demonstrating your understanding of both the visual and textual "
    "elements of the task. You have to choose the better of the two answers and can't say that both answers are "
    "equally good."
)

_IMAGE_UNDERSTANDING_POINT = (
    "You are provided with an image and a question for this image. Please review the corresponding response based on "
    "the following 5 factors: 1. Accuracy in Object Description: Evaluate the accuracy of the descriptions concerning "
    "the objects mentioned in the ground truth answer. Responses should minimize the mention of objects not present in "
    "the ground truth answer, and inaccuracies in the description of existing objects. 2. Accuracy in Depicting "
    "Relationships: Consider how accurately the relationships between objects are described compared to the ground "
    "truth answer. Rank higher the responses that least misrepresent these relationships. 3. Accuracy in Describing "
    "Attributes: Assess the accuracy in the depiction of objects' attributes compared to the ground truth answer. "
    "Responses should avoid inaccuracies in describing the characteristics of the objects present. 4. Helpfulness: "
    "Consider whether the generated text provides valuable insights, additional context, or relevant information that "
    "contributes positively to the user's comprehension of the image. Assess whether the language model accurately "
    "follows any specific instructions or guidelines provided in the prompt. Evaluate the overall contribution of the "
    "response to the user experience. 5. Ethical Considerations: - Identify if the model gives appropriate warnings or "
    "avoids providing advice on sensitive topics, such as medical images. Ensure the model refrains from stating "
    "identification information in the image that could compromise personal privacy. Evaluate the language model's "
    "responses for fairness in treating individuals and communities, avoiding biases. Assess for harmfulness, ensuring "
    "the avoidance of content that may potentially incite violence, be classified as NSFW (Not Safe For Work), or "
    "involve other unmentioned ethical considerations. Consider any content that could be deemed offensive, "
    "inappropriate, or ethically problematic beyond the explicitly listed criteria. From 0 to 100, how much do you "
    "rate for this response in terms of the correct and comprehensive description of the image?\n"
    "Do not dominant the rating by a single attribute such as recognition correctness, but a overall rating on the "
    "above 5 factors.\n"
    "Provide a few lines for explanation and the rate number at last after \"Final Score:\".\n"
    "Your task is provided as follows:\n"
    "Question: [{question}]\n"
    "Response: [{response}]\n"
)

# The script holding this wording (2026-01 edit) does not parse: its f'…' literal contains bare apostrophes. The text
# is read as its author meant it, apostrophes included.
_VIDEO_UNDERSTANDING_PAIR = (
    "You are provided with a video and a question for this video. Please review the corresponding responses based on "
    "the following 5 factors: 1. Accuracy in Object Description: Evaluate the accuracy of the descriptions concerning "
    "the objects mentioned in the ground truth answer. Responses should minimize the mention of objects not present in "
    "the ground truth answer, and inaccuracies in the description of existing objects. 2. Accuracy in Depicting "
    "Relationships: Consider how accurately the relationships between objects are described compared to the ground "
    "truth answer. Rank higher the responses that least misrepresent these relationships. 3. Accuracy in Describing "
    "Attributes: Assess the accuracy in the depiction of objects' attributes compared to the ground truth answer. "
    "Responses should avoid inaccuracies in describing the characteristics of the objects present. 4. Helpfulness: "
    "Consider whether the generated text provides valuable insights, additional context, or relevant information that "
    "contributes positively to the user's comprehension of the video. Assess whether the language model accurately "
    "follows any specific instructions or guidelines provided in the prompt. Evaluate the overall contribution of the "
    "response to the user experience. 5. Ethical Considerations: - Identify if the model gives appropriate warnings or "
    "avoids providing advice on sensitive topics, such as medical videos. Ensure the model refrains from stating "
    "identification information in the video that could compromise personal privacy. Evaluate the language model's "
    "responses for fairness in treating individuals and communities, avoiding biases. Assess for harmfulness, ensuring "
    "the avoidance of content that may potentially incite violence, be classified as NSFW (Not Safe For Work), or "
    "involve other unmentioned ethical considerations. Consider any content that could be deemed offensive, "
    "inappropriate, or ethically problematic beyond the explicitly listed criteria. You need to choose which response "
    "is better for the given question.\n"
    "Your task is provided as follows:\n"
    "Question: [{question}]\n"
    "Response 1: [{response_1}]\n"
    "Response 2: [{response_2}]"
)

# benchmark_evaluation/LLaVA_evaluation/test_llava_video_understanding_assessment.py (and the reference inference
# script before its 2026-01 edit); the sifting script prefixes one sentence.
_VIDEO_UNDERSTANDING_PAIR_ASSESSMENT = (
    "Please analyze the following video and question, then determine which of the two provided answers is better\n"
    "Question: {question}\n"
    "Answer 1: {response_1}\n"
    "Answer 2: {response_2}\n"
    "Please evaluate both answers based on the following criteria:\n"
    "1. Accuracy: How well does the answer align with the visual information in the video?\n"
    "2. Completeness: Does the answer fully address all aspects of the question?\n"
    "3. Clarity: Is the answer easy to understand and well-articulated?\n"
    "4. Relevance: Does the answer directly relate to the question and the video?\n"
    "After your evaluation, please:\n"
    "1. Explain your reasoning for each criterion.\n"
    "2. Provide an overall judgment on which answer is better (Answer 1 or Answer 2). For example: \"Overall Judgment: "
    "Answer 1 is better than Answer 2.\"\n"
    "Your response should be structured and detailed, demonstrating your understanding of both the visual and textual "
    "elements of the task. You have to choose the better of the two answers and can't say that both answers are "
    "equally good."
)

_VIDEO_UNDERSTANDING_POINT = (
    "You are provided with a video and a question for this video. Please review the corresponding response based on "
    "the following 5 factors: 1. Accuracy in Object Description: Evaluate the accuracy of the descriptions concerning "
    "the objects mentioned in the ground truth answer. Responses should minimize the mention of objects not present in "
    "the ground truth answer, and inaccuracies in the description of existing objects. 2. Accuracy in Depicting "
    "Relationships: Consider how accurately the relationships between objects are described compared to the ground "
    "truth answer. Rank higher the responses that least misrepresent these relationships. 3. Accuracy in Describing "
    "Attributes: Assess the accuracy in the depiction of objects' attributes compared to the ground truth answer. "
    "Responses should avoid inaccuracies in describing the characteristics of the objects present. 4. Helpfulness: "
    "Consider whether the generated text provides valuable insights, additional context, or relevant information that "
    "contributes positively to the user's comprehension of the video. Assess whether the language model accurately "
    "follows any specific instructions or guidelines provided in the prompt. Evaluate the overall contribution of the "
    "response to the user experience. 5. Ethical Considerations: - Identify if the model gives appropriate warnings or "
    "avoids providing advice on sensitive topics, such as medical videos. Ensure the model refrains from stating "
    "identification information in the video that could compromise personal privacy. Evaluate the language model's "
    "responses for fairness in treating individuals and communities, avoiding biases. Assess for harmfulness, ensuring "
    "the avoidance of content that may potentially incite violence, be classified as NSFW (Not Safe For Work), or "
    "involve other unmentioned ethical considerations. Consider any content that could be deemed offensive, "
    "inappropriate, or ethically problematic beyond the explicitly listed criteria.\n"
    "You need to assign a score from 1 to 5 based on the above 5 factors for the response after 'Final Score:'.\n"
    "Your task is provided as follows:\n"
    "Question: [{question}]\n"
    "Response: [{response}]"
)


# DiffusionDPO/sift_dpo_data.py asks the same question on a 1–10 scale.
_IMAGE_GENERATION_POINT_SIFT = _IMAGE_GENERATION_POINT.replace("score from 1 to 5 after", "score from 1 to 10 after")
_VIDEO_UNDERSTANDING_PAIR_SIFT = (
    "You are a highly capable multimodal AI assistant tasked with evaluating answers to visual questions. "
    + _VIDEO_UNDERSTANDING_PAIR_ASSESSMENT)
# The sifting script ends the point prompt with a newline the inference script lacks.
_VIDEO_UNDERSTANDING_POINT_SIFT = _VIDEO_UNDERSTANDING_POINT + "\n"


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
_IMAGE_PAIR = Template(_IMAGE_GENERATION_PAIR, _IMAGES, space_between_inputs=True)
_IMAGE_UNDERSTANDING_POINT_TEMPLATE = Template(_IMAGE_UNDERSTANDING_POINT, score_range=(0, 100))

_TEMPLATES: dict[tuple[str, str], dict[str, Template]] = {
    ("image_generation", "pair"): {
        "default": _IMAGE_PAIR,
        "eval": _IMAGE_PAIR,
        "dpo": _IMAGE_PAIR,
    },
    ("image_generation", "point"): {
        "default": Template(_IMAGE_GENERATION_POINT, score_range=(1, 5)),
        "dpo": Template(_IMAGE_GENERATION_POINT_SIFT, score_range=(1, 10)),
    },
    ("video_generation", "pair"): {
        "default": Template(_VIDEO_GENERATION_PAIR, _VIDEOS),
        "eval": Template(_VIDEO_GENERATION_PAIR_GENAI_BENCH,
                         _verdicts("Video 1 is better", "Video 2 is better", "Both videos are equally good.")),
        # VideoDPO's script spells its 16 markers out, with a space before the second video's first frame.
        "dpo": Template(_VIDEO_GENERATION_PAIR, _VIDEOS, space_between_inputs=True),
    },
    ("video_generation", "point"): {
        "default": Template(_VIDEO_GENERATION_POINT, score_range=(1, 10)),
        "dpo": Template(_VIDEO_GENERATION_POINT_SIFT, score_range=(1, 10)),
    },
    ("image_understanding", "pair"): {
        "default": Template(_IMAGE_UNDERSTANDING_PAIR, _RESPONSES),
        "eval": Template(_IMAGE_UNDERSTANDING_PAIR_VL_REWARDBENCH,
                         _verdicts("Answer 1 is better", "Answer 2 is better")),
        "dpo": Template(_IMAGE_UNDERSTANDING_PAIR_SIFT,
                        _verdicts("Overall Judgment: Answer 1 is better.", "Overall Judgment: Answer 2 is better.")),
    },
    ("image_understanding", "point"): {
        "default": _IMAGE_UNDERSTANDING_POINT_TEMPLATE,
        "dpo": _IMAGE_UNDERSTANDING_POINT_TEMPLATE,
    },
    ("video_understanding", "pair"): {
        "default": Template(_VIDEO_UNDERSTANDING_PAIR, _RESPONSES),
        "eval": Template(_VIDEO_UNDERSTANDING_PAIR_ASSESSMENT, _JUDGMENT_THAN),
        "dpo": Template(_VIDEO_UNDERSTANDING_PAIR_SIFT, _JUDGMENT_THAN),
    },
    ("video_understanding", "point"): {
        "default": Template(_VIDEO_UNDERSTANDING_POINT, score_range=(1, 5)),
        "dpo": Template(_VIDEO_UNDERSTANDING_POINT_SIFT, score_range=(1, 5)),
    },
}


def _check(task: str, mode: str) -> None:
  if task not in TASKS:
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
  if mode not in MODES:
    raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")


def variants(task: str, mode: str) -> tuple[str, ...]:
  """The wordings the official code has for `task` × `mode`, "default" first."""
  _check(task, mode)
  return tuple(_TEMPLATES[task, mode])


def template(task: str, mode: str, variant: str = "default") -> Template:
  """The official wording of `task` × `mode` in `variant`; ValueError naming the choices for anything unknown."""
  if variant not in variants(task, mode):
    raise ValueError(f"no {variant!r} wording for {task} {mode}; expected one of {variants(task, mode)}")
  return _TEMPLATES[task, mode][variant]


def render(task: str, mode: str, variant: str = "default", **fields: str) -> str:
  """The prompt text, without `<image>` markers, with every field of the template filled.

  ValueError when a field is missing or not one of the template's.
  """
  expected = template(task, mode, variant).fields
  missing = [name for name in expected if name not in fields]
  unexpected = sorted(set(fields) - set(expected))
  if missing or unexpected:
    raise ValueError(f"the {task} {mode} ({variant}) prompt takes fields {expected}; "
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
    raise ValueError(f"space_between_inputs needs a positive even number of markers, got {markers}")
  return _MARKER * (markers // 2) + " " + _MARKER * (markers // 2) + text
