"""`ureward generate`: N images per prompt and a candidates.jsonl that build-pairs reads, the library's images,
interrupted runs resumed without redoing finished work, and clear errors."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

import ureward_jax
from ureward_jax.cli import common, main
from ureward_jax.cli.generate import Prompt, read_prompts
from ureward_jax.preference.build import judge_rows

PROMPTS = ["the cat and the dog", "a red cat", "a blue dog", "the red and the blue"]
IDS = ["p00000", "p00001", "p00002", "p00003"]
# 4 prompts × 2 images in batches of 3, the last one padded; every call below keeps to that one compiled shape.
SETTINGS = ["--num-per-prompt", "2", "--height", "64", "--width", "64", "--seed", "3", "--batch-size", "3"]


def read(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def pixels(path):
  return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def loads():
  """The calls of `ureward_jax.load`: the first loads, later ones get the same pipeline (and its compiled step)."""
  real, calls, loaded = ureward_jax.load, [], []

  def load(*args, **kwargs):
    calls.append((args, kwargs))
    if not loaded:
      loaded.append(real(*args, **kwargs))
    return loaded[0]
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(ureward_jax, "load", load)
    yield calls, loaded


@pytest.fixture(scope="module")
def first_run(sdxl, loads, tmp_path_factory):
  tmp = tmp_path_factory.mktemp("generate")
  (tmp / "prompts.txt").write_text("\n\n".join(PROMPTS[:2]) + "\n   \n" + "\n".join(PROMPTS[2:]))
  args = ["generate", "--model", str(sdxl[2]), "--prompts", str(tmp / "prompts.txt"), *SETTINGS]
  assert main(args + ["--out", str(tmp / "out")]) == 0
  assert [str(a[0]) for a, _ in loads[0]] == [str(sdxl[2])] and loads[0][0][1] == {"dtype": np.float32}
  return args, tmp / "out"


@pytest.fixture(scope="module")
def pipeline(first_run, loads):
  return loads[1][0]


def test_images_and_candidates(first_run):
  _, out = first_run
  rows = read(out / "candidates.jsonl")
  assert rows == [{"id": i, "prompt": p, "candidates": [f"images/{i}_0.png", f"images/{i}_1.png"]}
                  for i, p in zip(IDS, PROMPTS)]
  assert sorted(f.name for f in (out / "images").iterdir()) == [f"{i}_{k}.png" for i in IDS for k in (0, 1)]
  for row in rows:
    for path in row["candidates"]:
      with Image.open(out / path) as image:
        assert image.format == "PNG" and image.mode == "RGB" and image.size == (64, 64)
  assert json.loads((out / "generate.json").read_text())["seed"] == 3


def test_images_are_the_librarys(first_run, pipeline):
  """Image k of prompt i is the pipeline's image numbered 2i + k, here asked for in another batch order (up to a
  rounding step where XLA sums in another order)."""
  _, out = first_run
  jobs = [(p, 2 * i + k, out / f"images/{IDS[i]}_{k}.png") for i, p in enumerate(PROMPTS) for k in (0, 1)][::-1]
  for start in (0, 3, 6):
    batch = (jobs[start:start + 3] * 2)[:3]
    want = pipeline([p for p, _, _ in batch], height=64, width=64, seed=3, indices=[n for _, n, _ in batch])
    for (_, _, path), image in zip(batch, want):
      assert np.abs(pixels(path).astype(int) - image).max() <= 1, path
  assert not np.array_equal(pixels(out / "images/p00000_0.png"), pixels(out / "images/p00000_1.png"))


def test_candidates_are_build_pairs_items(first_run):
  _, out = first_run
  for item in read(out / "candidates.jsonl"):
    pairs, points = judge_rows(item, "image_generation")
    assert len(pairs) == 1 and len(points) == 2 and pairs[0]["prompt"] == item["prompt"]
    assert all((out / point["image"]).is_file() for point in points)   # relative to the JSONL's folder


def test_rerun_repairs_and_resumes(first_run, tmp_path, monkeypatch, capsys):
  """Killed while writing p00002's line with p00002_0.png saved, p00002_1.png and p00003's images not: the cut
  line is dropped, the three images are made and both lines written; nothing else is rewritten."""
  args, out = first_run
  out = shutil.copytree(out, tmp_path / "out")
  complete = (out / "candidates.jsonl").read_text()
  lines = complete.splitlines(keepends=True)
  (out / "candidates.jsonl").write_text("".join(lines[:2]) + lines[2][:20])
  made = ["p00002_1.png", "p00003_0.png", "p00003_1.png"]
  for name in made:
    (out / "images" / name).unlink()
  mtimes = {f.name: f.stat().st_mtime_ns for f in (out / "images").iterdir()}
  capsys.readouterr()
  assert main(args + ["--out", str(out)]) == 0
  assert "2 prompts done, 0 with errors, 2 already in" in capsys.readouterr().err
  assert (out / "candidates.jsonl").read_text() == complete
  assert {f.name: f.stat().st_mtime_ns for f in (out / "images").iterdir() if f.name not in made} == mtimes
  for name in made:
    again = pixels(out / "images" / name).astype(int)
    assert np.abs(again - pixels(first_run[1] / "images" / name)).max() <= 1
  assert not list(out.glob("images/*.tmp"))

  def no_model(*a, **k):
    raise AssertionError("nothing is left to generate: the model must not be loaded")
  monkeypatch.setattr(ureward_jax, "load", no_model)
  assert main(args + ["--out", str(out)]) == 0
  assert "0 prompts done, 0 with errors, 4 already in" in capsys.readouterr().err
  assert (out / "candidates.jsonl").read_text() == complete


def test_saved_images_of_an_unfinished_prompt_are_kept(first_run, tmp_path, monkeypatch, capsys):
  """Killed after saving all of p00003's images but before its line (and p00002's newline): the newline and the
  line are written, no image is made."""
  args, out = first_run
  out = shutil.copytree(out, tmp_path / "out")
  complete = (out / "candidates.jsonl").read_text()
  (out / "candidates.jsonl").write_text("".join(complete.splitlines(keepends=True)[:3]).rstrip("\n"))
  monkeypatch.setattr(ureward_jax, "load", None)
  assert main(args + ["--out", str(out)]) == 0
  assert "0 images written, 2 kept" in capsys.readouterr().err
  assert (out / "candidates.jsonl").read_text() == complete


def test_a_bad_prompt_line_is_an_error_row(first_run, pipeline, tmp_path, capsys):
  """Malformed lines of a .jsonl are written in their place as {"id", "error"} (which build-pairs reads as errors)
  and counted; the other prompts are generated, a later duplicate id skipped. A malformed line keeps its position:
  the prompt on line 7 is p00006 and draws the noise of index 6."""
  args, _ = first_run
  lines = [json.dumps({"id": "cat", "prompt": PROMPTS[1]}), "{not json", json.dumps({"id": [1], "prompt": "x"}),
           json.dumps({"id": "a/b", "prompt": "y"}), json.dumps({"id": "e", "text": "no prompt"}),
           json.dumps({"id": "cat", "prompt": "again"}), json.dumps({"prompt": PROMPTS[2]})]
  (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
  out = tmp_path / "out"
  assert main(args[:3] + ["--prompts", str(tmp_path / "p.jsonl")] + args[5:] + ["--out", str(out)]) == 0
  err = capsys.readouterr().err
  assert "2 prompts done, 4 with errors, 0 already in" in err and "(lines 6)" in err
  rows = read(out / "candidates.jsonl")
  assert [(r["id"], "error" in r) for r in rows] == [("cat", False), ("line 2", True), ("line 3", True),
                                                     ("a/b", True), ("e", True), ("p00006", False)]
  assert rows[1]["error"].startswith("unreadable line: not a JSON object")
  assert rows[2]["error"] == "'id' must be a string or an integer, got [1]"
  assert "cannot name image files" in rows[3]["error"] and "'prompt'" in rows[4]["error"]
  assert rows[5]["candidates"] == ["images/p00006_0.png", "images/p00006_1.png"]
  assert sorted(f.name for f in (out / "images").iterdir()) == ["cat_0.png", "cat_1.png", "p00006_0.png",
                                                                "p00006_1.png"]
  want = pipeline([PROMPTS[2]] * 3, height=64, width=64, seed=3, indices=[12, 13, 13])
  for k in (0, 1):
    assert np.abs(pixels(out / f"images/p00006_{k}.png").astype(int) - want[k]).max() <= 1
  items = common.read_rows(str(out / "candidates.jsonl"))
  assert [item["id"] for item in items if "error" in item] == ["line 2", "line 3", "a/b", "e"]


def test_other_settings_are_refused(first_run, tmp_path):
  args, out = first_run
  out = shutil.copytree(out, tmp_path / "out")
  with pytest.raises(SystemExit, match=r"--seed 3 \(now 4\)"):
    main(args + ["--out", str(out), "--seed", "4"])


def test_bad_model_folders(sdxl, first_run, tmp_path):
  args, _ = first_run
  args = args + ["--out", str(tmp_path / "out")]
  with pytest.raises(SystemExit, match="not a converted SDXL pipeline folder: .*config.json is missing"):
    main(args[:2] + [str(tmp_path)] + args[3:])
  with pytest.raises(SystemExit, match="not an SDXL pipeline folder: its model_type is 'unet2d_condition'"):
    main(args[:2] + [str(sdxl[2] / "unet")] + args[3:])
  assert not (tmp_path / "out").exists()


def test_prompt_files(tmp_path, capsys):
  (tmp_path / "a.txt").write_bytes(b"\n one \n\nbad \xff\ntwo\n")
  assert read_prompts(str(tmp_path / "a.txt")) == [
      Prompt(0, 2, "p00000", "one"), Prompt(1, 4, "line 4", None, "not UTF-8 text (invalid start byte at byte 4)"),
      Prompt(2, 5, "p00002", "two")]
  rows = [{"id": "cat", "prompt": "a cat"}, {"caption": "a dog"}, {"id": 7, "caption": "seven"},
          {"id": "7", "prompt": "a file name 7 already has"}, {"id": "cat", "text": "no prompt, a taken id"}]
  (tmp_path / "b.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n\n")
  assert read_prompts(str(tmp_path / "b.jsonl")) == [Prompt(0, 1, "cat", "a cat"), Prompt(1, 2, "p00001", "a dog"),
                                                      Prompt(2, 3, 7, "seven")]
  assert "skipping 2 rows whose id an earlier row has (lines 4, 5)" in capsys.readouterr().err


@pytest.mark.parametrize("text, message", [
    ("\n \n", "holds no prompts$"),
    ('{"id": "a/b", "prompt": "x"}\n', "holds no prompts \\(line 1: id 'a/b' cannot name image files\\)"),
    ('{"id": "a", "text": "x"}\n', "holds no prompts \\(line 1: .*'prompt' \\(or 'caption'\\)"),
])
def test_bad_prompt_files(tmp_path, text, message):
  (tmp_path / "p.jsonl").write_text(text)
  with pytest.raises(SystemExit, match=message):   # before the model folder is looked at
    main(["generate", "--model", str(tmp_path), "--prompts", str(tmp_path / "p.jsonl"), "--num-per-prompt", "2",
          "--out", str(tmp_path / "out")])


def test_bad_numbers(tmp_path, capsys):
  (tmp_path / "p.txt").write_text("a cat\n")
  args = ["generate", "--model", str(tmp_path), "--prompts", str(tmp_path / "p.txt"), "--out", str(tmp_path / "out")]
  with pytest.raises(SystemExit, match="--num-per-prompt must be at least 1"):
    main(args + ["--num-per-prompt", "0"])
  with pytest.raises(SystemExit, match="config.json is missing"):
    main(args + ["--num-per-prompt", "3"])
  assert "--num-per-prompt 3 is odd" in capsys.readouterr().err
