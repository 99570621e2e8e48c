"""A static HTML page of judged rows, so people can look at what the model decided.

Each row shows its media side by side (images as thumbnails, videos as strips of their sampled frames), the prompt
or question (and the responses), the verdict or score, the probabilities as bars, the generated text when there is
one, any error, and, where a row carries an "expected" winner or score (ground truth, as the shapes demo's rows do),
that expectation marked as agreeing or not, with the agreement counted in the heading. Pictures are embedded as JPEG data URIs: the page is one self-contained file.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Sequence

import numpy as np
from PIL import Image

from ureward_jax.errors import row_error
from ureward_jax.reward import inputs

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 20px; }
.item { border: 1px solid #ccc; border-radius: 6px; padding: 12px; margin: 12px 0; }
.media { display: flex; gap: 12px; flex-wrap: wrap; }
.media figure { margin: 0; padding: 4px; border: 3px solid transparent; }
.media figure.winner { border-color: #2a8f3c; }
.media img { display: block; max-height: 256px; }
.verdict { font-weight: bold; margin: 8px 0; }
.bar { display: flex; align-items: center; gap: 8px; font-size: 13px; }
.bar span.fill { display: inline-block; height: 10px; background: #4a78c2; }
.error { color: #b00020; font-weight: bold; }
.responses { white-space: pre-wrap; }
.expected { margin: 4px 0; }
.expected.agrees { color: #2a8f3c; }
.expected.disagrees { color: #b00020; }
pre { white-space: pre-wrap; background: #f6f6f6; padding: 8px; }
"""


def _data_uri(pixels: np.ndarray, height: int) -> str:
  image = Image.fromarray(pixels)
  width = max(1, round(image.width * height / image.height))
  buffer = io.BytesIO()
  image.resize((width, height), Image.Resampling.BICUBIC).save(buffer, format="JPEG", quality=85)
  return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _picture(value, video: bool, root: str | None, options: inputs.InputOptions) -> str:
  """An <img> of an image, or of a video's sampled frames side by side; a note when it cannot be read."""
  try:
    if video:
      frames = inputs.load_frames(value, root, options)
      strip = np.concatenate([np.asarray(Image.fromarray(f).resize((96, 96))) for f in frames], axis=1)
      return f'<img src="{_data_uri(strip, 96)}" alt="video frames">'
    return f'<img src="{_data_uri(inputs.load_image(value, root, max_pixels=options.max_pixels), 256)}" alt="image">'
  except Exception as e:   # noqa: BLE001 — one picture that cannot be shown is noted in its place
    return f'<span class="error">{html.escape(row_error(e))}</span>'


def _verdict(result: dict, task: str, mode: str) -> str:
  if "error" in result:
    return f'<div class="error">error: {html.escape(result["error"])}</div>'
  if mode == "point":
    score = result.get("score")
    text = "score unreadable" if score is None else f"score {score:.3g}"
    if "mass" in result:
      text += f" (in-range mass {result['mass']:.2f})"
    return f'<div class="verdict">{text}</div>'
  return f'<div class="verdict">{_verdict_name(task, result.get("winner"))}</div>'


def _verdict_name(task: str, winner) -> str:
  what = "Image" if task == "image_generation" else "Video" if task == "video_generation" else "Response"
  return {1: f"{what} 1 is better", 2: f"{what} 2 is better", 0: "tie"}.get(winner, "verdict unreadable")


def _agrees(row: dict, result: dict, mode: str) -> bool | None:
  """Whether the judgement matches the row's "expected" (a winner, or a score to within half a point); None when the
  row has none or the judgement failed."""
  expected = row.get("expected")
  if not isinstance(expected, (int, float)) or isinstance(expected, bool) or "error" in result:
    return None
  if mode == "pair":
    return result.get("winner") == expected
  return result.get("score") is not None and abs(result["score"] - expected) <= 0.5


def _expected(row: dict, result: dict, task: str, mode: str) -> str:
  agrees = _agrees(row, result, mode)
  if agrees is None:
    return ""
  text = _verdict_name(task, row["expected"]) if mode == "pair" else f"score {row['expected']:g}"
  mark = "agrees" if agrees else "disagrees"
  return f'<div class="expected {mark}">expected: {html.escape(text)} ({"✓" if agrees else "✗"})</div>'


def _bars(probs: dict) -> str:
  rows = [f'<div class="bar"><span>{html.escape(k)}</span><span class="fill" style="width:{200 * p:.0f}px">'
          f'</span><span>{p:.3f}</span></div>' for k, p in probs.items()]
  return "".join(rows)


def _item(row: dict, result: dict, task: str, mode: str, root: str | None, options: inputs.InputOptions) -> str:
  video = task.startswith("video")
  parts = [f'<div class="item" data-id="{html.escape(str(row.get("id", "")))}">',
           f'<div><b>{html.escape(str(row.get("id", "")))}</b></div>']
  try:
    key = inputs.media_key(row, task, mode)
    values = row[key] if key in ("images", "videos") else [row[key]]
  except inputs.BadInput:
    values = []
  figures = []
  for i, value in enumerate(values if isinstance(values, list) else [], 1):
    winner = mode == "pair" and task.endswith("generation") and result.get("winner") == i
    label = f"{'Video' if video else 'Image'} {i}" if len(values) > 1 else ""
    figures.append(f'<figure class="{"winner" if winner else ""}">{_picture(value, video, root, options)}'
                   f'<figcaption>{label}</figcaption></figure>')
  parts.append(f'<div class="media">{"".join(figures)}</div>')
  for key in ("prompt", "question"):
    if isinstance(row.get(key), str):
      parts.append(f"<p><i>{key}:</i> {html.escape(row[key])}</p>")
  if isinstance(row.get("responses"), list):
    parts += [f'<p class="responses"><i>response {i}:</i> {html.escape(str(r))}</p>'
              for i, r in enumerate(row["responses"], 1)]
  if isinstance(row.get("response"), str):
    parts.append(f'<p class="responses"><i>response:</i> {html.escape(row["response"])}</p>')
  parts.append(_verdict(result, task, mode))
  parts.append(_expected(row, result, task, mode))
  if isinstance(result.get("probs"), dict):
    parts.append(_bars(result["probs"]))
  for key in ("text", "text_swapped"):
    if isinstance(result.get(key), str):
      parts.append(f"<details><summary>{'answer' if key == 'text' else 'answer, order swapped'}</summary>"
                   f"<pre>{html.escape(result[key])}</pre></details>")
  parts.append("</div>")
  return "".join(parts)


def write_report(path: str, rows: Sequence[dict], results: Sequence[dict], task: str, mode: str,
                 root: str | None = None, options: inputs.InputOptions = inputs.InputOptions(num_frames=8)) -> None:
  """Write the page for `rows` and their `results` (as `Judge.judge` returns them) to `path`."""
  items = "".join(_item(row, result, task, mode, root, options) for row, result in zip(rows, results))
  checked = [a for a in (_agrees(row, result, mode) for row, result in zip(rows, results)) if a is not None]
  summary = f" · agrees with expected on {sum(checked)} of {len(checked)}" if checked else ""
  page = (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>ureward: {task} {mode}</title>'
          f"<style>{_STYLE}</style></head><body><h1>{task} · {mode} · {len(rows)} rows{summary}</h1>{items}"
          "</body></html>")
  with open(path, "w", encoding="utf-8") as f:
    f.write(page)
