"""`ureward generate`: sample N candidate images or videos per prompt, the items `build-pairs` judges.

  ureward generate --model DIR --prompts prompts.txt --num-per-prompt 10 --out DIR [--task image|video]
                   [--steps N] [--height H] [--width W] [--seed 0] [--batch-size 8] [--dtype float32|bfloat16]
                   [--frames 16] [--fps 8] [--guidance-scale 7.5] [--video-format mp4|frames]

Samples N candidates per prompt into OUT and appends {"id", "prompt", "candidates": [...]} to OUT/candidates.jsonl
once all of a prompt's candidates are saved: the items `build-pairs --task image_generation` (or
`video_generation`) reads. Images: a converted SDXL pipeline (1 step at 512²) writes OUT/images/{id}_{k}.png.
Videos: a converted T2V-Turbo pipeline (4 steps, 16 frames at 320×512, fps 8, guidance 7.5, as UnifiedReward's
data) writes OUT/videos/{id}_{k}.mp4 (H.264, crf 10, as the original saves them) or, with --video-format frames, a
folder of PNG frames OUT/videos/{id}_{k}/.

Prompts: a text file, one per line (blank lines skipped), or a .jsonl with "prompt" (or "caption") and optional "id";
ids default to the line's position among the non-blank lines, "p00000". A line without a usable prompt (not a JSON
object, no prompt, an id that is not a string or an integer or cannot name a file) is written to candidates.jsonl as
{"id", "error"}, under its own id or its line ("line 7"), and counted; build-pairs counts it as an error, and the
other prompts are generated. A line whose id an earlier line has is skipped with a warning. Candidate k of the
prompt on non-blank line i draws its noise from (seed, i × N + k) alone, so batching does not change it.

OUT must be a new or empty folder, or one `ureward generate` wrote (its `.ureward_jax.json` says so) holding nothing
else, and not the model's folder or around the prompts file. Files are written under a temporary name and renamed;
a re-run skips the ids already in candidates.jsonl (error
lines included), keeps the candidates an interrupted run finished, and refuses settings (seed, steps, size, N, dtype,
and for videos frames, fps, guidance, format) other than those OUT/generate.json records.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import reprlib
import sys
import time
from typing import Iterator, NamedTuple

from tqdm import tqdm

from ureward_jax import outputs
from ureward_jax.cli import common
from ureward_jax.data.jsonl import read_lines

NAME = "generate"
HELP = "sample candidate images (SDXL) or videos (T2V-Turbo) per prompt"
BAD_ROWS = ("A prompt line that holds no usable prompt (not a JSON object, no prompt, an id that is not a string or "
            "an integer or cannot name a file) is written to candidates.jsonl as {\"id\", \"error\"} and counted, "
            "and the other prompts are generated; a file without a single usable prompt is refused.")
# The settings a candidate depends on besides its prompt and index: a re-run into the same --out must repeat them.
_SETTINGS = ("seed", "steps", "height", "width", "num_per_prompt", "dtype")
_VIDEO_SETTINGS = ("frames", "fps", "guidance_scale", "video_format")
# task → (pipeline model_type, its name with article, its converter, default steps and height)
_GENERATORS = {"image": ("sdxl", "an SDXL", "converters.sdxl", 1, 512),
               "video": ("t2v_turbo", "a T2V-Turbo", "converters.t2v_turbo", 4, 320)}


def add_arguments(command: argparse.ArgumentParser) -> None:
  command.add_argument("--model", required=True, help="converted pipeline folder: SDXL (python -m converters.sdxl) "
                       "for images, T2V-Turbo (python -m converters.t2v_turbo) for videos")
  command.add_argument("--task", default="image", choices=sorted(_GENERATORS), help="what to sample")
  command.add_argument("--prompts", required=True,
                       help="text file, one prompt per line, or .jsonl with 'prompt' (or 'caption') and optional 'id'")
  command.add_argument("--num-per-prompt", type=int, required=True,
                       help="candidates per prompt (build-pairs needs an even number)")
  command.add_argument("--out", required=True, help="folder of images/ or videos/ and candidates.jsonl (appended "
                       "to; ids already there are skipped)")
  command.add_argument("--steps", type=int, default=None,
                       help="sampling steps (default: images 1, SDXL-Turbo takes 1 to 4; videos 4, T2V-Turbo's LCM)")
  command.add_argument("--height", type=int, default=None, help="default: images 512, videos 320")
  command.add_argument("--width", type=int, default=512, help="candidate width in pixels")
  command.add_argument("--seed", type=int, default=0, help="candidate k of the prompt on non-blank line i draws "
                       "noise (seed, i × N + k)")
  command.add_argument("--batch-size", type=int, default=8, help="candidates per pipeline call")
  command.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="compute dtype")
  command.add_argument("--frames", type=int, default=16, help="video frames")
  command.add_argument("--fps", type=int, default=8, help="the frame rate the UNet is told and the mp4 plays at")
  command.add_argument("--guidance-scale", type=float, default=7.5, help="T2V-Turbo's embedded guidance scale")
  command.add_argument("--video-format", default="mp4", choices=("mp4", "frames"),
                       help="an H.264 mp4 per video, or a folder of PNG frames (lossless)")


class Prompt(NamedTuple):
  """One non-blank line of a prompt file: its position among them (the noise of its candidates is drawn from it),
  its line number, its id, and its text, or why it holds no prompt (`error`)."""
  position: int
  line: int
  id: str | int
  text: str | None
  error: str | None = None


def _lines(path: str) -> Iterator[tuple[int, dict | None, str | None]]:
  """(line number, the row, or None and why it holds none) of each non-blank line of a prompt file."""
  if path.endswith(".jsonl"):
    for line in read_lines(path):
      yield line.number, line.row, line.error and f"unreadable line: {line.error}"
    return
  with open(path, "rb") as f:   # decoded per line, so one bad line does not stop the file
    for number, raw in enumerate(f, 1):
      try:
        text = raw.decode("utf-8").strip()
      except UnicodeDecodeError as e:
        yield number, None, f"not UTF-8 text ({e.reason} at byte {e.start})"
        continue
      if text:
        yield number, {"prompt": text}, None


def _problem(row: dict, prompt_id) -> str | None:
  """Why a readable prompt row cannot be generated, None when it can."""
  if not common.valid_id(prompt_id):
    return f"'id' must be a string or an integer, got {reprlib.repr(prompt_id)}"
  name = str(prompt_id)
  if name in ("", ".", "..") or any(c in name for c in "/\\\0"):
    return f"id {prompt_id!r} cannot name image files"
  text = row.get("prompt", row.get("caption"))
  if not isinstance(text, str) or not text.strip():
    return "a row must be a JSON object with a non-empty 'prompt' (or 'caption')"
  return None


def read_prompts(path: str) -> list[Prompt]:
  """The prompts of a text file (one per line, blank lines skipped) or a .jsonl file ("prompt" or "caption",
  optional "id"), in order; ids default to the line's position among the non-blank lines, "p00000".

  A line that holds no usable prompt (not UTF-8, not a JSON object, no prompt, an id that is not a string or an
  integer or cannot name a file) is a Prompt with an `error`, under its own id when that is a string or an integer,
  else under its line ("line 7"). A line whose id an earlier line has (as a file name: 7 and "7" are one) is skipped
  with a warning. A file without a single usable prompt is a UsageError.
  """
  prompts, seen, duplicates = [], set(), []
  for position, (number, row, error) in enumerate(_lines(path)):
    prompt_id = None if row is None else row.get("id", f"p{position:05d}")
    error = error or _problem(row, prompt_id)
    if error and not (row is not None and "id" in row and common.valid_id(prompt_id)):
      prompt_id = f"line {number}"
    if str(prompt_id) in seen:
      duplicates.append(number)
      continue
    seen.add(str(prompt_id))
    prompts.append(Prompt(position, number, prompt_id, None if error else row.get("prompt", row.get("caption")),
                          error))
  common.warn_duplicates(duplicates)
  if not any(prompt.error is None for prompt in prompts):
    first = f" (line {prompts[0].line}: {prompts[0].error})" if prompts else ""
    raise common.UsageError(f"{path} holds no prompts{first}")
  return prompts


def _read_json(path: str, what: str) -> dict:
  """A JSON object file, or a UsageError naming it and what it holds."""
  with open(path, encoding="utf-8") as f:
    try:
      content = json.load(f)
    except json.JSONDecodeError as e:
      raise common.UsageError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); it holds {what}") from None
  if not isinstance(content, dict):
    raise common.UsageError(f"{path} is not a JSON object; it holds {what}")
  return content


def _check_pipeline_folder(folder: str, task: str) -> None:
  """Refuse anything but a converted pipeline of `task`'s kind."""
  expected, name, converter = _GENERATORS[task][:3]
  config_file = os.path.join(folder, "config.json")
  hint = f"convert one with `python -m {converter} --src SRC --dst DIR`"
  if not os.path.isfile(config_file):
    raise common.UsageError(f"{folder} is not a converted {name.split()[1]} pipeline folder: {config_file} is "
                            f"missing ({hint})")
  model_type = _read_json(config_file, "the pipeline's configuration").get("model_type")
  if model_type != expected:
    raise common.UsageError(f"{folder} is not {name} pipeline folder: its model_type is {model_type!r}, not "
                            f"{expected!r} (--task {task}; {hint})")


