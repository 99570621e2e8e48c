"""The official prompt wordings: every one renders, fields are checked, verdicts and markers are the scripts'."""

import pytest

from ureward_jax.reward import prompts

VALUES = {"caption": "a red circle", "question": "What color is the circle?", "response": "The circle is red.",
          "response_1": "The circle is red.", "response_2": "The circle is blue."}
ALL = [(task, mode, variant) for task in prompts.TASKS for mode in prompts.MODES
       for variant in prompts.variants(task, mode)]


@pytest.mark.parametrize("task,mode,variant", ALL)
def test_every_template_renders_its_fields(task, mode, variant):
  t = prompts.template(task, mode, variant)
  text = prompts.render(task, mode, variant, **{name: VALUES[name] for name in t.fields})
  for name in t.fields:
    assert VALUES[name] in text
  assert "{" not in text and "<image>" not in text
  assert (t.verdicts is not None) == (mode == "pair") and (t.score_range is not None) == (mode == "point")
  assert t.fields == (("caption",) if task.endswith("generation") else
                      ("question", "response_1", "response_2") if mode == "pair" else ("question", "response"))


@pytest.mark.parametrize("task,mode,variant", ALL)
def test_missing_or_unknown_field_raises(task, mode, variant):
  fields = {name: VALUES[name] for name in prompts.template(task, mode, variant).fields}
  dropped = sorted(fields)[0]
  with pytest.raises(ValueError, match=dropped):
    prompts.render(task, mode, variant, **{k: v for k, v in fields.items() if k != dropped})
  with pytest.raises(ValueError, match="captoin"):
    prompts.render(task, mode, variant, captoin="x", **fields)


def test_unknown_task_mode_variant_name_the_choices():
  with pytest.raises(ValueError, match="image_generation"):
    prompts.template("image_editing", "pair")
  with pytest.raises(ValueError, match="'point'"):
    prompts.template("image_generation", "rank")
  with pytest.raises(ValueError, match="'default', 'dpo'"):
    prompts.template("image_generation", "point", "eval")
  with pytest.raises(ValueError, match="image_generation"):
    prompts.image_markers("image_editing", "pair")


def test_verdicts_are_the_official_strings():
  assert dict(prompts.template("image_generation", "pair").verdicts) == {
      1: "Image 1 is better than Image 2.", 2: "Image 2 is better than Image 1.", 0: "Both images are equally good."}
  for variant in ("default", "dpo"):
    assert dict(prompts.template("video_generation", "pair", variant).verdicts) == {
        1: "Video 1 is better than Video 2.", 2: "Video 2 is better than Video 1.", 0: "Both videos are equally good."}
  assert prompts.template("video_generation", "pair", "eval").verdicts[2] == "Video 2 is better"
  assert dict(prompts.template("image_understanding", "pair", "eval").verdicts) == {
      1: "Answer 1 is better", 2: "Answer 2 is better"}
  assert prompts.template("image_understanding", "pair", "dpo").verdicts[2] == "Overall Judgment: Answer 2 is better."
  assert (prompts.template("video_understanding", "pair", "dpo").verdicts[1]
          == "Overall Judgment: Answer 1 is better than Answer 2.")
  assert prompts.template("video_understanding", "pair").verdicts[2] == "Response 2 is better than Response 1."


def test_verdicts_and_ranges_agree_with_the_wording():
  """Each generation wording quotes its verdicts; each point wording states its range."""
  for task in ("image_generation", "video_generation"):
    for variant in prompts.variants(task, "pair"):
      t = prompts.template(task, "pair", variant)
      assert all(v.rstrip(".") in t.text for v in t.verdicts.values())
  ranges = {(task, variant): prompts.template(task, "point", variant).score_range
            for task in prompts.TASKS for variant in prompts.variants(task, "point")}
  assert ranges == {("image_generation", "default"): (1, 5), ("image_generation", "dpo"): (1, 10),
                    ("video_generation", "default"): (1, 10), ("video_generation", "dpo"): (1, 10),
                    ("image_understanding", "default"): (0, 100), ("image_understanding", "dpo"): (0, 100),
                    ("video_understanding", "default"): (1, 5), ("video_understanding", "dpo"): (1, 5)}
  for (task, variant), (low, high) in ranges.items():
    text = prompts.template(task, "point", variant).text
    assert f"from {low} to {high}" in text or f"From {low} to {high}" in text


