"""The `ureward` command.

  ureward score --model DIR --task TASK --mode {pair,point} --input in.jsonl --output out.jsonl
                [--method logits|generate] [--swap] [--batch-size N] [--report report.html] ...

score: judges every row of `in.jsonl` (formats in `ureward_jax.reward.inputs`; media paths relative to the input
file's folder unless --media-root says otherwise) and appends to `out.jsonl` the input row plus `winner`, `probs`,
`logprobs` (pairs) or `score`, `mass` (points), `text` (generate) or `error`. Results are written batch by batch, so
an interrupted run loses at most one batch, and re-running with the same output skips the ids already there. A
row without an "id" is known by its line number ("line 7"); a row whose id an earlier row has is skipped with a
warning.

  ureward eval --benchmark {genai_image,genai_video,videogen_rewardbench,vl_rewardbench} --model DIR
               --input records.jsonl --output judged.jsonl [--official] [--seed 0] ...

eval: judges a benchmark's records (`ureward_jax.reward.benchmarks`) as its official script does, keeps each row's
label with its result in judged.jsonl (resumable as above), and prints the benchmark's metrics as JSON.

  ureward build-pairs --model DIR --task TASK --input items.jsonl --output pairs.jsonl [--policy DIR] ...

build-pairs: judges each item's candidates (given, or sampled from --policy) as pairs and points with the "dpo"
wordings, keeps one chosen / rejected pair per prompt (`ureward_jax.preference`), appends the kept records to
pairs.jsonl and every prompt's judgements to pairs.judgements.jsonl, whose ids a re-run skips.

  ureward generate --model DIR --prompts prompts.txt --num-per-prompt 10 --out DIR [--task image|video]
                   [--steps N] [--height H] [--width W] [--seed 0] [--batch-size 8] [--dtype float32|bfloat16]
                   [--frames 16] [--fps 8] [--guidance-scale 7.5] [--video-format mp4|frames]

generate: samples N candidates per prompt into OUT and appends {"id", "prompt", "candidates": [...]} to
OUT/candidates.jsonl once all of a prompt's candidates are saved: the items `build-pairs --task image_generation`
(or `video_generation`) reads. Images: a converted SDXL pipeline (`ureward_jax.generation.sdxl`; 1 step at 512²)
writes OUT/images/{id}_{k}.png. Videos: a converted T2V-Turbo pipeline (`ureward_jax.generation.t2v_turbo`; 4 steps,
16 frames at 320×512, fps 8, guidance 7.5, as UnifiedReward's data) writes OUT/videos/{id}_{k}.mp4 (H.264, crf 10,
as the original saves them) or, with --video-format frames, a folder of PNG frames OUT/videos/{id}_{k}/.
Prompts: a text file, one per line (blank lines skipped), or a .jsonl with "prompt" (or "caption") and optional "id";
ids default to the prompt's position, "p00000". Candidate k of prompt i draws its noise from (seed, i × N + k) alone,
so batching does not change it. Files are written under a temporary name and renamed; a re-run skips the ids
already in candidates.jsonl, keeps the candidates an interrupted run finished, and refuses settings (seed, steps,
size, N, dtype, and for videos frames, fps, guidance, format) other than those OUT/generate.json records.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import sys
import time

from tqdm import tqdm

from ureward_jax.reward import benchmarks, inputs, prompts


def _read_rows(path: str) -> tuple[list[dict], list[int]]:
  """(rows of a JSONL file, each with an "id", unreadable lines as rows carrying an "error"; the line numbers of
  rows whose id an earlier row already has)."""
  rows, seen, duplicates = [], set(), []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
        if not isinstance(row, dict):
          raise ValueError(f"a row must be a JSON object, got {type(row).__name__}")
      except ValueError as e:
        rows.append({"id": f"line {n}", "error": f"unreadable line: {e}"})
        continue
      row.setdefault("id", f"line {n}")
      if row["id"] in seen:
        duplicates.append(n)
        continue
      seen.add(row["id"])
      rows.append(row)
  return rows, duplicates


def _done_ids(path: str) -> set:
  """Ids already in an output file; a last line cut short by an interruption is removed."""
  if not os.path.exists(path):
    return set()
  done, good_bytes, line = set(), 0, b"\n"
  with open(path, "rb") as f:
    for line in f:
      try:
        done.add(json.loads(line)["id"])
      except (ValueError, KeyError, TypeError):
        break
      good_bytes += len(line)
  if good_bytes < os.path.getsize(path):
    with open(path, "r+b") as f:
      f.truncate(good_bytes)
  elif not line.endswith(b"\n"):   # a whole last row cut before its newline: keep it, end it
    with open(path, "ab") as f:
      f.write(b"\n")
  return done


def _load(folder: str, dtype: str):
  """(model, tokenizer) of a converted checkpoint folder; exits with a message when its tokenizer.json is missing."""
  import jax.numpy as jnp
  import tokenizers

  import ureward_jax

  tokenizer_file = os.path.join(folder, "tokenizer.json")
  if not os.path.exists(tokenizer_file):
    sys.exit(f"error: {tokenizer_file} is missing; the model folder must hold the checkpoint's fast tokenizer (write "
             "one with transformers: AutoTokenizer.from_pretrained(SRC).save_pretrained(MODEL_DIR))")
  return ureward_jax.load(folder, dtype=jnp.dtype(dtype)), tokenizers.Tokenizer.from_file(tokenizer_file)


def _judge_file(args, rows: list[dict], task: str, mode: str, variant: str, options: inputs.InputOptions,
                root: str) -> None:
  """Judge the rows not yet in args.output, appending a batch at a time; print a summary; write the report."""
  from ureward_jax.reward.report import write_report
  from ureward_jax.reward.scoring import Judge

  done = _done_ids(args.output)
  pending = [row for row in rows if row["id"] not in done]
  model, tokenizer = _load(args.model, args.dtype)
  judge = Judge(model, tokenizer, task, mode, method=args.method,
                variant=variant, swap=args.swap, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                options=options)
  counts = {"judged": 0, "errors": 0, "unreadable": 0, "skipped": len(rows) - len(pending)}
  verdict = "winner" if mode == "pair" else "score"
  with open(args.output, "a", encoding="utf-8") as out, tqdm(total=len(pending), unit="row", desc="judging") as bar:
    for start in range(0, len(pending), args.batch_size):
      chunk = pending[start:start + args.batch_size]
      readable = [row for row in chunk if "error" not in row]
      results = iter(judge.judge(readable, root))
      for row in chunk:
        merged = row if "error" in row else row | next(results)
        if "error" in merged:
          counts["errors"] += 1
        else:
          counts["judged"] += 1
          counts["unreadable"] += merged.get(verdict) is None
        out.write(json.dumps(merged, ensure_ascii=False) + "\n")
      out.flush()
      bar.update(len(chunk))
  print(f"{counts['judged']} judged, {counts['errors']} with errors, {counts['unreadable']} unreadable answers, "
        f"{counts['skipped']} already in {args.output}", file=sys.stderr)
  if args.report:
    judged, _ = _read_rows(args.output)
    write_report(args.report, judged, judged, task, mode, root, options)
    print(f"report: {args.report}", file=sys.stderr)


def _options(args, resize: int | None) -> inputs.InputOptions:
  return inputs.InputOptions(num_frames=args.num_frames, resize=resize, pair_layout=args.pair_layout,
                             video_layout=args.video_layout)


def _root(args) -> str:
  return args.media_root or os.path.dirname(os.path.abspath(args.input))


def _score(args) -> int:
  rows = _rows_of(args.input)
  _judge_file(args, rows, args.task, args.mode, args.variant, _options(args, args.resize), _root(args))
  return 0


def _eval(args) -> int:
  spec = benchmarks.benchmark(args.benchmark)
  if args.official and args.method != "generate":
    sys.exit("error: --official reads the scripts' verdict strings from generated text: add --method generate")
  records = _rows_of(args.input)
  readable = [r for r in records if "error" not in r]
  rows = benchmarks.rows_to_judge(args.benchmark, readable, args.seed) + [r for r in records if "error" in r]
  resize = spec.resize if args.resize is None else args.resize
  _judge_file(args, rows, spec.task, "pair", spec.variant, _options(args, resize), _root(args))
  judged, _ = _read_rows(args.output)
  print(json.dumps({"benchmark": args.benchmark} | benchmarks.metrics(args.benchmark, judged, args.official),
                   indent=1))
  return 0


def _build_pairs(args) -> int:
  from ureward_jax.preference.build import PairBuilder, sample_answers
  from ureward_jax.reward.scoring import Judge

  if args.official and args.method != "generate":
    sys.exit("error: --official reads the scripts' verdict strings from generated text: add --method generate")
  judgements_path = args.judgements or args.output.removesuffix(".jsonl") + ".judgements.jsonl"
  items = _rows_of(args.input)
  done, written = _done_ids(judgements_path), _done_ids(args.output)
  pending = [item for item in items if item["id"] not in done]
  model, tokenizer = _load(args.model, args.dtype)
  options, root = _options(args, args.resize), _root(args)
  judges = [Judge(model, tokenizer, args.task, mode, method=args.method, variant="dpo",
                  swap=args.swap and mode == "pair", batch_size=args.batch_size,
                  max_new_tokens=args.max_new_tokens, options=options) for mode in ("pair", "point")]
  builder = PairBuilder(*judges, official=args.official)
  policy = _load(args.policy, args.dtype) if args.policy else None
  counts = dict.fromkeys(("kept", "tied", "undecided", "errors", "tied_pairs", "unreadable_pairs",
                          "unreadable_scores"), 0)
  with open(args.output, "a", encoding="utf-8") as out, open(judgements_path, "a", encoding="utf-8") as log, \
      tqdm(total=len(pending), unit="prompt", desc="building pairs") as bar:
    for start in range(0, len(pending), args.prompts_per_batch):
      chunk = pending[start:start + args.prompts_per_batch]
      if policy is not None:
        need = [item for item in chunk if "candidates" not in item and "error" not in item]
        sampled = sample_answers(*policy, need, args.task, args.num_candidates, args.temperature,
                                 args.max_new_tokens, args.seed, root=root) if need else []
        for item, answers in zip(need, sampled):
          item.update({"candidates": answers} if isinstance(answers, list) else {"error": answers})
      readable = [item for item in chunk if "error" not in item]
      built = iter(builder.build(readable, root))
      for item in chunk:
        kept, entry = (None, {"id": item["id"], "error": item["error"]}) if "error" in item else next(built)
        if kept is not None and kept["id"] not in written:
          out.write(json.dumps(kept, ensure_ascii=False) + "\n")
        if "error" in entry:
          counts["errors"] += 1
        else:
          counts[entry["reason"]] += 1
          for key in ("tied_pairs", "unreadable_pairs", "unreadable_scores"):
            counts[key] += entry[key]
        log.write(json.dumps(entry | {"candidates": item.get("candidates")}, ensure_ascii=False) + "\n")
      out.flush()
      log.flush()
      bar.update(len(chunk))
  print(f"{counts['kept']} pairs kept, {counts['tied']} prompts dropped as tied, {counts['undecided']} undecided, "
        f"{counts['errors']} with errors; {counts['tied_pairs']} tied and {counts['unreadable_pairs']} unreadable "
        f"verdicts, {counts['unreadable_scores']} unreadable scores; {len(items) - len(pending)} prompts already in "
        f"{judgements_path}", file=sys.stderr)
  return 0


# The settings an image depends on besides its prompt and index: a re-run into the same --out must repeat them.
_GENERATE_SETTINGS = ("seed", "steps", "height", "width", "num_per_prompt", "dtype")
_VIDEO_SETTINGS = ("frames", "fps", "guidance_scale", "video_format")
# task → (pipeline model_type, its name with article, its converter, default steps and height)
_GENERATORS = {"image": ("sdxl", "an SDXL", "converters.sdxl", 1, 512),
               "video": ("t2v_turbo", "a T2V-Turbo", "converters.t2v_turbo", 4, 320)}


def _read_prompts(path: str) -> list[tuple]:
  """(id, prompt) of each prompt of a text file (one per line, blank lines skipped) or a .jsonl file ("prompt" or
  "caption", optional "id"); ids default to the prompt's position among the prompts, "p00000"."""
  jsonl, entries = path.endswith(".jsonl"), []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      default_id = f"p{len(entries):05d}"
      if not jsonl:
        entries.append((default_id, line.strip()))
        continue
      try:
        row = json.loads(line)
      except ValueError as e:
        raise ValueError(f"{path} line {n}: unreadable line: {e}") from None
      text = row.get("prompt", row.get("caption")) if isinstance(row, dict) else None
      if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{path} line {n}: a row must be a JSON object with a non-empty 'prompt' (or 'caption')")
      prompt_id = row.get("id", default_id)
      if isinstance(prompt_id, bool) or not isinstance(prompt_id, (str, int)):
        raise ValueError(f"{path} line {n}: 'id' must be a string or an integer, got {prompt_id!r}")
      entries.append((prompt_id, text))
  if not entries:
    raise ValueError(f"{path} holds no prompts")
  names = collections.Counter(str(prompt_id) for prompt_id, _ in entries)
  duplicates = [name for name, count in names.items() if count > 1]
  if duplicates:
    raise ValueError(f"{path}: duplicate prompt ids {', '.join(map(repr, duplicates[:20]))}"
                     f"{', ...' if len(duplicates) > 20 else ''} (ids name the image files)")
  unusable = [name for name in names if name in ("", ".", "..") or any(c in name for c in "/\\\0")]
  if unusable:
    raise ValueError(f"{path}: prompt ids {', '.join(map(repr, unusable[:20]))} cannot name image files")
  return entries