def _settings_due(path: str, settings: dict, keys) -> bool:
  """Whether `path` (the settings of the candidates already in --out) is still to be written; refuses a run whose
  `keys` differ from those it records."""
  if not os.path.exists(path):
    return True
  recorded = _read_json(path, "the settings of the candidates in its folder")
  changed = [f"--{key.replace('_', '-')} {recorded.get(key)} (now {settings[key]})" for key in keys
             if recorded.get(key) != settings[key]]
  if changed:
    raise common.UsageError(f"the candidates in {os.path.dirname(path)} were made with {', '.join(changed)}; re-run "
                            "with those settings or choose another --out")
  return False


def _save(candidate, path: str, args: argparse.Namespace) -> None:
  """An image as PNG, a video as mp4 or a folder of PNG frames, each written whole or not at all."""
  from ureward_jax.processing import video

  if args.task == "image":
    _save_png(candidate, path)
  elif args.video_format == "mp4":
    video.write_video(candidate, path, fps=args.fps)
  else:
    video.write_frame_folder(candidate, path)


def _save_png(image, path: str) -> None:
  """Write under a temporary name, then rename: an interrupted write never leaves a partial PNG at `path`."""
  from PIL import Image

  temporary = path + ".tmp"
  Image.fromarray(image).save(temporary, format="PNG")
  os.replace(temporary, path)


