"""Bad inputs against every entry point: `ureward` (score, eval, build-pairs, generate), the converters and
`launch.train` / `launch.aot`. Each case makes one bad input in a fresh folder of the user's files and asserts what a
user relies on: the exit status (1 for a user error, 2 for a bad command line, 130 for Ctrl-C, 0 when a bad row is
marked and the run goes on), one `error:` line naming the item (or the bad row's error naming it) and no traceback,
and every file of the user's untouched (checksums before and after) except the results a command appends to, where
what was there stays as it was.

`ureward` and the converters run in this process through their `main` (the same boundary as the installed
commands; a few runs as real programs close the file), `launch/*` as programs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from ureward_jax.errors import INTERRUPTED

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class World:
  """What a case builds its bad input from: the user's folder `tmp`, the tiny reward model (ours and its
  transformers source), its media, the tiny SDXL pipeline (diffusers source and ours), launch data."""
  tmp: Path
  model: Path
  hf: Path
  media: Path
  sdxl_source: Path
  sdxl: Path

  def file(self, name: str, text: str | bytes) -> Path:
    path = self.tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path

  def media_file(self, name: str) -> Path:
    """A path for a new media file `name` in the user's copy of the media folder (`tmp/media`)."""
    if not (self.tmp / "media").exists():
      self.copy(self.media, "media")
    return self.tmp / "media" / name

  def rows(self, name: str, rows: list) -> Path:
    return self.file(name, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))

  def copy(self, source: Path, name: str, without: tuple[str, ...] = ()) -> Path:
    """A copy of the folder `source` as the user's `name`, leaving out the top-level entries `without`."""
    target = self.tmp / name
    for path in sorted(source.rglob("*")):
      relative = path.relative_to(source)
      if relative.parts[0] in without or path.is_dir():
        continue
      (target / relative).parent.mkdir(parents=True, exist_ok=True)
      (target / relative).write_bytes(path.read_bytes())
    return target


@dataclasses.dataclass
class Expect:
  argv: list[str]
  names: str                                  # the error line (or the bad row's error) contains this
  appended: tuple[Path, ...] = ()             # results the command appends to: what was there stays a prefix
  created: tuple[Path, ...] = ()              # paths the command may create (and everything under them)
  error_row: Path | None = None               # exit 0: the results file holding the bad row
  check: Callable[[], None] | None = None     # anything else the case asserts afterwards


CASES: dict[str, tuple[str, int, Callable]] = {}


def case(command: str, code: int):
  """Register `build(world, monkeypatch) -> Expect` as a case of `command` ending with exit status `code`."""
  def register(build):
    CASES[f"{command}:{build.__name__}"] = (command, code, build)
    return build
  return register


def read(path: Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines()]


PAIR = {"id": "good", "prompt": "a red circle", "images": ["red.png", "blue.png"]}


def score(w: World, rows_file: Path, *extra: str, model: Path | None = None) -> list[str]:
  return ["score", "--model", str(model or w.model), "--task", "image_generation", "--mode", "pair", "--input",
          str(rows_file), "--output", str(w.tmp / "out.jsonl"), "--media-root", str(w.media), *extra]


# --- ureward score: the command line, the model folder, the files ----------------------------------------------


@case("ureward", 2)
def unknown_task(w, _):
  argv = score(w, w.rows("in.jsonl", [PAIR]))
  argv[argv.index("--task") + 1] = "image_captioning"
  return Expect(argv, "invalid choice")


@case("ureward", 2)
def no_arguments(w, _):
  return Expect(["score"], "required")


@case("ureward", 1)
def model_folder_missing(w, _):
  return Expect(score(w, w.rows("in.jsonl", [PAIR]), model=w.tmp / "nowhere"), "nowhere")


@case("ureward", 1)
def model_folder_without_config(w, _):
  model = w.copy(w.model, "model", without=("config.json",))
  return Expect(score(w, w.rows("in.jsonl", [PAIR]), model=model), "config.json is missing")


def damaged_model(w: World, name: str, text: str) -> Path:
  """A copy of the tiny model whose file `name` holds `text`."""
  model = w.copy(w.model, "model")
  (model / name).write_text(text)
  return model


