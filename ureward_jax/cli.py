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
"""

from __future__ import annotations

import argparse
import json
import os
import sys

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
  done, good_bytes = set(), 0
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
  for name in ("batch_size", "prompts_per_batch", "num_candidates"):
    if getattr(args, name, 1) < 1:
      sys.exit(f"error: --{name.replace('_', '-')} must be at least 1")
  try:
    return args.run(args)
  except ValueError as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  sys.exit(main())
