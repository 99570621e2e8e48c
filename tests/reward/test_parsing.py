"""Verdict and score parsing: every official form is read, anything else is None (never a default winner)."""

import pytest

from ureward_jax.reward import prompts
from ureward_jax.reward.parsing import (
  parse_pairwise,
  parse_pairwise_official,
  parse_pointwise,
  parse_pointwise_official,
)


@pytest.mark.parametrize("task", prompts.TASKS)
def test_every_official_verdict_string_parses_to_its_winner(task):
  for variant in prompts.variants(task, "pair"):
    for winner, verdict in prompts.template(task, "pair", variant).verdicts.items():
      assert parse_pairwise(verdict) == winner, (variant, verdict)
      assert parse_pairwise(f"The details differ in several ways.\n{verdict}") == winner


@pytest.mark.parametrize("text, winner", [
    ("**Image 2** is better than Image 1.", 2),
    ("Video 1 is better", 1),
    ("Both images are equally good.", 0),
    ("Answer 1 is better at first sight... Overall Judgment: Answer 2 is better.", 2),
    ("overall judgement: **Answer 1 is better than Answer 2.**", 1),
    ("Image 1 is better in colour, but Image 2 is better in layout.", None),
    ("I cannot decide.", None),
    ("", None),
    ("Response 2 is better than Response 1 because it names the colour.", 2),
    ("Answer 1 is the better one.", 1),
    ("__Video 2__ is better than Video 1.", 2),
    ("Both videos are equally good in alignment and quality.", 0),
    ("Both images are equally good, but Image 1 is better in detail.", None),   # a tie and a winner at once
    ("Image 3 is better.", None),
    ("Image 1 is better than Image 2.\nOverall Judgment: Answer 2 is better.", 2),   # only the last judgment
    ("Overall Judgment: none of them.", None),
    ("Image 1 is not better than Image 2.", None),
    ("image 1 IS BETTER than image 2", 1),
])
def test_pairwise_forms_and_refusals(text, winner):
  assert parse_pairwise(text) == winner


@pytest.mark.parametrize("text, score", [
    ("circle (object): 1\nFinal Score: 4", 4.0),
    ("Final Score: 3.7", 3.7),
    ("**Final Score:** 85/100", 85.0),
    ("Final Score: 2 at first. Revised.\nFinal Score: 5", 5.0),
    ("final score: 7.", 7.0),
    ("The image scores 4 out of 5.", None),
    ("Final Score: none", None),
    ("Final Score: 10", 10.0),
    ("Final Score:4", 4.0),
    ("Final Score: *4.5*", 4.5),
    ("final SCORE :  92", 92.0),
    ("Final Score: -1", -1.0),
    ("Score: 4", None),
])
def test_pointwise_takes_the_last_final_score(text, score):
  assert parse_pointwise(text) == score


@pytest.mark.parametrize("text, task, winner", [
    ("Image 2 is better than Image 1.", "image_generation", 2),
    ("Both images are equally good.", "image_generation", 1),          # ties go to the first
    ("gibberish", "video_generation", 1),
    ("Video 2 is better than Video 1.", "video_generation", 2),
    ("Image 2 is better.", "image_generation", 1),                      # not the sifting sentence
    ("Answer 2 is better at first. Overall Judgment: Answer 2 is better. More text.", "image_understanding", 2),
    ("Overall Judgment: Answer 1 is better than Answer 2.", "video_understanding", 1),
    ("Answer 2 is better.", "image_understanding", 2),                  # no judgment: the whole text
    ("Overall Judgment: unclear. Answer 2 is better.", "image_understanding", 1),   # only up to the first "."
])
def test_official_pairwise_rules(text, task, winner):
  assert parse_pairwise_official(text, task) == winner


@pytest.mark.parametrize("text, score", [
    ("Final Score: 3.7", 3), ("explanation 42\nFinal Score: 88", 88), ("Final Score: none, but 7 of 10", 7),
    ("rated 4 of 5", 4), ("no number", 0), ("Final Score: none at all", 0),
])
def test_official_pointwise_rules(text, score):
  assert parse_pointwise_official(text) == score