@pytest.mark.parametrize("task,mode,variant,phrase", [
    ("image_generation", "pair", "default", "Provide a clear conclusion such as \"Image 1 is better than Image 2.\", "
     "\"Image 2 is better than Image 1.\" and \"Both images are equally good.\"\nYour task is provided as follows:\n"
     "Text Caption: [a red circle]"),
    ("image_generation", "point", "default", "using the format: 'element (type): value' (where value=0 means not "
     "generated, and value=1 means generated), and assign a score from 1 to 5 after 'Final Score:'.\n"),
    ("image_generation", "point", "dpo", "assign a score from 1 to 10 after 'Final Score:'.\n"),
    ("video_generation", "point", "default", "For each dimension, output a number from [1,2,3,4], \nin which '1' "
     "means 'Bad', '2' means 'Average', '3' means 'Good', \n'4' means 'Real' or 'Perfect'"),
    ("video_generation", "point", "default", "Your task is provided as follows: Text Prompt: [a red circle]"),
    ("video_generation", "point", "dpo", "Your task is to evaluate this videos based on two key criteria:\n"),
    ("video_generation", "pair", "eval", "Give your final judgment, such as 'Video 1 is better,' 'Video 2 is "
     "better,' or 'Both videos are equally good.'\n\nYour task is as follows:\nText Caption: [a red circle]\n"),
    ("image_understanding", "pair", "default",
     "The first response: [The circle is red.]\nThe second response: [The circle is blue.]\n"),
    ("image_understanding", "point", "default", "Do not dominant the rating by a single attribute such as "
     "recognition correctness, but a overall rating on the above 5 factors.\n"),
    ("image_understanding", "pair", "eval", "clearly state your decision, such as 'Answer 1 is better' or 'Answer 2 "
     "is better.'\n\nQuestion: What color is the circle?\nAnswer 1: The circle is red.\n"),
    ("image_understanding", "pair", "dpo", "For example: \"Overall Judgment: Answer X is better.\"\n"),
    ("video_understanding", "pair", "default", "such as medical videos. Ensure the model refrains"),
    ("video_understanding", "pair", "dpo", "You are a highly capable multimodal AI assistant tasked with evaluating "
     "answers to visual questions. Please analyze the following video and question"),
    ("video_understanding", "point", "default", "for the response after 'Final Score:'.\nYour task is provided as "
     "follows:\nQuestion: [What color is the circle?]\nResponse: [The circle is red.]"),
])
def test_official_phrases_verbatim(task, mode, variant, phrase):
  fields = {name: VALUES[name] for name in prompts.template(task, mode, variant).fields}
  assert phrase in prompts.render(task, mode, variant, **fields)


def test_endings_differ_where_the_scripts_differ():
  fields = {"question": "q", "response": "r"}
  assert prompts.render("video_understanding", "point", **fields).endswith("Response: [r]")
  assert prompts.render("video_understanding", "point", "dpo", **fields).endswith("Response: [r]\n")
  assert prompts.render("image_understanding", "point", **fields).endswith("Response: [r]\n")
  assert prompts.render("video_understanding", "pair", "eval", question="q", response_1="a", response_2="b").startswith(
      "Please analyze the following video and question")


def test_marker_counts():
  assert prompts.image_markers("image_generation", "pair") == 2
  assert prompts.image_markers("image_generation", "point") == 1
  assert prompts.image_markers("video_generation", "pair") == 16
  assert prompts.image_markers("video_generation", "pair", num_frames=4) == 8
  assert prompts.image_markers("video_generation", "point") == 8
  assert prompts.image_markers("image_understanding", "pair") == 1
  assert prompts.image_markers("video_understanding", "pair") == 8
  assert prompts.image_markers("video_understanding", "point", num_frames=4) == 4


def test_user_turn_spacing_as_the_scripts_write_it():
  assert prompts.user_turn("T", 1) == "<image>\nT"
  assert prompts.user_turn("T", 2, space_between_inputs=True) == "<image>\n <image>\nT"
  assert prompts.user_turn("T", 16) == "<image>\n" * 16 + "T"
  assert prompts.user_turn("T", 16, space_between_inputs=True) == "<image>\n" * 8 + " " + "<image>\n" * 8 + "T"
  assert prompts.template("image_generation", "pair").space_between_inputs
  assert not prompts.template("video_generation", "pair").space_between_inputs
  assert prompts.template("video_generation", "pair", "dpo").space_between_inputs
  with pytest.raises(ValueError, match="even"):
    prompts.user_turn("T", 3, space_between_inputs=True)