def _candidates(prompt_id, args: argparse.Namespace) -> list[str]:
  """The files of a prompt's candidates, relative to --out."""
  if args.task == "image":
    return [f"images/{prompt_id}_{k}.png" for k in range(args.num_per_prompt)]
  suffix = ".mp4" if args.video_format == "mp4" else ""
  return [f"videos/{prompt_id}_{k}{suffix}" for k in range(args.num_per_prompt)]


def _finished(queue: collections.deque, left: collections.Counter, args: argparse.Namespace) -> list[dict]:
  """The lines of the prompts at the head of `queue` whose candidates are all saved (`left` 0), in file order,
  taken off the queue; a line without a usable prompt is written as {"id", "error"} in its place."""
  rows = []
  while queue and left[queue[0].id] == 0:
    prompt = queue.popleft()
    rows.append({"id": prompt.id, "error": prompt.error} if prompt.error else
                {"id": prompt.id, "prompt": prompt.text, "candidates": _candidates(prompt.id, args)})
  return rows


def _load_pipeline(args: argparse.Namespace):
  """The pipeline of a checked folder (a missing component is a FileNotFoundError naming it)."""
  import jax.numpy as jnp

  import ureward_jax

  return ureward_jax.load(args.model, dtype=jnp.dtype(args.dtype))