@case("ureward", 1)
def model_config_not_json(w, _):
  model = damaged_model(w, "config.json", "{not json")
  return Expect(score(w, w.rows("in.jsonl", [PAIR]), model=model), "config.json is not valid JSON")


@case("ureward", 1)
def model_is_a_file(w, _):
  return Expect(score(w, w.rows("in.jsonl", [PAIR]), model=w.file("model.bin", b"weights")), "model.bin")


@case("ureward", 1)
def model_of_another_kind(w, _):
  return Expect(score(w, w.rows("in.jsonl", [PAIR]), model=w.sdxl), "not a LLaVA-OneVision model")


@case("ureward", 1)
def tokenizer_not_readable(w, _):
  model = damaged_model(w, "tokenizer.json", "{truncated")
  return Expect(score(w, w.rows("in.jsonl", [PAIR]), model=model), "tokenizer.json")


@case("ureward", 1)
def params_missing(w, _):
  model = w.copy(w.model, "model", without=("params",))
  return Expect(score(w, w.rows("in.jsonl", [PAIR]), model=model), "params")


@case("ureward", 1)
def input_missing(w, _):
  return Expect(score(w, w.tmp / "absent.jsonl"), "absent.jsonl")


@case("ureward", 1)
def input_is_a_folder(w, _):
  (w.tmp / "rows").mkdir()
  return Expect(score(w, w.tmp / "rows"), "rows")


@case("ureward", 1)
def output_folder_missing(w, _):
  argv = score(w, w.rows("in.jsonl", [PAIR]))
  argv[argv.index("--output") + 1] = str(w.tmp / "no" / "such" / "out.jsonl")
  return Expect(argv, "out.jsonl")


@case("ureward", 1)
def output_under_a_file(w, _):
  argv = score(w, w.rows("in.jsonl", [PAIR]))
  argv[argv.index("--output") + 1] = str(w.file("notes.txt", "mine") / "out.jsonl")
  return Expect(argv, "notes.txt")


@case("ureward", 1)
def output_is_a_folder(w, _):
  (w.tmp / "results").mkdir()
  argv = score(w, w.rows("in.jsonl", [PAIR]))
  argv[argv.index("--output") + 1] = str(w.tmp / "results")
  return Expect(argv, "results")


@case("ureward", 1)
def output_damaged_mid_file(w, _):
  w.rows("out.jsonl", [{"id": "a", "winner": 1}, "{edited by hand", {"id": "b", "winner": 2}])
  return Expect(score(w, w.rows("in.jsonl", [PAIR])), "out.jsonl:2")


@case("ureward", 1)
def report_folder_missing(w, _):
  """The rows are judged and on disk before the report fails."""
  out = w.tmp / "out.jsonl"

  def check():
    assert [r["id"] for r in read(out)] == ["good"]
  return Expect(score(w, w.rows("in.jsonl", [PAIR]), "--report", str(w.tmp / "no" / "report.html")), "report.html",
                created=(out,), check=check)


@case("ureward", 1)
def batch_size_zero(w, _):
  return Expect(score(w, w.rows("in.jsonl", [PAIR]), "--batch-size", "0"), "--batch-size")


@case("ureward", 1)
def official_without_generate(w, _):
  return Expect(["eval", "--benchmark", "genai_image", "--model", str(w.model), "--input",
                 str(w.rows("in.jsonl", [PAIR])), "--output", str(w.tmp / "out.jsonl"), "--official"],
                "--method generate")


@case("ureward", 130)
def ctrl_c_keeps_the_batches_done(w, monkeypatch):
  """Interrupted during the second batch: the first batch's row is on disk, and a re-run resumes after it."""
  from ureward_jax.reward.scoring import Judge
  real, calls = Judge.judge, []

  def judge(self, rows, root=None):
    calls.append(len(rows))
    if len(calls) == 2:
      raise KeyboardInterrupt
    return real(self, rows, root)
  monkeypatch.setattr(Judge, "judge", judge)
  out = w.tmp / "out.jsonl"

  def check():
    assert [r["id"] for r in read(out)] == ["good"]   # the first batch, on disk for a re-run to skip
  rows = w.rows("in.jsonl", [PAIR, PAIR | {"id": "second"}])
  return Expect(score(w, rows, "--batch-size", "1"), INTERRUPTED, created=(out,), check=check)


