"""Preference pairs from a reward model's judgements: N candidates per prompt → N / 2 pair verdicts and N point
scores → one chosen / rejected pair (`select`), with the prompts' official "dpo" wordings.

Items (JSONL rows), candidates given or sampled from a policy (`sample_answers`):
  image_understanding / video_understanding  {"id", "question" (or "prompt"), "image" | "video", "candidates": [texts]}
  image_generation / video_generation        {"id", "prompt", "candidates": [image or video paths]}
Records, in the format each trainer reads:
  understanding     {"id", "image" | "video", "prompt", "chosen", "rejected", "chosen_score", "rejected_score"}
  image generation  {"id", "caption", "jpg_0" (chosen), "jpg_1" (rejected), "label_0": 1, "chosen_score", ...}
  video generation  {"id", "caption", "chosen", "rejected", "chosen_score", "rejected_score"}
Every item also gets a judgement entry: its verdicts, scores, what was kept and why, or its error.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from ureward_jax.errors import UserError, row_error
from ureward_jax.preference.select import Selection, select
from ureward_jax.processing.chat import prompt_ids
from ureward_jax.processing.feature_layout import splice_markers
from ureward_jax.reward import inputs, prompts
from ureward_jax.reward.parsing import parse_pairwise_official, parse_pointwise_official
from ureward_jax.reward.scoring import Judge, answer_text, end_token_ids
from ureward_jax.runners.decode import sampling_config
from ureward_jax.runners.llava import image_processor, layout_config

# The sifting scripts that keep scores as strings: video understanding's and both diffusion ones.
STRING_SCORE_TASKS = ("video_understanding", "image_generation", "video_generation")


def _question(item: dict) -> str:
  return inputs.text_field(item.get("question", item.get("prompt")), "'question' (or 'prompt')")


def _candidates(item: dict) -> list:
  candidates = item.get("candidates")
  if not isinstance(candidates, list) or len(candidates) < 2 or len(candidates) % 2:
    raise inputs.BadInput("'candidates' must be a list of an even number (at least 2) of candidates")
  return candidates


def judge_rows(item: dict, task: str) -> tuple[list[dict], list[dict]]:
  """(pair rows: candidates 2k and 2k + 1; point rows: one per candidate) of an item; raises BadInput."""
  candidates = _candidates(item)
  video = task.startswith("video")
  if task.endswith("generation"):
    caption = {"prompt": _question(item)}
    pairs = [caption | {("videos" if video else "images"): candidates[k:k + 2]}
             for k in range(0, len(candidates), 2)]
    points = [caption | {("video" if video else "image"): c} for c in candidates]
    return pairs, points
  key = "video" if video else "image"
  if key not in item:
    raise inputs.BadInput(f"a {task} item needs {key!r}")
  base = {"question": _question(item), key: item[key]}
  pairs = [base | {"responses": candidates[k:k + 2]} for k in range(0, len(candidates), 2)]
  points = [base | {"response": c} for c in candidates]
  return pairs, points


def record(item: dict, task: str, selection: Selection, scores: Sequence) -> dict:
  """The training record of a kept pair, in the format of the task's trainer."""
  candidates = item["candidates"]
  chosen, rejected = candidates[selection.chosen], candidates[selection.rejected]
  out_scores = {"chosen_score": scores[selection.chosen], "rejected_score": scores[selection.rejected]}
  if task == "image_generation":
    return {"id": item["id"], "caption": _question(item), "jpg_0": chosen, "jpg_1": rejected,
            "label_0": 1} | out_scores
  if task == "video_generation":
    return {"id": item["id"], "caption": _question(item), "chosen": chosen, "rejected": rejected} | out_scores
  key = "video" if task.startswith("video") else "image"
  return {"id": item["id"], key: item[key], "prompt": _question(item), "chosen": chosen,
          "rejected": rejected} | out_scores


