"""The HTML report marks each judgement against the row's expected winner or score and counts the agreement."""

import numpy as np

from ureward_jax.reward.report import write_report


def test_expected_winners_and_scores_are_marked_and_counted(tmp_path):
  image = np.full((8, 8, 3), 128, np.uint8)
  rows = [{"id": "a", "prompt": "a red circle", "images": [image, image], "expected": 1},
          {"id": "b", "prompt": "a red circle", "images": [image, image], "expected": 2},
          {"id": "c", "prompt": "a red circle", "images": [image, image]},
          {"id": "d", "prompt": "a red circle", "images": [image, image], "expected": 1}]
  results = [{"winner": 1, "probs": {"1": 0.9, "2": 0.1}}, {"winner": 1, "probs": {"1": 0.6, "2": 0.4}},
             {"winner": 2, "probs": {"1": 0.2, "2": 0.8}}, {"error": "missing file x.png"}]
  path = tmp_path / "pairs.html"
  write_report(str(path), rows, results, "image_generation", "pair")
  page = path.read_text()
  assert "agrees with expected on 1 of 2" in page   # no expectation (c) and a failed row (d) are not counted
  assert page.count('class="expected agrees"') == 1 and page.count('class="expected disagrees"') == 1
  assert "expected: Image 2 is better" in page

  points = [{"id": "p", "prompt": "a red circle", "image": image, "expected": 5},
            {"id": "q", "prompt": "a red circle", "image": image, "expected": 1}]
  path = tmp_path / "points.html"
  write_report(str(path), points, [{"score": 4.7}, {"score": 2.0}], "image_generation", "point")
  page = path.read_text()
  assert "agrees with expected on 1 of 2" in page and "expected: score 5" in page