def _check_pipeline_folder(folder: str, task: str) -> None:
  """Exits with a message unless `folder` is a converted pipeline of `task`'s kind."""
  expected, name, converter = _GENERATORS[task][:3]
  config_file = os.path.join(folder, "config.json")
  hint = f"convert one with `python -m {converter} --src SRC --dst DIR`"
  if not os.path.isfile(config_file):
    sys.exit(f"error: {folder} is not a converted {name.split()[1]} pipeline folder: {config_file} is missing "
             f"({hint})")
  with open(config_file, encoding="utf-8") as f:
    model_type = json.load(f).get("model_type")
  if model_type != expected:
    sys.exit(f"error: {folder} is not {name} pipeline folder: its model_type is {model_type!r}, not {expected!r} "
             f"(--task {task}; {hint})")


def _load_pipeline(folder: str, dtype: str):
  """The pipeline of a checked folder; exits with a message when a component is missing."""
  import jax.numpy as jnp

  import ureward_jax

  try:
    return ureward_jax.load(folder, dtype=jnp.dtype(dtype))
  except FileNotFoundError as e:
    sys.exit(f"error: {e}")


def _check_settings(path: str, settings: dict, keys) -> bool:
  """Whether `path` (the settings of the candidates already in --out) is still to be written; exits when it records
  other settings for `keys`."""
  if not os.path.exists(path):
    return True
  with open(path, encoding="utf-8") as f:
    recorded = json.load(f)
  changed = [f"--{key.replace('_', '-')} {recorded.get(key)} (now {settings[key]})" for key in keys
             if recorded.get(key) != settings[key]]
  if changed:
    sys.exit(f"error: the candidates in {os.path.dirname(path)} were made with {', '.join(changed)}; re-run with "
             "those settings or choose another --out")
  return False


