"""Pair construction: judgements → selection → records in each trainer's format; policy sampling; the command."""

import json

import pytest

from ureward_jax.cli import main
from ureward_jax.preference.build import PairBuilder, judge_rows, record, sample_answers
from ureward_jax.preference.select import Selection, select
from ureward_jax.reward.inputs import InputOptions
from ureward_jax.reward.scoring import Judge

ANSWERS = ["The circle is red.", "The circle is blue.", "There is 1 shape.", "The square is green."]


def items():
  return [{"id": "u1", "question": "What color is the circle?", "image": "a.png", "candidates": ANSWERS},
          {"id": "u2", "question": "How many shapes are there?", "image": "c.png", "candidates": ANSWERS[::-1]},
          {"id": "u3", "question": "What color?", "image": "a.png", "candidates": ANSWERS[:3]},
          {"id": "u4", "question": "What color?", "image": "missing.png", "candidates": ANSWERS}]


def judges(model, tokenizer, method="logits"):
  return [Judge(model, tokenizer, "image_understanding", mode, method=method, variant="dpo", batch_size=3,
                max_new_tokens=8) for mode in ("pair", "point")]


def test_builder_follows_the_judges_and_the_rule(checkpoint):
  _, model, tokenizer, _, media = checkpoint
  pair_judge, point_judge = judges(model, tokenizer)
  built = PairBuilder(pair_judge, point_judge).build(items(), media)
  for item, (kept, entry) in zip(items()[:2], built[:2]):
    pairs, points = judge_rows(item, "image_understanding")
    winners = [r["winner"] for r in pair_judge.judge(pairs, media)]
    scores = [r["score"] for r in point_judge.judge(points, media)]
    # Scores agree to float rounding only: the builder batches rows differently, so its padding and reduction order
    # differ (2 ulp at a score of 5.6 is 1e-6 absolute; fp32's relative tolerance of the project is used).
    assert entry["winners"] == winners and entry["scores"] == pytest.approx(scores, rel=1e-5)
    selection = select(winners, scores)
    assert (entry["reason"], entry["chosen"], entry["rejected"]) == (selection.reason, selection.chosen,
                                                                      selection.rejected)
    assert len(entry["pair_probs"]) == 2
    if selection.kept:
      assert kept.pop("chosen_score") == pytest.approx(scores[selection.chosen], rel=1e-5)
      assert kept.pop("rejected_score") == pytest.approx(scores[selection.rejected], rel=1e-5)
      assert kept == {"id": item["id"], "image": item["image"], "prompt": item["question"],
                      "chosen": item["candidates"][selection.chosen],
                      "rejected": item["candidates"][selection.rejected]}
    else:
      assert kept is None
  assert built[2] == (None, {"id": "u3", "error": built[2][1]["error"]}) and "even number" in built[2][1]["error"]
  assert built[3][0] is None and "missing.png" in built[3][1]["error"]


def test_an_item_that_fails_is_its_own_error(checkpoint, huge_png, monkeypatch):
  """Malformed candidates, a 20000×20000 image, and a selection that raises: each item's entry holds its error,
  and the item after them is built."""
  _, model, tokenizer, _, media = checkpoint
  good = items()[0]
  bad = [{"id": "list", "question": "q", "image": "a.png", "candidates": "not a list"},
         {"id": "huge", "question": "q", "image": huge_png, "candidates": ANSWERS[:2]}]
  calls = []

  def select_once_failing(*args, **kwargs):
    calls.append(args)
    if len(calls) == 1:
      raise RuntimeError("selection failed")
    return select(*args, **kwargs)
  monkeypatch.setattr("ureward_jax.preference.build.select", select_once_failing)
  built = PairBuilder(*judges(model, tokenizer)).build([good] + bad + [good | {"id": "again"}], media)
  assert [entry["id"] for _, entry in built] == ["u1", "list", "huge", "again"]
  assert built[0] == (None, {"id": "u1", "error": "RuntimeError: selection failed"})
  assert "'candidates' must be a list" in built[1][1]["error"]
  assert built[2][0] is None and "huge.png is 20000×20000 (400,000,000 pixels)" in built[2][1]["error"]
  assert "error" not in built[3][1] and built[3][1]["reason"] in ("kept", "tied", "undecided")


