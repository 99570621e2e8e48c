"""`ureward score`: rows in, results out, bad rows reported (never stopping the run), interrupted runs resumed, and a
report that renders."""

import json

import numpy as np
import pytest
from PIL import Image

from tests.chromium import headless, needs_chromium
from ureward_jax.cli import main
from ureward_jax.reward import inputs

ROWS = [
    {"id": "p1", "prompt": "a red circle", "images": ["red.png", "blue.png"]},
    {"id": "p2", "prompt": "a blue square", "images": ["blue.png", "a.png"]},
    {"id": "p3", "prompt": "a red circle", "images": ["red.png", "missing.png"]},
    {"id": "p4", "prompt": "", "images": ["red.png", "blue.png"]},
    {"prompt": "a green triangle", "images": ["c.png", "red.png"]},
]


def write_input(path, media):
  lines = [json.dumps(ROWS[0]), json.dumps(ROWS[1]), "{not json", json.dumps(ROWS[2]), json.dumps(ROWS[3]),
           json.dumps(ROWS[4]), json.dumps(ROWS[0] | {"prompt": "again"})]
  path.write_text("\n".join(lines) + "\n")
  return ["score", "--model", None, "--task", "image_generation", "--mode", "pair", "--input", str(path),
          "--media-root", media, "--batch-size", "2"]