def _save(candidate, path: str, args) -> None:
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


def _candidates(prompt_id, n: int, task: str = "image", video_format: str = "mp4") -> list[str]:
  if task == "image":
    return [f"images/{prompt_id}_{k}.png" for k in range(n)]
  return [f"videos/{prompt_id}_{k}{'.mp4' if video_format == 'mp4' else ''}" for k in range(n)]


def _write_finished(out, queue: collections.deque, left: collections.Counter, names) -> int:
  """Append the lines of the prompts at the head of `queue` whose candidates are all saved (`left` 0), in file
  order, `names(prompt_id)` listing a prompt's candidates; the number written."""
  written = 0
  while queue and left[queue[0][1]] == 0:
    _, prompt_id, text = queue.popleft()
    out.write(json.dumps({"id": prompt_id, "prompt": text, "candidates": names(prompt_id)},
                         ensure_ascii=False) + "\n")
    written += 1
  out.flush()
  return written


def _generate(args) -> int:
  started = time.perf_counter()
  if not os.path.isfile(args.prompts):
    sys.exit(f"error: {args.prompts} is not a file")
  entries, n, task = _read_prompts(args.prompts), args.num_per_prompt, args.task
  if n % 2:
    print(f"warning: --num-per-prompt {n} is odd; build-pairs judges candidates two by two and needs an even number "
          "(at least 2) per prompt", file=sys.stderr)
  _check_pipeline_folder(args.model, task)
  keys = _GENERATE_SETTINGS + (_VIDEO_SETTINGS if task == "video" else ())
  settings = {key: getattr(args, key) for key in keys} | {"model": os.path.abspath(args.model)}
  settings_file, output = os.path.join(args.out, "generate.json"), os.path.join(args.out, "candidates.jsonl")
  os.makedirs(os.path.join(args.out, "images" if task == "image" else "videos"), exist_ok=True)
  settings_due = _check_settings(settings_file, settings, keys)
  done = _done_ids(output)
  names = functools.partial(_candidates, n=n, task=task, video_format=args.video_format)
  pending = [(i, prompt_id, text) for i, (prompt_id, text) in enumerate(entries) if prompt_id not in done]
  # (prompt id, noise index, prompt, file) of each candidate still to make; those an interrupted run saved are kept.
  jobs = [(prompt_id, i * n + k, text, os.path.join(args.out, path)) for i, prompt_id, text in pending
          for k, path in enumerate(names(prompt_id)) if not os.path.exists(os.path.join(args.out, path))]
  left = collections.Counter(job[0] for job in jobs)
  pipeline = _load_pipeline(args.model, args.dtype) if jobs else None
  options = dict(num_inference_steps=args.steps, height=args.height, width=args.width, seed=args.seed)
  if task == "video":
    options |= dict(frames=args.frames, fps=args.fps, guidance_scale=args.guidance_scale)
  # Every batch has one size (the last one padded), so the pipeline compiles once.
  size, queue, lines = max(1, min(args.batch_size, len(jobs))), collections.deque(pending), 0
  with open(output, "a", encoding="utf-8") as out, tqdm(total=len(jobs), unit=task, desc="generating") as bar:
    lines += _write_finished(out, queue, left, names)
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
      lines += _write_finished(out, queue, left, names)
      bar.update(len(chunk))
  print(f"{lines} prompts done, {len(entries) - len(pending)} already in {output}; {len(jobs)} {task}s written, "
        f"{len(pending) * n - len(jobs)} kept from an interrupted run; {time.perf_counter() - started:.1f} s",
        file=sys.stderr)
  return 0