# --- ureward score: bad rows are marked, the others judged --------------------------------------------------------


def bad_row(w: World, row, *extra: str, names: str) -> Expect:
  """`row` between two good rows: exit 0, the good rows judged, the bad one written with an error naming `names`."""
  out = w.tmp / "out.jsonl"
  rows = w.rows("in.jsonl", [PAIR, row, PAIR | {"id": "after"}])

  def check():
    results = {r["id"]: r for r in read(out)}
    assert "error" not in results["good"] and "error" not in results["after"], results
    assert results["good"]["winner"] in (0, 1, 2)
  return Expect(score(w, rows, "--batch-size", "1", *extra), names, created=(out,), error_row=out, check=check)


def big_png(path: Path, side: int) -> Path:
  """A `side`² one-bit PNG: a few kilobytes on disk, `side`² pixels once decoded."""
  Image.new("1", (side, side)).save(path, optimize=True)
  return path


@case("ureward", 0)
def decompression_bomb(w, _):
  big_png(w.media_file("bomb.png"), 20000)
  return bad_row(w, {"id": "bomb", "prompt": "a bomb", "images": ["bomb.png", "red.png"]}, "--media-root",
                 str(w.tmp / "media"), names="20000")


@case("ureward", 0)
def over_max_pixels(w, _):
  big_png(w.media_file("wide.png"), 300)
  return bad_row(w, {"id": "wide", "prompt": "wide", "images": ["wide.png", "red.png"]}, "--media-root",
                 str(w.tmp / "media"), "--max-pixels", "50000", names="300")


@case("ureward", 0)
def corrupt_image(w, _):
  return bad_row(w, {"id": "broken", "prompt": "x", "images": ["broken.png", "red.png"]}, names="broken.png")


@case("ureward", 0)
def missing_image(w, _):
  return bad_row(w, {"id": "gone", "prompt": "x", "images": ["gone.png", "red.png"]}, names="gone.png")


@case("ureward", 0)
def row_not_json(w, _):
  return bad_row(w, "{not json", names="unreadable line")


@case("ureward", 0)
def row_id_a_list(w, _):
  return bad_row(w, {"id": ["a", "b"], "prompt": "x", "images": ["red.png", "blue.png"]}, names="id")


@case("ureward", 0)
def prompt_a_number(w, _):
  return bad_row(w, {"id": "number", "prompt": 7, "images": ["red.png", "blue.png"]}, names="must be text, got int 7")


@case("ureward", 0)
def one_image_for_a_pair(w, _):
  return bad_row(w, {"id": "one", "prompt": "x", "images": ["red.png"]}, names="'images'")


# --- ureward eval, build-pairs, generate ------------------------------------------------------------------------


@case("ureward", 0)
def malformed_benchmark_record(w, _):
  good = {"id": "g", "prompt": "a red circle", "left_image": "red.png", "right_image": "blue.png",
          "vote_type": "leftvote"}
  out = w.tmp / "out.jsonl"
  rows = w.rows("in.jsonl", [good, {"id": "bad", "prompt": "a red circle"}, good | {"id": "g2"}])
  return Expect(["eval", "--benchmark", "genai_image", "--model", str(w.model), "--input", str(rows), "--output",
                 str(out), "--media-root", str(w.media)], "no 'left_image' field", created=(out,), error_row=out)


@case("ureward", 0)
def malformed_candidates(w, _):
  out, log = w.tmp / "pairs.jsonl", w.tmp / "pairs.judgements.jsonl"
  items = w.rows("items.jsonl", [{"id": "bad", "question": "what colour?", "image": "red.png", "candidates": "red"},
                                 {"id": "ok", "question": "what colour?", "image": "red.png",
                                  "candidates": ["red", "blue"]}])
  return Expect(["build-pairs", "--model", str(w.model), "--task", "image_understanding", "--input", str(items),
                 "--output", str(out), "--media-root", str(w.media)], "candidates", created=(out, log),
                error_row=log)


@case("ureward", 1)
def policy_folder_missing(w, _):
  items = w.rows("items.jsonl", [{"id": "q", "question": "what colour?", "image": "red.png"}])
  return Expect(["build-pairs", "--model", str(w.model), "--task", "image_understanding", "--input", str(items),
                 "--output", str(w.tmp / "pairs.jsonl"), "--policy", str(w.tmp / "policy")], "policy",
                created=(w.tmp / "pairs.jsonl", w.tmp / "pairs.judgements.jsonl"))


