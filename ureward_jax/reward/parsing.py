"""Reading verdicts and scores out of the reward model's text, never guessing.

`parse_pairwise` → 1 or 2 (that input is better), 0 (a tie), or None when the text states no verdict or several;
`parse_pointwise` → the number after the last "Final Score:" as a float, or None. The official scripts instead turn
an unreadable answer into "1 wins" or a score of 0 and read "3.7" as 3: those would silently bias rankings, so a
None here is reported by the callers and counted, not resolved. The `*_official` functions reproduce the scripts'
rules, for regenerating their preference data exactly.
"""

from __future__ import annotations

import re

# "Image 1 is better", "Video 2 is better than Video 1", "Answer 1 is the better", "Response 2 is better".
_BETTER = re.compile(r"\b(?:image|video|answer|response)\s*([12])\s+is\s+(?:the\s+)?better\b", re.IGNORECASE)
_TIE = re.compile(r"\bboth\b[^.\n]*?\bequally\s+good\b", re.IGNORECASE)
_JUDGMENT = re.compile(r"overall\s+judge?ment", re.IGNORECASE)
_FINAL_SCORE = re.compile(r"final\s+score\s*:", re.IGNORECASE)
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def _plain(text: str) -> str:
  """Markdown emphasis and code marks removed: "**Image 1** is better" reads as "Image 1 is better"."""
  return re.sub(r"[*_`]+", "", text)


def parse_pairwise(text: str) -> int | None:
  """1 | 2 for the better input, 0 for "Both ... are equally good", None for no verdict or contradictory ones.

  With an "Overall Judgment" in the text, only what follows its last occurrence counts, as in the official
  DPO-construction script.
  """
  text = _plain(text)
  judgments = list(_JUDGMENT.finditer(text))
  if judgments:
    text = text[judgments[-1].end():]
  winners = {int(m.group(1)) for m in _BETTER.finditer(text)}
  tie = _TIE.search(text) is not None
  if len(winners) == 1 and not tie:
    return winners.pop()
  if tie and not winners:
    return 0
  return None


def parse_pointwise(text: str) -> float | None:
  """The first number after the last "Final Score:" (decimals kept; "85/100" → 85.0), or None if there is none."""
  text = _plain(text)
  markers = list(_FINAL_SCORE.finditer(text))
  if not markers:
    return None
  number = _NUMBER.search(text, markers[-1].end())
  return float(number.group()) if number else None


def parse_pairwise_official(text: str, task: str) -> int:
  """The released preference-construction scripts' reading of a verdict: never None.

  Generation sifting: 2 when the text holds "Image 2 is better than Image 1" (or the Video form), else 1 (ties and
  unreadable answers included). Understanding: the text after the last "Overall Judgment" up to its first "."; 2
  for "Answer 2 is better", else 1 (the image-understanding script's rule, applied to video understanding too).
  """
  if task.endswith("generation"):
    return 2 if "Image 2 is better than Image 1" in text or "Video 2 is better than Video 1" in text else 1
  judgment = text.rsplit("Overall Judgment", 1)[-1].split(".", 1)[0]
  return 2 if "Answer 2 is better" in judgment and "Answer 1 is better" not in judgment else 1


def parse_pointwise_official(text: str) -> int:
  """The released scripts' score: the first integer after the last "Final Score:" (decimals cut, "3.7" → 3), else
  the first integer anywhere, else 0."""
  after = text.rsplit("Final Score:", 1)[1] if "Final Score:" in text else text
  number = re.search(r"\d+", after) or re.search(r"\d+", text)
  return int(number.group()) if number else 0
