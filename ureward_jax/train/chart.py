"""A line chart as a PNG, drawn with Pillow alone (the package needs no plotting library): the demo's accuracy per
task over training steps."""

from __future__ import annotations

from typing import Mapping, Sequence

from PIL import Image, ImageDraw

# Colour-blind-safe (Okabe–Ito), one per series in order.
PALETTE = ((0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0), (86, 180, 233))
WIDTH, HEIGHT, MARGIN = 720, 420, 56


def line_chart(path: str, steps: Sequence[int], series: Mapping[str, Sequence[float]], title: str,
               y_label: str = "", y_range: tuple[float, float] = (0.0, 1.0), reference: float | None = None,
               reference_label: str = "") -> None:
  """Writes a PNG of one line per named series over `steps` (same length each), y from y_range[0] to y_range[1];
  `reference` draws a dashed horizontal line (chance), labelled."""
  if not steps or any(len(v) != len(steps) for v in series.values()):
    raise ValueError("every series needs one value per step")
  image = Image.new("RGB", (WIDTH, HEIGHT), "white")
  draw = ImageDraw.Draw(image)
  left, top, right, bottom = MARGIN + 8, MARGIN, WIDTH - 180, HEIGHT - MARGIN
  low, high = y_range
  first, last = min(steps), max(steps)

  def x(step):
    return left + (right - left) * ((step - first) / (last - first) if last > first else 0.5)

  def y(value):
    return bottom - (bottom - top) * (min(max(value, low), high) - low) / (high - low)

  for k in range(6):   # horizontal grid and y ticks
    value = low + (high - low) * k / 5
    draw.line([(left, y(value)), (right, y(value))], fill=(225, 225, 225))
    draw.text((left - 8, y(value)), f"{value:g}", fill="black", anchor="rm")
  for step in sorted({first, last, *steps[::max(1, len(steps) // 6)]}):
    draw.text((x(step), bottom + 6), str(step), fill="black", anchor="ma")
  draw.rectangle([left, top, right, bottom], outline="black")
  if reference is not None:
    for start in range(int(left), int(right), 12):
      draw.line([(start, y(reference)), (min(start + 6, right), y(reference))], fill=(120, 120, 120))
    draw.text((right + 8, y(reference)), reference_label, fill=(120, 120, 120), anchor="lm")
  for n, (name, values) in enumerate(series.items()):
    color = PALETTE[n % len(PALETTE)]
    points = [(x(s), y(v)) for s, v in zip(steps, values)]
    if len(points) > 1:
      draw.line(points, fill=color, width=3)
    for px, py in points:
      draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
    draw.line([(right + 8, top + 12 + 20 * n), (right + 28, top + 12 + 20 * n)], fill=color, width=3)
    draw.text((right + 34, top + 12 + 20 * n), name, fill="black", anchor="lm")
  draw.text((WIDTH // 2, 16), title, fill="black", anchor="ma")
  draw.text(((left + right) / 2, HEIGHT - 20), "training step", fill="black", anchor="ma")
  if y_label:
    draw.text((8, top - 24), y_label, fill="black", anchor="la")
  image.save(path)