@case("ureward", 1)
def negative_policy_seed(w, _):
  items = w.rows("items.jsonl", [{"id": "q", "question": "what colour?", "image": "red.png"}])
  return Expect(["build-pairs", "--model", str(w.model), "--task", "image_understanding", "--input", str(items),
                 "--output", str(w.tmp / "pairs.jsonl"), "--policy", str(w.model), "--seed", "-1"], "--seed")


def generate(w: World, prompts: Path, out: Path, *extra: str) -> list[str]:
  return ["generate", "--model", str(w.sdxl), "--prompts", str(prompts), "--num-per-prompt", "2", "--height", "64",
          "--width", "64", "--out", str(out), *extra]


@case("ureward", 1)
def generate_into_a_users_folder(w, _):
  w.file("photos/holiday.png", b"the user's photo")
  return Expect(generate(w, w.file("prompts.txt", "a cat\n"), w.tmp / "photos"), "holiday.png")


@case("ureward", 1)
def generate_out_is_a_file(w, _):
  return Expect(generate(w, w.file("prompts.txt", "a cat\n"), w.file("out", "mine")), "out")


@case("ureward", 1)
def generate_prompts_missing(w, _):
  return Expect(generate(w, w.tmp / "absent.txt", w.tmp / "out"), "absent.txt")


@case("ureward", 1)
def generate_no_prompts(w, _):
  return Expect(generate(w, w.file("prompts.txt", "\n  \n"), w.tmp / "out"), "no prompts")


@case("ureward", 1)
def generate_model_not_a_pipeline(w, _):
  argv = generate(w, w.file("prompts.txt", "a cat\n"), w.tmp / "out")
  argv[argv.index("--model") + 1] = str(w.model)
  return Expect(argv, "not an SDXL pipeline folder")


@case("ureward", 0)
def generate_bad_prompt_line(w, _):
  out = w.tmp / "out"
  prompts = w.rows("prompts.jsonl", [{"id": "cat", "prompt": "a cat"}, {"id": "empty", "prompt": ""},
                                     {"id": "dog", "prompt": "a dog"}])

  def check():
    rows = {r["id"]: r for r in read(out / "candidates.jsonl")}
    assert len(rows["cat"]["candidates"]) == 2 and len(rows["dog"]["candidates"]) == 2, rows
  return Expect(generate(w, prompts, out), "prompt", created=(out,), error_row=out / "candidates.jsonl", check=check)


# --- converters ---------------------------------------------------------------------------------------------------


def llava(src: Path, dst: Path, *extra: str) -> list[str]:
  return ["--src", str(src), "--dst", str(dst), *extra]


@case("converters.llava_onevision", 1)
def dst_holds_a_users_config(w, _):
  w.file("mine/config.json", '{"my": "settings"}')
  return Expect(llava(w.hf, w.tmp / "mine"), "config.json")


@case("converters.llava_onevision", 1)
def dst_is_src(w, _):
  src = w.copy(w.hf, "hf")
  return Expect(llava(src, src), "inside the source")


@case("converters.llava_onevision", 1)
def dst_inside_src(w, _):
  src = w.copy(w.hf, "hf")
  return Expect(llava(src, src / "converted"), "inside the source")


@case("converters.llava_onevision", 1)
def integer_weight(w, _):
  return Expect(llava(integer_checkpoint(w), w.tmp / "out"), "q_proj.weight")


@case("converters.llava_onevision", 1)
def integer_weight_cast(w, _):
  return Expect(llava(integer_checkpoint(w), w.tmp / "out", "--dtype", "float32"), "q_proj.weight")


def integer_checkpoint(w: World) -> Path:
  """The tiny checkpoint with layer 0's q_proj weight stored as int64."""
  from safetensors.numpy import load_file, save_file
  src = w.copy(w.hf, "hf")
  tensors = load_file(src / "model.safetensors")
  name = next(n for n in tensors if "layers.0.self_attn.q_proj.weight" in n and "language_model" in n)
  tensors[name] = tensors[name].astype(np.int64)
  save_file(tensors, src / "model.safetensors")
  return src