def _rows_of(path: str) -> list[dict]:
  rows, duplicates = _read_rows(path)
  if duplicates:
    print(f"warning: skipping {len(duplicates)} rows whose id an earlier row has (lines "
          f"{', '.join(map(str, duplicates[:20]))}{', ...' if len(duplicates) > 20 else ''})", file=sys.stderr)
  return rows


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="ureward", description="UnifiedReward in JAX.")
  commands = parser.add_subparsers(dest="command", required=True)
  score = commands.add_parser("score", help="judge pairs or points of a JSONL file with a reward model")
  score.add_argument("--task", required=True, choices=prompts.TASKS)
  score.add_argument("--mode", required=True, choices=prompts.MODES)
  score.add_argument("--variant", default="default", help="prompt wording: default, eval or dpo")
  score.set_defaults(run=_score)

  evaluate = commands.add_parser("eval", help="judge a benchmark's records and print its metrics")
  evaluate.add_argument("--benchmark", required=True, choices=sorted(benchmarks.BENCHMARKS))
  evaluate.add_argument("--seed", type=int, default=0, help="seed of the position randomisation")
  evaluate.add_argument("--official", action="store_true",
                        help="score generated text with the official scripts' string rules (needs --method generate)")
  evaluate.set_defaults(run=_eval)

  build = commands.add_parser("build-pairs", help="judge candidates and keep one preference pair per prompt")
  build.add_argument("--task", required=True, choices=prompts.TASKS)
  build.add_argument("--judgements", default=None,
                     help="every prompt's verdicts, scores and selection (default: OUTPUT.judgements.jsonl)")
  build.add_argument("--official", action="store_true",
                     help="read and select as the released scripts do (needs --method generate)")
  build.add_argument("--policy", default=None,
                     help="converted LLaVA policy folder to sample answers from, for items without candidates")
  build.add_argument("--num-candidates", type=int, default=10)
  build.add_argument("--temperature", type=float, default=0.7)
  build.add_argument("--seed", type=int, default=0)
  build.add_argument("--prompts-per-batch", type=int, default=4)
  build.set_defaults(run=_build_pairs)
  for command in (score, evaluate, build):
    _judging_arguments(command)
  # The sifting scripts judge images and frames resized to 512².
  build.set_defaults(resize=512)

  generate = commands.add_parser("generate", help="sample candidate images (SDXL) or videos (T2V-Turbo) per prompt")
  generate.add_argument("--model", required=True, help="converted pipeline folder: SDXL (python -m converters.sdxl) "
                        "for images, T2V-Turbo (python -m converters.t2v_turbo) for videos")
  generate.add_argument("--task", default="image", choices=sorted(_GENERATORS))
  generate.add_argument("--prompts", required=True,
                        help="text file, one prompt per line, or .jsonl with 'prompt' (or 'caption') and optional 'id'")
  generate.add_argument("--num-per-prompt", type=int, required=True,
                        help="candidates per prompt (build-pairs needs an even number)")
  generate.add_argument("--out", required=True, help="folder of images/ or videos/ and candidates.jsonl (appended "
                        "to; ids already there are skipped)")
  generate.add_argument("--steps", type=int, default=None,
                        help="sampling steps (default: images 1, SDXL-Turbo takes 1 to 4; videos 4, T2V-Turbo's LCM)")
  generate.add_argument("--height", type=int, default=None, help="default: images 512, videos 320")
  generate.add_argument("--width", type=int, default=512)
  generate.add_argument("--seed", type=int, default=0, help="candidate k of prompt i draws noise (seed, i × N + k)")
  generate.add_argument("--batch-size", type=int, default=8, help="candidates per pipeline call")
  generate.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="compute dtype")
  generate.add_argument("--frames", type=int, default=16, help="video frames")
  generate.add_argument("--fps", type=int, default=8, help="the frame rate the UNet is told and the mp4 plays at")
  generate.add_argument("--guidance-scale", type=float, default=7.5, help="T2V-Turbo's embedded guidance scale")
  generate.add_argument("--video-format", default="mp4", choices=("mp4", "frames"),
                        help="an H.264 mp4 per video, or a folder of PNG frames (lossless)")
  generate.set_defaults(run=_generate)
  return parser


