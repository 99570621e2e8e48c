"""Reading verdicts and scores out of the reward model's text, never guessing.

`parse_pairwise` → 1 or 2 (that input is better), 0 (a tie), or None when the text states no verdict or several;
`parse_pointwise` → the number after the last "Final Score:" as a float, or None. The official scripts instead turn
an unreadable answer into "1 wins" or a score of 0 and read "3.7" as 3 (`../shared/reference` §4.1): those would
silently bias rankings, so a None here is reported by the callers and counted, not resolved.
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
