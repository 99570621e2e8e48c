"""Benchmark metrics on small synthetic files with hand-computed answers, the official position randomisation, the
official string rules, and `ureward eval` end to end on a tiny checkpoint."""

import json
import random

import pytest

from ureward_jax.cli import main
from ureward_jax.reward import benchmarks


def judged(labels, winners, **extra):
  return [{"id": i, "label": label, "winner": winner} | {k: v[i] for k, v in extra.items()}
          for i, (label, winner) in enumerate(zip(labels, winners))]


def test_tau_and_diff_by_hand():
  # hits: T T F F T T T -> tau 5/7; non-tie labels at 0, 1, 3, 4, 6 -> T T F T T -> diff 4/5
  rows = judged([1, 2, 0, 1, 2, 0, 1], [1, 2, 1, None, 2, 0, 1]) + [{"id": 9, "label": 1, "error": "missing"}]
  m = benchmarks.metrics("genai_image", rows)
  assert m["tau"] == pytest.approx(5 / 7) and m["diff"] == pytest.approx(4 / 5)
  assert (m["rows"], m["errors"], m["unreadable"]) == (7, 1, 1)


def test_vl_rewardbench_overall_and_macro_by_hand():
  ids = ["RLAIF-1", "RLHF_2", "mathverse-3", "mmmu_4", "wildvision-5", "vlfeedback_6", "other"]
  groups = [benchmarks.vl_group(i) for i in ids]
  assert groups == ["hallucination", "hallucination", "reasoning", "reasoning", "general", "general", "general"]
  rows = judged([1, 2, 1, 2, 1, 2, 1], [1, 1, 1, 1, 2, 2, 1], group=groups)
  # hallucination 1/2, reasoning 1/2, general 2/3; overall 4/7; macro (1/2 + 1/2 + 2/3) / 3
  m = benchmarks.metrics("vl_rewardbench", rows)
  assert m["overall"] == pytest.approx(4 / 7) and m["macro"] == pytest.approx((0.5 + 0.5 + 2 / 3) / 3)
  assert (m["hallucination"], m["reasoning"], m["general"]) == pytest.approx((0.5, 0.5, 2 / 3))


def test_generated_text_is_parsed_when_there_is_no_winner():
  rows = [{"id": 0, "label": 2, "winner": None, "text": "**Image 2** is better than Image 1."},
          {"id": 1, "label": 1, "winner": None, "text": "I cannot tell."}]
  m = benchmarks.metrics("genai_image", rows)
  assert m["tau"] == 0.5 and m["unreadable"] == 1


def test_position_randomisation_draws_as_the_official_scripts():
  records = [{"id": f"RLHF_{i}", "query": f"q{i}", "response": [f"a{i}", f"b{i}"], "human_ranking": [i % 2, 1 - i % 2],
              "image": f"{i}.png"} for i in range(40)]
  random.seed(0)   # VL-RewardBench's script: draw True keeps response[0] first
  draws = [random.choices([True, False])[0] for _ in records]
  rows = benchmarks.rows_to_judge("vl_rewardbench", records, seed=0)
  assert 5 < sum(draws) < 35
  for record, row, keep in zip(records, rows, draws):
    first, second = record["response"] if keep else record["response"][::-1]
    assert row["responses"] == [first, second] and row["group"] == "hallucination"
    better = record["response"][record["human_ranking"].index(0)]
    assert row["label"] == (1 if better == first else 2)

  videos = [{"prompt": f"p{i}", "left_video": f"l{i}", "right_video": f"r{i}", "vote_type": vote}
            for i, vote in enumerate(["leftvote", "rightvote", "tievote", "bothbad_vote"] * 5)]
  random.seed(7)   # GenAI-Bench video: draw True swaps left and right
  draws = [random.choices([True, False])[0] for _ in videos]
  for record, row, swap in zip(videos, benchmarks.rows_to_judge("genai_video", videos, seed=7), draws):
    assert row["videos"] == ([record["right_video"], record["left_video"]] if swap else
                             [record["left_video"], record["right_video"]])
    label = {"leftvote": 1, "rightvote": 2}.get(record["vote_type"], 0)
    assert row["label"] == ({1: 2, 2: 1}.get(label, 0) if swap else label)


