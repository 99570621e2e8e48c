"""The PNG line chart: each series drawn in its colour where its values lie, the reference line, bad input refused."""

import numpy as np
import pytest
from PIL import Image

from ureward_jax.train.chart import HEIGHT, MARGIN, PALETTE, WIDTH, line_chart


def columns_of(pixels, color):
  return np.flatnonzero((pixels == color).all(-1).any(0))


def rows_of(pixels, color, column):
  return np.flatnonzero((pixels[:, column] == color).all(-1))


def test_each_series_is_drawn_where_its_values_are(tmp_path):
  path = tmp_path / "chart.png"
  line_chart(str(path), [0, 100, 200], {"high": [0.9, 0.9, 0.9], "rising": [0.1, 0.5, 0.9]}, title="accuracy",
             reference=0.5, reference_label="chance")
  pixels = np.asarray(Image.open(path).convert("RGB"))
  assert pixels.shape == (HEIGHT, WIDTH, 3)
  high, rising = PALETTE[0], PALETTE[1]
  plot = [c for c in columns_of(pixels, high) if c in set(columns_of(pixels, rising)) and MARGIN < c < WIDTH - 180]
  start, end = plot[0] + 6, plot[-1] - 6    # inside the plot, past the end points' dots
  # The constant series is level; the rising one starts far below it and ends at its height.
  assert abs(rows_of(pixels, high, start).mean() - rows_of(pixels, high, end).mean()) <= 1
  assert rows_of(pixels, rising, start).mean() > rows_of(pixels, high, start).mean() + 100
  assert abs(rows_of(pixels, rising, end).mean() - rows_of(pixels, high, end).mean()) <= 8   # its last stretch climbs


def test_series_of_the_wrong_length_are_refused(tmp_path):
  with pytest.raises(ValueError, match="one value per step"):
    line_chart(str(tmp_path / "c.png"), [0, 1], {"a": [0.5]}, title="t")
  with pytest.raises(ValueError, match="one value per step"):
    line_chart(str(tmp_path / "c.png"), [], {}, title="t")
  assert not (tmp_path / "c.png").exists()