def read(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def first_run(checkpoint, tmp_path_factory):
  _, _, _, folder, media = checkpoint
  tmp = tmp_path_factory.mktemp("cli")
  args = write_input(tmp / "in.jsonl", media)
  args[2] = str(folder)
  out = tmp / "out.jsonl"
  assert main(args + ["--output", str(out), "--report", str(tmp / "report.html")]) == 0
  return args, out, tmp


def test_results_and_errors_per_row(first_run):
  _, out, _ = first_run
  rows = read(out)
  results = {r["id"]: r for r in rows}
  assert len(rows) == 6 and set(results) == {"p1", "p2", "p3", "p4", "line 3", "line 6"}
  for key in ("p1", "p2", "line 6"):
    assert results[key]["winner"] in (0, 1, 2) and "error" not in results[key]
    assert abs(sum(results[key]["probs"].values()) - 1) < 1e-6 and results[key]["prompt"]
  assert "missing.png" in results["p3"]["error"]
  assert "'prompt'" in results["p4"]["error"]
  assert "unreadable line" in results["line 3"]["error"]


def test_a_bad_row_never_stops_the_run(checkpoint, huge_png, tmp_path, monkeypatch, capsys):
  """Between good rows: a 20000×20000 PNG, ids that are a list and a float, and a row whose preparation raises
  what no check foresaw. Each is written with an error naming its problem, the good rows are judged, and the run
  ends with status 0; a limit below the pictures' size refuses them all, naming their size."""
  _, _, _, folder, media = checkpoint
  pair = {"prompt": "a red circle", "images": ["red.png", "blue.png"]}
  rows = [{"id": "good1"} | pair, {"id": "huge", "prompt": "a red circle", "images": [huge_png, "red.png"]},
          {"id": ["a", "list"]} | pair, {"id": 2.5} | pair,
          {"id": "crash", "prompt": "a blue square", "images": ["c.png", "blue.png"]}, {"id": "good2"} | pair]
  (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  real = inputs.load_image

  def load_image(value, *args, **kwargs):
    if value == "c.png":
      raise RuntimeError("the decoder crashed")
    return real(value, *args, **kwargs)
  monkeypatch.setattr(inputs, "load_image", load_image)
  args = ["score", "--model", str(folder), "--task", "image_generation", "--mode", "pair", "--input",
          str(tmp_path / "in.jsonl"), "--media-root", media, "--batch-size", "2"]
  assert main(args + ["--output", str(tmp_path / "out.jsonl")]) == 0
  results = {r["id"]: r for r in read(tmp_path / "out.jsonl")}
  assert list(results) == ["good1", "huge", "line 3", "line 4", "crash", "good2"]
  assert all(results[key]["winner"] in (0, 1, 2) for key in ("good1", "good2"))
  assert "huge.png is 20000×20000 (400,000,000 pixels)" in results["huge"]["error"]
  assert "--max-pixels raises it" in results["huge"]["error"]
  assert results["line 3"]["error"] == "'id' must be a string or an integer, got ['a', 'list']"
  assert results["line 4"]["error"] == "'id' must be a string or an integer, got 2.5"
  assert results["crash"]["error"] == "RuntimeError: the decoder crashed"
  assert "2 judged, 4 with errors" in capsys.readouterr().err
  assert main(args + ["--output", str(tmp_path / "small.jsonl"), "--max-pixels", "6399"]) == 0
  small = {r["id"]: r["error"] for r in read(tmp_path / "small.jsonl")}
  assert "red.png is 80×80 (6,400 pixels), over the limit of 6,399" in small["good1"]


def test_rerun_resumes_after_an_interruption(first_run, tmp_path, capsys):
  args, out, _ = first_run
  complete = read(out)
  partial = tmp_path / "out.jsonl"
  lines = out.read_text().splitlines(keepends=True)
  partial.write_text("".join(lines[:2]) + lines[2][:15])   # killed while writing the third line
  assert main(args + ["--output", str(partial)]) == 0
  err = capsys.readouterr().err
  assert "2 already in" in err and "skipping 1 rows whose id an earlier row has (lines 7)" in err
  resumed = read(partial)
  assert [r["id"] for r in resumed] == [r["id"] for r in complete]
  for a, b in zip(resumed, complete):
    assert a.get("winner") == b.get("winner") and a.get("error") == b.get("error")
    assert a.get("probs", {}) == pytest.approx(b.get("probs", {}), abs=1e-6)
  assert main(args + ["--output", str(partial)]) == 0   # nothing left to do
  assert read(partial) == resumed


def test_bad_arguments_exit_with_a_message(checkpoint, tmp_path):
  _, _, _, folder, media = checkpoint
  args = write_input(tmp_path / "in.jsonl", media)
  args[2] = str(tmp_path)   # no checkpoint there
  with pytest.raises(SystemExit, match="config.json is missing"):
    main(args + ["--output", str(tmp_path / "o.jsonl")])
  (tmp_path / "model").mkdir()
  (tmp_path / "model" / "config.json").write_text(json.dumps(json.loads((folder / "config.json").read_text())))
  args[2] = str(tmp_path / "model")   # a checkpoint without its tokenizer
  with pytest.raises(SystemExit, match="tokenizer.json"):
    main(args + ["--output", str(tmp_path / "o.jsonl")])
  (tmp_path / "model" / "config.json").write_text(json.dumps({"model_type": "sdxl"}))
  with pytest.raises(SystemExit, match="holds a 'sdxl' checkpoint, not a LLaVA-OneVision model"):
    main(args + ["--output", str(tmp_path / "o.jsonl")])
  args[2] = str(folder)
  with pytest.raises(SystemExit, match="--max-pixels must be at least 1"):
    main(args + ["--output", str(tmp_path / "o.jsonl"), "--max-pixels", "0"])
  with pytest.raises(SystemExit, match="swap"):
    main(["score", "--model", str(folder), "--task", "image_generation", "--mode", "point", "--swap",
          "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "o.jsonl")])


@needs_chromium
def test_report_renders_in_headless_chromium(first_run, tmp_path):
  _, _, folder = first_run
  page = f"file://{folder / 'report.html'}"
  dom = headless(tmp_path / "profile", "--dump-dom", page).stdout
  assert dom.count('class="item"') == 6 and dom.count('class="verdict"') == 3 and "missing.png" in dom
  assert dom.count('class="bar"') == 9   # p(1), p(2), p(tie) of each judged pair
  shot = tmp_path / "shot.png"
  headless(tmp_path / "profile", f"--screenshot={shot}", "--window-size=1000,900", page)
  pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
  red = np.sum((pixels[..., 0] > 220) & (pixels[..., 1] < 40) & (pixels[..., 2] < 40))
  blue = np.sum((pixels[..., 2] > 220) & (pixels[..., 0] < 40) & (pixels[..., 1] < 40))
  assert red > 2000 and blue > 2000, (red, blue)   # the first pair's pictures are on screen
