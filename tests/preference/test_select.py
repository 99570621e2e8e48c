"""The chosen/rejected rule on hand-built judgement tables: ties, unreadable verdicts and scores, equal scores."""

import pytest

from ureward_jax.preference.select import select

# Five pairs: (0, 1), (2, 3), (4, 5), (6, 7), (8, 9).
SCORES = [5, 1, 2, 7, 6, 3, 1, 4, 8, 2]


def test_best_scored_winner_against_worst_scored_loser():
  s = select([1, 2, 1, 2, 1], SCORES)
  # winners 0, 3, 4, 7, 8 (scores 5, 7, 6, 4, 8); losers 1, 2, 5, 6, 9 (scores 1, 2, 3, 1, 2)
  assert (s.chosen, s.rejected, s.reason, s.kept) == (8, 1, "kept", True)   # loser 1 is the first of the two 1s


def test_ties_and_unreadable_verdicts_leave_the_pools():
  s = select([0, None, 1, 2, 0], SCORES)
  # decided: pair 2 (4 beats 5) and pair 3 (7 beats 6): chosen among 4 (6), 7 (4); rejected among 5 (3), 6 (1)
  assert (s.chosen, s.rejected, s.tied_pairs, s.unreadable_pairs) == (4, 6, 2, 1)


def test_unreadable_scores_cannot_be_picked():
  scores = list(SCORES)
  scores[8] = None
  s = select([1, 2, 1, 2, 1], scores)
  assert (s.chosen, s.rejected, s.unreadable_scores) == (3, 1, 1)


def test_equal_scores_drop_the_prompt():
  s = select([1, 2, 1], [3.0] * 6)
  assert (s.chosen, s.rejected, s.reason, s.kept) == (None, None, "tied", False)
  # A chosen candidate scoring below the rejected one is dropped too.
  assert select([1], [2, 5]).reason == "tied"


def test_no_decided_pair_or_no_scores_is_undecided():
  assert select([0, None], [1, 2, 3, 4]).reason == "undecided"
  assert select([1, 1], [None, 2, None, 4]).reason == "undecided"


def test_official_behaviour_defaults_to_the_first_and_compares_strings():
  # Tie and unreadable verdicts make the first candidate the winner; a missing score is 0.
  s = select([0, None], [4, 9, 3, None], official=True)
  assert (s.chosen, s.rejected) == (0, 3)   # winners 0 (4), 2 (3); losers 1 (9), 3 (0)
  # As strings "10" < "9": the script keeps the 9 as chosen, where numbers would keep the 10.
  assert select([1, 1], [10, 1, 9, 2]).chosen == 0
  assert select([1, 1], [10, 1, 9, 2], official=True, string_scores=True).chosen == 2


def test_shapes_must_agree():
  with pytest.raises(ValueError, match="2 pairs need 4 scores"):
    select([1, 2], [1, 2, 3])