@case("converters.llava_onevision", 1)
def truncated_header(w, _):
  src = w.copy(w.hf, "hf")
  (src / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes()[:50])
  return Expect(llava(src, w.tmp / "out"), "model.safetensors")


@case("converters.llava_onevision", 1)
def truncated_data(w, _):
  src = w.copy(w.hf, "hf")
  data = (src / "model.safetensors").read_bytes()
  (src / "model.safetensors").write_bytes(data[:len(data) // 2])
  return Expect(llava(src, w.tmp / "out"), "model.safetensors")


@case("converters.llava_onevision", 1)
def missing_tensor(w, _):
  from safetensors.numpy import load_file, save_file
  src = w.copy(w.hf, "hf")
  tensors = load_file(src / "model.safetensors")
  name = next(n for n in tensors if n.endswith("layers.1.mlp.down_proj.weight"))
  save_file({k: v for k, v in tensors.items() if k != name}, src / "model.safetensors")
  return Expect(llava(src, w.tmp / "out"), "down_proj")


@case("converters.llava_onevision", 1)
def src_missing(w, _):
  return Expect(llava(w.tmp / "nowhere", w.tmp / "out"), "nowhere")


@case("converters.llava_onevision", 1)
def src_is_a_file(w, _):
  return Expect(llava(w.file("model.safetensors", b"x" * 64), w.tmp / "out"), "model.safetensors")


@case("converters.llava_onevision", 1)
def src_without_config(w, _):
  return Expect(llava(w.copy(w.hf, "hf", without=("config.json",)), w.tmp / "out"), "config.json")


@case("converters.llava_onevision", 1)
def export_into_a_users_folder(w, _):
  w.file("exported/notes.md", "mine")
  return Expect(llava(w.model, w.tmp / "exported", "--export", "hf"), "notes.md")


@case("converters.llava_onevision", 130)
def ctrl_c_mid_conversion(w, monkeypatch):
  from converters import common

  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt
  monkeypatch.setattr(common, "unflatten", interrupted)
  return Expect(llava(w.hf, w.tmp / "out"), INTERRUPTED)


@case("converters.sdxl", 1)
def sdxl_dst_holds_a_users_file(w, _):
  w.file("mine/unet.txt", "mine")
  return Expect(["--src", str(w.sdxl_source), "--dst", str(w.tmp / "mine")], "unet.txt")


@case("converters.sdxl", 1)
def sdxl_pipeline_lacks_a_component(w, _):
  src = w.copy(w.sdxl_source, "sdxl", without=("vae",))
  return Expect(["--src", str(src), "--dst", str(w.tmp / "out")], "vae")


@case("converters.sdxl", 1)
def sdxl_component_without_config(w, _):
  src = w.copy(w.sdxl_source / "vae", "vae", without=("config.json",))
  return Expect(["--src", str(src), "--dst", str(w.tmp / "out")], "config.json")


@case("converters.t2v_turbo", 1)
def ckpt_not_a_zip(w, _):
  return Expect(["--src", str(w.file("model.ckpt", b"\x80\x02 not a zip")), "--dst", str(w.tmp / "out")],
                "model.ckpt")


@case("converters.t2v_turbo", 1)
def ckpt_with_a_broken_pickle(w, _):
  import zipfile
  path = w.tmp / "model.ckpt"
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
    archive.writestr("archive/data.pkl", b"\x80\x02}q\x00(X\x01")   # cut off mid-pickle
  return Expect(["--src", str(path), "--dst", str(w.tmp / "out")], "model.ckpt")


@case("converters.t2v_turbo", 1)
def ckpt_missing(w, _):
  return Expect(["--src", str(w.tmp / "absent.ckpt"), "--dst", str(w.tmp / "out")], "absent.ckpt")


# --- launch -----------------------------------------------------------------------------------------------------


def train(w: World, *overrides: str) -> list[str]:
  """`launch.train` on the demo config with a valid tiny data set and workdir `run`, then `overrides`."""
  from ureward_jax.data import shapes
  shapes.shapes_tokenizer().save(str(w.tmp / "tokenizer.json"))
  records = [{"id": f"r{i}", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hi"}]}
             for i in range(4)]
  w.file("train.json", json.dumps(records))
  w.file("mixture.yaml", f"datasets:\n  - json_path: {w.tmp / 'train.json'}\n    sampling_strategy: all\n")
  settings = {"workdir": w.tmp / "run", "data.train": w.tmp / "mixture.yaml", "data.tokenizer": w.tmp / "tokenizer.json"}
  return [f"--config={ROOT / 'configs' / 'demo.py'}", *(f"--config.{k}={v}" for k, v in settings.items()), *overrides]


# (case, exit status, the override that makes it, what the error names)
TRAIN_OVERRIDES = [
    ("misspelt_override", 2, "--config.train.nmu_steps=3", "nmu_steps"),
    ("override_of_the_wrong_type", 2, "--config.train.num_steps=many", "many"),
    ("data_file_missing", 1, "--config.data.train={tmp}/absent.yaml", "absent.yaml"),
    ("batch_size_zero_in_training", 1, "--config.data.batch_size=0", "data.batch_size"),
    ("mesh_does_not_divide", 1, "--config.mesh.data=3", "data=3"),
    ("no_workdir", 1, "--config.workdir=", "workdir"),
    ("unknown_objective", 1, "--config.train.objective=ppo", "ppo"),
]
for _name, _code, _override, _names in TRAIN_OVERRIDES:
  CASES[f"launch.train:{_name}"] = ("launch.train", _code, lambda w, _, o=_override, n=_names:
                                    Expect(train(w, o.format(tmp=w.tmp)), n))


@case("launch.train", 2)
def config_file_missing(w, _):
  return Expect(["--config=" + str(w.tmp / "absent.py")], "absent.py")


@case("launch.aot", 1)
def unknown_topology(w, _):
  return Expect([f"--config={ROOT / 'configs' / 'demo.py'}", "--topology=v9-8"], "v9-8")


@case("launch.aot", 1)
def mesh_larger_than_the_topology(w, _):
  return Expect([f"--config={ROOT / 'configs' / 'dpo_sdxl_turbo.py'}", "--config.mesh.fsdp=3", "--topology=v5p-8"],
                "needs 3 devices")


def run_dir(w: World, objective: str = "sft", steps: tuple[int, ...] = ()) -> Path:
  """A training workdir as the runner leaves it, reduced to what export reads first: config.json, checkpoint steps."""
  w.file("run/config.json", json.dumps({"train": {"objective": objective}}))
  for step in steps:
    (w.tmp / "run" / "checkpoints" / str(step) / "state").mkdir(parents=True)
  return w.tmp / "run"


@case("launch.export", 1)
def export_not_a_workdir(w, _):
  return Expect([f"--workdir={w.tmp}", f"--dst={w.tmp / 'model'}"], "config.json is missing")


@case("launch.export", 1)
def export_without_a_checkpoint(w, _):
  return Expect([f"--workdir={run_dir(w)}", f"--dst={w.tmp / 'model'}"], "no checkpoint yet")


@case("launch.export", 1)
def export_a_step_not_saved(w, _):
  return Expect([f"--workdir={run_dir(w, steps=(2, 4))}", f"--dst={w.tmp / 'model'}", "--step=3"],
                "no checkpoint of step 3")


@case("launch.export", 1)
def export_format_of_another_objective(w, _):
  return Expect([f"--workdir={run_dir(w)}", f"--dst={w.tmp / 'model'}", "--format=diffusers"],
                "does not fit a sft run")


@case("launch.export", 1)
def export_run_into_a_users_folder(w, _):
  w.file("model/weights.bin", b"the user's")
  return Expect([f"--workdir={run_dir(w, steps=(2,))}", f"--dst={w.tmp / 'model'}"], "weights.bin")


@case("launch.export", 1)
def export_ckpt_into_its_workdir(w, _):
  run = run_dir(w, "video_dpo", steps=(2,))
  return Expect([f"--workdir={run}", f"--dst={run / 'model.ckpt'}", "--format=ckpt"], "inside the source")


@case("launch.export", 2)
def export_without_dst(w, _):
  return Expect([f"--workdir={run_dir(w)}"], "--dst")


@case("launch.encode_pairs", 1)
def encode_without_a_destination(w, _):
  return Expect([f"--config={ROOT / 'configs' / 'dpo_sdxl_turbo.py'}"], "data.encoded")


@case("launch.shapes_demo", 2)
def demo_with_negative_steps(w, _):
  return Expect([f"--workdir={w.tmp / 'run'}", "--steps=-3"], "--steps=-3")


# --- the harness ------------------------------------------------------------------------------------------------


def snapshot(folder: Path) -> dict[Path, bytes | None]:
  """Every path under `folder`: a file's bytes, None for a folder."""
  return {path: path.read_bytes() if path.is_file() else None for path in folder.rglob("*")}


def checksum(data: bytes | None) -> str | None:
  return None if data is None else hashlib.sha256(data).hexdigest()


def invoke(command: str, argv: list[str], capsys) -> tuple[int, str]:
  """(exit status, stderr) of one run. In this process a user error arrives as SystemExit("error: ..."), which the
  interpreter prints as that line with status 1; any other exception escapes, and fails the test with its
  traceback."""
  if command.startswith("launch."):
    done = subprocess.run([sys.executable, "-m", command, *argv], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)
    return done.returncode, done.stderr
  if command == "ureward":
    from ureward_jax.cli import main
  else:
    main = __import__(command, fromlist=["main"]).main
  try:
    code = main(argv)
  except SystemExit as e:
    code = e.code
  stderr = capsys.readouterr().err
  if isinstance(code, str):
    return 1, stderr + code + "\n"
  return code or 0, stderr


@pytest.fixture(scope="module")
def sources(checkpoint, sdxl):
  _, _, _, model, media = checkpoint
  return model, model.parent / "hf", Path(media), sdxl[1], sdxl[2]


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, sources, tmp_path, capsys, monkeypatch):
  command, code, build = CASES[name]
  model, hf, media, sdxl_source, sdxl_ours = sources
  user = tmp_path / "user"
  user.mkdir()
  world = World(user, model, hf, media, sdxl_source, sdxl_ours)
  expect = build(world, monkeypatch)
  before = snapshot(user)
  status, stderr = invoke(command, expect.argv, capsys)

  assert "Traceback" not in stderr, stderr[-3000:]
  assert status == code, stderr[-3000:]
  if code == 0:
    bad = [r for r in read(expect.error_row) if "error" in r]
    assert len(bad) == 1 and expect.names in bad[0]["error"], bad
  else:
    last = stderr.rstrip().splitlines()[-1]
    # A bad command line ends with argparse's "PROG: error: ..." under its usage.
    assert last.startswith("error: ") or last == INTERRUPTED or (code == 2 and ": error: " in last), stderr[-3000:]
    assert expect.names in last, last
  after = snapshot(user)
  for path, data in before.items():
    assert path in after, f"{path} was removed"
    if path in expect.appended:
      assert after[path].startswith(data), f"{path}: what was there changed"
    else:
      assert checksum(after[path]) == checksum(data), f"{path} changed"
  allowed = lambda path: any(path == p or p in path.parents for p in expect.created)
  new = sorted(str(p.relative_to(user)) for p in set(after) - set(before) if not allowed(p))
  assert not new, f"files written outside the command's results: {new}"
  if expect.check:
    expect.check()


def test_the_table_covers_every_command():
  commands = {command for command, _, _ in CASES.values()}
  assert len(CASES) >= 40 and commands >= {"ureward", "converters.llava_onevision", "converters.sdxl",
                                           "converters.t2v_turbo", "launch.train", "launch.aot",
                                           "launch.encode_pairs", "launch.shapes_demo", "launch.export"}


@pytest.mark.parametrize("argv", [["-m", "ureward_jax.cli", "score", "--model", "/nonexistent/model", "--task",
                                   "image_generation", "--mode", "pair", "--input", "/nonexistent/in.jsonl",
                                   "--output", "/nonexistent/out.jsonl"],
                                  ["-m", "converters.llava_onevision", "--src", "/nonexistent/src", "--dst",
                                   "/nonexistent/dst"]])
def test_programs_print_one_line(argv):
  """As real programs, a user error is exactly one line on stderr and exit status 1."""
  done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=ROOT, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert done.returncode == 1 and done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
  assert "/nonexistent/" in done.stderr