@pytest.mark.parametrize("task, want", [
    ("image_generation", {"id": "g", "caption": "p", "jpg_0": "c2", "jpg_1": "c1", "label_0": 1}),
    ("video_generation", {"id": "g", "caption": "p", "chosen": "c2", "rejected": "c1"}),
    ("video_understanding", {"id": "g", "video": "v", "prompt": "p", "chosen": "c2", "rejected": "c1"}),
])
def test_records_in_each_trainers_format(task, want):
  item = {"id": "g", "prompt": "p", "video": "v", "candidates": ["c1", "c2"]}
  got = record(item, task, Selection(1, 0, "kept"), [3.0, 8.0])
  assert got == want | {"chosen_score": 8.0, "rejected_score": 3.0}
  if task.endswith("generation"):   # the caption is what was judged: "question" when the item has no "prompt"
    asked = {"id": "g", "question": "q", "candidates": ["c1", "c2"]}
    assert record(asked, task, Selection(1, 0, "kept"), [3.0, 8.0])["caption"] == "q"


def test_official_selection_needs_generated_text(checkpoint):
  _, model, tokenizer, _, _ = checkpoint
  with pytest.raises(ValueError, match="generate"):
    PairBuilder(*judges(model, tokenizer), official=True)
  with pytest.raises(ValueError, match="same task"):
    PairBuilder(*judges(model, tokenizer)[::-1])


def test_official_selection_reads_text(checkpoint):
  _, model, tokenizer, _, media = checkpoint
  (_, entry), = PairBuilder(*judges(model, tokenizer, "generate"), official=True).build(items()[:1], media)
  assert entry["winners"] in ([1, 1], [1, 2], [2, 1], [2, 2])   # never None: the scripts default to the first
  assert all(isinstance(s, float) for s in entry["scores"])


def test_policy_sampling_is_seeded(checkpoint):
  _, model, tokenizer, _, media = checkpoint
  rows = [{"question": "What color is the circle?", "image": "a.png"}, {"question": "x", "image": "nope.png"},
          {"question": "Which direction does the circle move?", "video": "clip"}]
  kw = dict(num_candidates=4, max_new_tokens=6, root=media)
  first = sample_answers(model, tokenizer, rows[:1] + rows[2:], "image_understanding", **kw)
  assert first == sample_answers(model, tokenizer, rows[:1] + rows[2:], "image_understanding", **kw)
  assert len(first[0]) == 4 and all(isinstance(a, str) for a in first[0])
  assert len(set(first[0])) > 1   # temperature 0.7: the samples differ
  assert first != sample_answers(model, tokenizer, rows[:1] + rows[2:], "image_understanding", seed=1, **kw)
  video = sample_answers(model, tokenizer, rows[2:], "video_understanding", options=InputOptions(num_frames=3), **kw)
  assert len(video[0]) == 4
  assert "not found" in sample_answers(model, tokenizer, rows[1:2], "image_understanding", **kw)[0]
  with pytest.raises(ValueError, match="generator"):
    sample_answers(model, tokenizer, rows[:1], "image_generation")


def test_build_pairs_command_writes_records_and_resumes(checkpoint, huge_png, tmp_path, capsys):
  """Bad items (odd candidates, a missing file, an id that is a list, an image to sample from of 20000×20000) are
  counted with errors; the others are built, and a re-run skips them all."""
  _, _, _, folder, media = checkpoint
  source = tmp_path / "items.jsonl"
  sampled = {"id": "s1", "question": "What color is the circle?", "image": "a.png"}
  bad = [{"id": ["x"], "question": "q", "image": "a.png", "candidates": ANSWERS},
         {"id": "s2", "question": "What color is the circle?", "image": huge_png}]
  source.write_text("".join(json.dumps(r) + "\n" for r in items() + [sampled] + bad))
  out = tmp_path / "pairs.jsonl"
  args = ["build-pairs", "--model", str(folder), "--task", "image_understanding", "--input", str(source),
          "--output", str(out), "--media-root", media, "--policy", str(folder), "--num-candidates", "4",
          "--max-new-tokens", "6", "--prompts-per-batch", "2"]
  assert main(args) == 0
  err = capsys.readouterr().err
  entries = [json.loads(line) for line in (tmp_path / "pairs.judgements.jsonl").read_text().splitlines()]
  assert [e["id"] for e in entries] == ["u1", "u2", "u3", "u4", "s1", "line 6", "s2"]
  assert len(entries[4]["candidates"]) == 4 and "error" not in entries[4]
  assert "'id' must be a string or an integer" in entries[5]["error"]
  assert "huge.png is 20000×20000" in entries[6]["error"] and entries[6]["candidates"] is None
  kept = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
  reasons = [e.get("reason") for e in entries]
  assert len(kept) == reasons.count("kept") and {k["id"] for k in kept} <= {"u1", "u2", "s1"}
  assert f"{reasons.count('kept')} pairs kept" in err and "4 with errors" in err
  assert main(args) == 0
  assert "7 prompts already in" in capsys.readouterr().err
  assert len((tmp_path / "pairs.judgements.jsonl").read_text().splitlines()) == 7