@dataclasses.dataclass
class PairBuilder:
  """Judges items with `pair_judge` (mode "pair") and `point_judge` (mode "point") of one task.

  official: read verdicts and scores from generated text with the released scripts' rules and select as they do
  (needs judges with method "generate").
  """
  pair_judge: Judge
  point_judge: Judge
  official: bool = False

  def __post_init__(self):
    if (self.pair_judge.task, self.pair_judge.mode, self.point_judge.mode) != (self.point_judge.task, "pair", "point"):
      raise UserError("PairBuilder needs a pair judge and a point judge of the same task")
    if self.official and not self.pair_judge.method == self.point_judge.method == "generate":
      raise UserError("official selection reads generated text: judge with method='generate'")

  @property
  def task(self) -> str:
    return self.pair_judge.task

  def _winner(self, result: dict) -> int | None:
    if self.official:
      return parse_pairwise_official(result["text"], self.task)
    return result["winner"]

  def _score(self, result: dict) -> float | None:
    if self.official:
      return float(parse_pointwise_official(result["text"]))
    return result["score"]

  def build(self, items: Sequence[dict], root: str | None = None) -> list[tuple[dict | None, dict]]:
    """Per item: (its training record, or None when dropped or failed; its judgement entry). An item that raises
    anything while it is prepared or selected from (malformed candidates, an unreadable file, ...) gets an entry
    with its "error" (`errors.row_error`), and the others go on."""
    rows, failures = [], {}
    for n, item in enumerate(items):
      try:
        rows.append(judge_rows(item, self.task))
      except Exception as e:   # noqa: BLE001 — whatever one item raises is its error; the others are judged
        failures[n] = row_error(e)
        rows.append(([], []))
    pair_results = iter(self.pair_judge.judge([r for pairs, _ in rows for r in pairs], root))
    point_results = iter(self.point_judge.judge([r for _, points in rows for r in points], root))
    out = []
    for n, (item, (pairs, points)) in enumerate(zip(items, rows)):
      verdicts = [next(pair_results) for _ in pairs]
      scored = [next(point_results) for _ in points]
      entry = {"id": item.get("id")}
      failed = [r["error"] for r in verdicts + scored if "error" in r]
      if n in failures or failed:
        out.append((None, entry | {"error": failures.get(n) or failed[0]}))
        continue
      try:
        kept, judgement = self._select(item, verdicts, scored)
      except Exception as e:   # noqa: BLE001 — as above
        out.append((None, entry | {"error": row_error(e)}))
        continue
      out.append((kept, entry | judgement))
    return out

  def _select(self, item: dict, verdicts: list[dict], scored: list[dict]) -> tuple[dict | None, dict]:
    """(the kept record or None, the judgement fields of the entry) of a judged item."""
    winners = [self._winner(r) for r in verdicts]
    scores = [self._score(r) for r in scored]
    selection = select(winners, scores, official=self.official,
                       string_scores=self.official and self.task in STRING_SCORE_TASKS)
    judgement = {"winners": winners, "scores": scores, "reason": selection.reason,
                 "chosen": selection.chosen, "rejected": selection.rejected,
                 "tied_pairs": selection.tied_pairs, "unreadable_pairs": selection.unreadable_pairs,
                 "unreadable_scores": selection.unreadable_scores}
    probs = [r["probs"] for r in verdicts if "probs" in r]
    if probs:
      judgement["pair_probs"] = probs
    return (record(item, self.task, selection, scores) if selection.kept else None), judgement


def sample_answers(policy, tokenizer, items: Sequence[dict], task: str, num_candidates: int = 10,
                   temperature: float = 0.7, max_new_tokens: int = 1024, seed: int = 0,
                   options: inputs.InputOptions = inputs.InputOptions(video_layout="pooled"),
                   root: str | None = None) -> list[list[str] | str]:
  """`num_candidates` sampled answers of a LLaVA policy per understanding item, or an error message per item.

  The policy sees LLaVA's prompt: the qwen_1_5 chat format with "<image>\\n" and the question; an image is tiled,
  a video goes in as its pooled frames (LLaVA-Video) unless `options` says otherwise. Sampling: temperature,
  `seed` (each item gets its own stream from its position). An item whose preparation raises anything (no
  question, an unreadable file, ...) gets its error message (`errors.row_error`) instead, and the others go on.
  """
  if not task.endswith("understanding"):
    raise UserError(f"policies answer understanding tasks; {task} candidates come from a generator")
  sampling_config(max_new_tokens, temperature=temperature)   # checks the settings
  processor = image_processor(policy.config)
  end_ids = end_token_ids(tokenizer)
  out: list[list[str] | str] = []
  config = policy.config
  for n, item in enumerate(items):
    try:
      question = _question(item)
      visuals = inputs.visual_inputs(item, task, "point", processor, options, root)
      rows = [prompt_ids(tokenizer, prompts.user_turn(question, len(visuals)))] * num_candidates
      copies = [v for _ in rows for v in visuals]
      input_ids, mask, _ = splice_markers(rows, [visual for visual, _ in copies], layout_config(config),
                                          config.image_token_id, config.video_token_id)
    except Exception as e:   # noqa: BLE001 — whatever one item raises is its error; the others are sampled
      out.append(row_error(e))
      continue
    tokens = policy.generate(input_ids, mask, visuals=copies, max_new_tokens=max_new_tokens, eos_token_id=end_ids,
                             temperature=temperature, seed=int(np.random.SeedSequence([seed, n]).generate_state(1)[0]))
    out.append([answer_text(tokenizer, row, end_ids) for row in tokens])
  return out