def test_benchmarks_without_randomisation_keep_the_order():
  rows = benchmarks.rows_to_judge("videogen_rewardbench", [
      {"prompt": "p", "path_A": "a.mp4", "path_B": "b.mp4", "Overall": o} for o in ("A", "B", "same")])
  assert [r["label"] for r in rows] == [1, 2, 0] and all(r["videos"] == ["a.mp4", "b.mp4"] for r in rows)
  images = benchmarks.rows_to_judge("genai_image", [
      {"prompt": "p", "left_image": "l.png", "right_image": "r.png", "vote_type": "rightvote"}])
  assert images[0]["images"] == ["l.png", "r.png"] and images[0]["label"] == 2
  with pytest.raises(ValueError, match="unknown benchmark"):
    benchmarks.rows_to_judge("imagereward", [])


def test_a_malformed_record_is_an_error_row_and_keeps_its_draw():
  records = [{"id": f"v{i}", "prompt": f"p{i}", "left_video": f"l{i}", "right_video": f"r{i}", "vote_type": "leftvote"}
             for i in range(8)]
  good = benchmarks.rows_to_judge("genai_video", records, seed=3)
  broken = [dict(r) for r in records]
  del broken[2]["right_video"]
  broken[5]["vote_type"] = 7
  rows = benchmarks.rows_to_judge("genai_video", broken, seed=3)
  assert rows[2] == {"id": "v2", "error": "not a genai_video record: it has no 'right_video' field"}
  assert rows[5]["id"] == "v5" and "TypeError" in rows[5]["error"]
  assert [r for i, r in enumerate(rows) if i not in (2, 5)] == [r for i, r in enumerate(good) if i not in (2, 5)]
  unreadable = {"id": "line 4", "error": "unreadable line: not a JSON object"}   # as `ureward eval` reads it
  rows = benchmarks.rows_to_judge("genai_video", records[:3] + [unreadable] + records[4:], seed=3)
  assert rows[3] == unreadable and rows[:3] + rows[4:] == good[:3] + good[4:]
  assert benchmarks.rows_to_judge("vl_rewardbench", [{"query": "q"}])[0]["id"] == 0   # no id: its position


@pytest.mark.parametrize("name, text, label, hit", [
    ("genai_image", "Image 1 is better than Image 2.", 1, True),
    ("genai_image", "Both images are equally good.", 0, True),
    ("genai_image", "Image 1 is better.", 1, False),   # the short form is not the script's sentence
    ("genai_video", "Video 2 is better, clearly.", 2, True),
    ("genai_video", "No verdict.", 0, True),           # anything unread is a tie to the script
    ("videogen_rewardbench", "Video 1 is better", 1, True),   # reversed containment: a part of the sentence
    ("videogen_rewardbench", "Reasoning... Video 1 is better than Video 2.", 1, False),
    ("videogen_rewardbench", "Reasoning... Video 1 is better than Video 2.", 0, True),
    ("vl_rewardbench", "Overall, Answer 2 is better.", 2, True),
    ("vl_rewardbench", "Overall, Answer 2 is better.", 1, False),
])
def test_official_string_rules(name, text, label, hit):
  assert benchmarks.official_hit(name, text, label) is hit


def test_official_scoring_needs_text():
  with pytest.raises(ValueError, match="generate"):
    benchmarks.metrics("genai_image", judged([1], [1]), official=True)


def test_eval_command_judges_and_scores(checkpoint, tmp_path, capsys):
  _, _, _, folder, media = checkpoint
  records = [{"id": f"g{i}", "prompt": "a red circle", "left_image": left, "right_image": right, "vote_type": vote}
             for i, (left, right, vote) in enumerate([("red.png", "blue.png", "leftvote"),
                                                      ("a.png", "red.png", "rightvote"),
                                                      ("c.png", "blue.png", "tievote"),
                                                      ("missing.png", "a.png", "leftvote")])]
  records.insert(1, {"id": "bad", "prompt": "a red circle", "left_image": "red.png", "vote_type": "leftvote"})
  source = tmp_path / "genai.jsonl"
  source.write_text("".join(json.dumps(r) + "\n" for r in records))
  out = tmp_path / "judged.jsonl"
  args = ["eval", "--benchmark", "genai_image", "--model", str(folder), "--input", str(source), "--output", str(out),
          "--media-root", media, "--batch-size", "2"]
  assert main(args) == 0
  printed = json.loads(capsys.readouterr().out)
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r.get("label") for r in rows] == [1, None, 2, 0, 1] and "missing.png" in rows[4]["error"]
  assert "no 'right_image' field" in rows[1]["error"]
  assert printed == {"benchmark": "genai_image"} | benchmarks.metrics("genai_image", rows)
  assert printed["rows"] == 3 and printed["errors"] == 2
  with pytest.raises(SystemExit, match="--method generate"):
    main(args + ["--official"])