def _judging_arguments(command: argparse.ArgumentParser) -> None:
  command.add_argument("--model", required=True, help="converted checkpoint folder (with tokenizer.json)")
  command.add_argument("--input", required=True, help="JSONL rows (score) or benchmark records (eval)")
  command.add_argument("--output", required=True, help="JSONL results (appended to; ids already there are skipped)")
  command.add_argument("--method", default="logits", choices=("logits", "generate"))
  command.add_argument("--swap", action="store_true", help="judge both orders of each pair and average")
  command.add_argument("--batch-size", type=int, default=4)
  command.add_argument("--max-new-tokens", type=int, default=1024, help="token limit of the generate method")
  command.add_argument("--num-frames", type=int, default=8, help="frames sampled per video")
  command.add_argument("--resize", type=int, default=None,
                       help="resize images and frames to this square first (eval: the benchmark script's size; "
                            "build-pairs: 512, as the sifting scripts)")
  command.add_argument("--pair-layout", default="anyres", choices=inputs.PAIR_LAYOUTS)
  command.add_argument("--video-layout", default="frames", choices=inputs.VIDEO_LAYOUTS)
  command.add_argument("--media-root", default=None, help="folder of relative media paths (default: the input's)")
  command.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="compute dtype")
  command.add_argument("--report", default=None, help="also write a static HTML page of the judged rows")


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  if args.command == "generate":
    steps, height = _GENERATORS[args.task][3:]
    args.steps = steps if args.steps is None else args.steps
    args.height = height if args.height is None else args.height
  for name in ("batch_size", "prompts_per_batch", "num_candidates", "num_per_prompt", "steps", "height", "width",
               "frames", "fps"):
    if getattr(args, name, 1) < 1:
      sys.exit(f"error: --{name.replace('_', '-')} must be at least 1")
  try:
    return args.run(args)
  except ValueError as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  sys.exit(main())
