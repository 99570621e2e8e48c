"""UnifiedReward's rule for turning judged candidates into one preference pair (its `*sift*` scripts).

The N candidates of a prompt are judged as N / 2 pairs (0 vs 1, 2 vs 3, ...) and each is also point-scored. The
pair winners form the chosen pool and the losers the rejected pool; the final pair is the best-scored winner against
the worst-scored loser, and the prompt is dropped when that chosen candidate does not score strictly higher.

Default: a tied or unreadable pair verdict leaves both candidates out of the pools, a candidate without a readable
score cannot be picked, and scores compare as numbers. `official=True` reproduces the released scripts: a tie or an
unreadable verdict makes the first candidate the winner, a missing score counts as 0, and, where `string_scores`
(the video-understanding and both diffusion sifting scripts), scores compare as strings ("10" < "9").
"""

from __future__ import annotations

import dataclasses
from typing import Sequence


@dataclasses.dataclass(frozen=True)
class Selection:
  """chosen / rejected: candidate indices (None when dropped); reason: "kept", "tied" (chosen did not score
  higher), "undecided" (no decided pair, or no scored winner or loser); counts of tied and unreadable verdicts and
  unreadable scores among the judgements."""
  chosen: int | None
  rejected: int | None
  reason: str
  tied_pairs: int = 0
  unreadable_pairs: int = 0
  unreadable_scores: int = 0

  @property
  def kept(self) -> bool:
    return self.reason == "kept"


def select(winners: Sequence[int | None], scores: Sequence[float | None], official: bool = False,
           string_scores: bool = False) -> Selection:
  """The preference pair of one prompt.

  winners: per pair k (candidates 2k and 2k + 1), 1 or 2 for the better one, 0 for a tie, None when unreadable.
  scores: per candidate, its point score or None.
  """
  if len(scores) != 2 * len(winners):
    raise ValueError(f"{len(winners)} pairs need {2 * len(winners)} scores, got {len(scores)}")
  tied = sum(w == 0 for w in winners)
  unreadable = sum(w is None for w in winners)
  missing = sum(s is None for s in scores)
  pool_chosen, pool_rejected = [], []
  for k, winner in enumerate(winners):
    if winner not in (1, 2):
      if not official:
        continue
      winner = 1
    better, worse = (2 * k, 2 * k + 1) if winner == 1 else (2 * k + 1, 2 * k)
    pool_chosen.append(better)
    pool_rejected.append(worse)

  def key(i):
    score = 0 if scores[i] is None else scores[i]
    return str(int(score) if float(score).is_integer() else score) if string_scores else score

  if not official:
    pool_chosen = [i for i in pool_chosen if scores[i] is not None]
    pool_rejected = [i for i in pool_rejected if scores[i] is not None]
  counts = dict(tied_pairs=tied, unreadable_pairs=unreadable, unreadable_scores=missing)
  if not pool_chosen or not pool_rejected:
    return Selection(None, None, "undecided", **counts)
  chosen = max(pool_chosen, key=key)     # the first of equals, as Python's max and the scripts' index() pick
  rejected = min(pool_rejected, key=key)
  if key(chosen) <= key(rejected):
    return Selection(None, None, "tied", **counts)
  return Selection(chosen, rejected, "kept", **counts)
