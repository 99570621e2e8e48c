"""The paper's reward benchmarks on local JSONL exports: their records → rows to judge, and their metrics.

Records keep the fields of the Hugging Face datasets, media as paths (relative to the file's folder):
  genai_image           TIGER-Lab/GenAI-Bench `image_generation`: prompt, left_image, right_image, vote_type
  genai_video           TIGER-Lab/GenAI-Bench `video_generation`: prompt, left_video, right_video, vote_type
  videogen_rewardbench  KwaiVGI/VideoGen-RewardBench: prompt, path_A, path_B, Overall ("A" | "B" | "same")
  vl_rewardbench        MMInstruction/VL-RewardBench: id, query, response [2], human_ranking [2], image
vote_type names the winner: "leftvote" / "rightvote", anything else ("tievote", "bothbad_vote") a tie.

Each benchmark is judged as the official script judges it (`benchmark_evaluation/LLaVA_evaluation/`): wording,
frames (8 per video), 512² resizing, and the position randomisation. GenAI-Bench video and VL-RewardBench draw
`random.choices([True, False])` once per record in file order; here from `random.Random(seed)`, which with seed 0
draws what the VL-RewardBench script draws after its `random.seed(0)` (the GenAI-Bench video script never seeds).

Metrics: tau = accuracy with ties as a third class, diff = accuracy on the records whose label is not a tie
(GenAI-Bench, VideoGen-RewardBench); overall = accuracy over all records, macro = the mean of the general,
hallucination and reasoning groups' accuracies (VL-RewardBench). A prediction of None (an unreadable answer) is
wrong and counted. `official_hit` reproduces each script's string rule on generated text.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Callable

from ureward_jax.errors import UserError
from ureward_jax.reward.parsing import parse_pairwise

GROUPS = ("general", "hallucination", "reasoning")


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """task and prompt variant; resize: the side images and frames are resized to; swap_on: the draw that swaps a
  record's two candidates (None: the script keeps the dataset's order); to_row: (record, swap) → (row, label)."""
  task: str
  variant: str
  resize: int | None
  swap_on: bool | None
  to_row: Callable[[dict, bool], tuple[dict, int]]


def _vote(vote_type: str) -> int:
  return 1 if "left" in vote_type else 2 if "right" in vote_type else 0


def _flip(label: int, swap: bool) -> int:
  return {1: 2, 2: 1, 0: 0}[label] if swap else label


def _genai(media: str):
  key = "images" if media == "image" else "videos"

  def to_row(record, swap):
    pair = [record[f"left_{media}"], record[f"right_{media}"]]
    return {"prompt": record["prompt"], key: pair[::-1] if swap else pair}, _flip(_vote(record["vote_type"]), swap)
  return to_row


def _videogen(record, swap):
  del swap   # the script keeps the dataset's order
  label = {"A": 1, "B": 2, "same": 0}[record["Overall"]]
  return {"prompt": record["prompt"], "videos": [record["path_A"], record["path_B"]]}, label


def _vl(record, swap):
  first_better = record["human_ranking"][0] == 0
  responses = list(record["response"])
  row = {"question": record["query"], "image": record["image"], "responses": responses[::-1] if swap else responses}
  return row, 1 if first_better != swap else 2


BENCHMARKS = {
    "genai_image": Benchmark("image_generation", "default", 512, None, _genai("image")),
    "genai_video": Benchmark("video_generation", "eval", 512, True, _genai("video")),
    "videogen_rewardbench": Benchmark("video_generation", "default", 512, None, _videogen),
    # The script keeps the dataset's order when its draw is True.
    "vl_rewardbench": Benchmark("image_understanding", "eval", None, False, _vl),
}


def vl_group(record_id: str) -> str:
  """The VL-RewardBench group of a record, from its id prefix as the official script reads it."""
  cut = [i for i in (record_id.find("_"), record_id.find("-")) if i != -1]
  prefix = record_id[:min(cut)] if cut else record_id
  if prefix in ("RLAIF", "RLHF"):
    return "hallucination"
  if prefix in ("mathverse", "mmmu"):
    return "reasoning"
  return "general"   # wildvision, vlfeedback, and any other prefix, as the script counts them


def benchmark(name: str) -> Benchmark:
  if name not in BENCHMARKS:
    raise UserError(f"unknown benchmark {name!r}; expected one of {sorted(BENCHMARKS)}")
  return BENCHMARKS[name]


def rows_to_judge(name: str, records: list[dict], seed: int = 0) -> list[dict]:
  """The judge rows of `records`, each with "label" (1 | 2 | 0), "swapped" and, for VL-RewardBench, "group".

  A record without the benchmark's fields, or with one of the wrong form, becomes {"id", "error"} naming the field,
  to be written and counted with the other failed rows; a record that already has an "error" (a line the reader
  could not use) is kept as it is. Either still takes its draw of the position randomisation, so the other records
  are judged in the order the official script gives them.
  """
  spec, rng = benchmark(name), random.Random(seed)
  out = []
  for n, record in enumerate(records):
    swap = spec.swap_on is not None and rng.choices([True, False])[0] == spec.swap_on
    if "error" in record:
      out.append(record)
      continue
    try:
      row, label = spec.to_row(record, swap)
    except KeyError as e:
      out.append({"id": record.get("id", n), "error": f"not a {name} record: it has no {e.args[0]!r} field"})
      continue
    except Exception as e:   # noqa: BLE001 — whatever one record raises is its error; the others are judged
      out.append({"id": record.get("id", n), "error": f"not a {name} record (a field has the wrong form: "
                                                      f"{type(e).__name__}: {e})"})
      continue
    extra = {"group": vl_group(str(record.get("id", "")))} if name == "vl_rewardbench" else {}
    out.append({"id": record.get("id", n), **row, "label": label, "swapped": swap, **extra})
  return out


_GENAI_IMAGE = {1: "Image 1 is better than Image 2", 2: "Image 2 is better than Image 1",
                0: "Both images are equally good"}


def official_hit(name: str, text: str, label: int) -> bool:
  """Whether the official script counts generated `text` as right for `label` (its string rules, quirks included)."""
  if name == "genai_image":   # the label's sentence anywhere in the text
    return _GENAI_IMAGE[label] in text
  if name == "vl_rewardbench":
    return f"Answer {label} is better" in text
  if name == "genai_video":
    predicted = 1 if "Video 1 is better" in text else 2 if "Video 2 is better" in text else 0
  elif name == "videogen_rewardbench":   # reversed containment: the text must lie within the verdict sentence
    predicted = 1 if text in "Video 1 is better than Video 2." else 2 if text in "Video 2 is better than Video 1." \
        else 0
  else:
    raise UserError(f"unknown benchmark {name!r}")
  return predicted == label


def prediction(result: dict) -> int | None:
  """A judged row's predicted winner (1 | 2 | 0), None when its answer could not be read."""
  winner = result.get("winner")
  return parse_pairwise(result["text"]) if winner is None and "text" in result else winner