def run(args: argparse.Namespace) -> int:
  started, task, n = time.perf_counter(), args.task, args.num_per_prompt
  steps, height = _GENERATORS[task][3:]
  args.steps = steps if args.steps is None else args.steps
  args.height = height if args.height is None else args.height
  common.require_positive(args, ["num_per_prompt", "steps", "height", "width", "frames", "fps", "batch_size"])
  if not os.path.isfile(args.prompts):
    raise common.UsageError(f"{args.prompts} is not a file")
  prompts = read_prompts(args.prompts)
  if n % 2:
    print(f"warning: --num-per-prompt {n} is odd; build-pairs judges candidates two by two and needs an even number "
          "(at least 2) per prompt", file=sys.stderr)
  _check_pipeline_folder(args.model, task)
  keys = _SETTINGS + (_VIDEO_SETTINGS if task == "video" else ())
  settings = {key: getattr(args, key) for key in keys} | {"model": os.path.abspath(args.model)}
  settings_file = os.path.join(args.out, "generate.json")
  media = "images" if task == "image" else "videos"
  outputs.claim_folder(args.out, "ureward generate", [media, "candidates.jsonl", "generate.json"],
                       sources=[args.model, args.prompts])
  os.makedirs(os.path.join(args.out, media), exist_ok=True)
  settings_due = _settings_due(settings_file, settings, keys)
  out = common.results_writer(os.path.join(args.out, "candidates.jsonl"))
  pending = [prompt for prompt in prompts if prompt.id not in out.done]
  malformed = sum(prompt.error is not None for prompt in pending)
  # (prompt id, noise index, prompt, file) of each candidate still to make; those an interrupted run saved are kept.
  jobs = [(p.id, p.position * n + k, p.text, os.path.join(args.out, path)) for p in pending if p.error is None
          for k, path in enumerate(_candidates(p.id, args)) if not os.path.exists(os.path.join(args.out, path))]
  left = collections.Counter(job[0] for job in jobs)
  pipeline = _load_pipeline(args) if jobs else None
  options = dict(num_inference_steps=args.steps, height=args.height, width=args.width, seed=args.seed)
  if task == "video":
    options |= dict(frames=args.frames, fps=args.fps, guidance_scale=args.guidance_scale)
  # Every batch has one size (the last one padded), so the pipeline compiles once.
  size, queue = max(1, min(args.batch_size, len(jobs))), collections.deque(pending)
  with out, tqdm(total=len(jobs), unit=task, desc="generating") as bar:
    out.append(_finished(queue, left, args))   # prompts whose candidates an interrupted run all saved
    for start in range(0, len(jobs), size):
      chunk = jobs[start:start + size]
      padded = chunk + chunk[-1:] * (size - len(chunk))
      made = pipeline([job[2] for job in padded], indices=[job[1] for job in padded], **options)
      if settings_due:
        with open(settings_file, "w", encoding="utf-8") as f:
          json.dump(settings, f, indent=1)
        settings_due = False
      for job, candidate in zip(chunk, made):
        _save(candidate, job[3], args)
        left[job[0]] -= 1
      out.append(_finished(queue, left, args))
      bar.update(len(chunk))
  done = len(pending) - malformed
  print(f"{done} prompts done, {malformed} with errors, {len(prompts) - len(pending)} already in {out.path}; "
        f"{len(jobs)} {task}s written, {done * n - len(jobs)} kept from an interrupted run; "
        f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
  return 0

