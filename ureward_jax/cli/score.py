"""`ureward score`: judge every row of a JSONL file with a reward model.

  ureward score --model DIR --task TASK --mode {pair,point} --input in.jsonl --output out.jsonl
                [--method logits|generate] [--swap] [--batch-size N] [--report report.html] ...

Rows are in the formats of `ureward_jax.reward.inputs`, media paths relative to the input file's folder unless
--media-root says otherwise. Each row is appended to `out.jsonl` with `winner`, `probs`, `logprobs` (pairs) or
`score`, `mass` (points), `text` (generate) or `error`. Results are written batch by batch, so an interrupted run
loses at most one batch, and re-running with the same output skips the ids already there. A row without an "id" is
known by its line number ("line 7"); a row whose id an earlier row has is skipped with a warning.

A bad row never stops the run: it is written with its "error" and counted (`BAD_ROWS`). Images and frame images
over --max-pixels (default Pillow's decompression-bomb limit) are refused before they are decoded; a larger limit is
honoured.
"""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from ureward_jax.cli import common
from ureward_jax.reward import inputs, prompts

NAME = "score"
HELP = "judge pairs or points of a JSONL file with a reward model"
BAD_ROWS = ("A row that cannot be judged (not a JSON object; an id that is not a string or an integer, which makes it "
            "known by its line; a missing field; a missing or unreadable file, or an image over --max-pixels; "
            "anything its preparation raises) is written with an \"error\" naming the problem and counted, the "
            "other rows are judged, and the command exits 0.")


def add_arguments(command: argparse.ArgumentParser) -> None:
  command.add_argument("--task", required=True, choices=prompts.TASKS, help="what the rows hold")
  command.add_argument("--mode", required=True, choices=prompts.MODES, help="judge pairs or score single answers")
  command.add_argument("--variant", default="default", help="prompt wording: default, eval or dpo")
  common.add_judging_arguments(command, "JSONL rows to judge")


def run(args: argparse.Namespace) -> int:
  common.require_positive(args, ["batch_size"])
  rows = common.read_rows(args.input)
  judge_file(args, rows, args.task, args.mode, args.variant, common.input_options(args, args.resize),
             common.media_root(args))
  return 0


def judge_file(args: argparse.Namespace, rows: list[dict], task: str, mode: str, variant: str,
               options: inputs.InputOptions, root: str) -> None:
  """Judge the rows not yet in args.output, appending a batch at a time; print a summary; write the report."""
  from ureward_jax.reward.report import write_report
  from ureward_jax.reward.scoring import Judge

  writer = common.results_writer(args.output)
  pending = [row for row in rows if row["id"] not in writer.done]
  model, tokenizer = common.load_model(args.model, args.dtype)
  judge = Judge(model, tokenizer, task, mode, method=args.method,
                variant=variant, swap=args.swap, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                options=options)
  counts = {"judged": 0, "errors": 0, "unreadable": 0, "skipped": len(rows) - len(pending)}
  verdict = "winner" if mode == "pair" else "score"
  with writer, tqdm(total=len(pending), unit="row", desc="judging") as bar:
    for start in range(0, len(pending), args.batch_size):
      chunk = pending[start:start + args.batch_size]
      results = iter(judge.judge([row for row in chunk if "error" not in row], root))
      merged = [row if "error" in row else row | next(results) for row in chunk]
      for row in merged:
        if "error" in row:
          counts["errors"] += 1
        else:
          counts["judged"] += 1
          counts["unreadable"] += row.get(verdict) is None
      writer.append(merged)
      bar.update(len(chunk))
  print(f"{counts['judged']} judged, {counts['errors']} with errors, {counts['unreadable']} unreadable answers, "
        f"{counts['skipped']} already in {args.output}", file=sys.stderr)
  if args.report:
    judged = common.read_rows(args.output)
    write_report(args.report, judged, judged, task, mode, root, options)
    print(f"report: {args.report}", file=sys.stderr)