def metrics(name: str, rows: list[dict], official: bool = False) -> dict:
  """The benchmark's metrics over judged rows (each with "label" and the judge's result); rows with an "error"
  are left out and counted."""
  judged = [r for r in rows if "error" not in r]
  if not judged:
    raise UserError("no judged rows to score")
  if official and any("text" not in r for r in judged):
    raise UserError("official scoring reads generated text: judge with --method generate")
  hits = [official_hit(name, r["text"], r["label"]) if official else prediction(r) == r["label"] for r in judged]
  out = {"rows": len(judged), "errors": len(rows) - len(judged),
         "unreadable": sum(prediction(r) is None for r in judged)}
  if name == "vl_rewardbench":
    out["overall"] = sum(hits) / len(hits)
    per_group = {g: [h for h, r in zip(hits, judged) if r["group"] == g] for g in GROUPS}
    out |= {g: sum(v) / len(v) for g, v in per_group.items() if v}
    present = [g for g in GROUPS if per_group[g]]
    out["macro"] = sum(out[g] for g in present) / len(present)
    return out
  ties = [r["label"] == 0 for r in judged]
  out["tau"] = sum(hits) / len(hits)
  decided = [h for h, tie in zip(hits, ties) if not tie]
  out["diff"] = sum(decided) / len(decided) if decided else float("nan")
  return out
