"""`ureward eval`: judge a benchmark's records as its official script does and print its metrics.

  ureward eval --benchmark {genai_image,genai_video,videogen_rewardbench,vl_rewardbench} --model DIR
               --input records.jsonl --output judged.jsonl [--official] [--seed 0] ...

The records are the benchmark's (`ureward_jax.reward.benchmarks`); each row keeps its label with its result in
judged.jsonl (resumable as `ureward score`), and the metrics are printed as JSON. A bad record never stops the run:
it is written with its "error" and counted, and the metrics cover the judged rows (`BAD_ROWS`).
"""

from __future__ import annotations

import argparse
import json

from ureward_jax.cli import common
from ureward_jax.cli.score import judge_file
from ureward_jax.reward import benchmarks

NAME = "eval"
HELP = "judge a benchmark's records and print its metrics"
BAD_ROWS = ("A record that cannot be judged (a benchmark field missing or of the wrong form, or any of score's bad "
            "rows) is written with an \"error\" naming the problem and counted, the other records are judged, and "
            "the metrics are computed over the judged ones.")


def add_arguments(command: argparse.ArgumentParser) -> None:
  command.add_argument("--benchmark", required=True, choices=sorted(benchmarks.BENCHMARKS), help="which benchmark")
  command.add_argument("--seed", type=int, default=0, help="seed of the position randomisation")
  command.add_argument("--official", action="store_true",
                       help="score generated text with the official scripts' string rules (needs --method generate)")
  common.add_judging_arguments(command, "the benchmark's records (JSONL)",
                               resize_help="resize images and frames to this square first (default: the benchmark "
                                           "script's size)")


def run(args: argparse.Namespace) -> int:
  common.require_positive(args, ["batch_size"])
  spec = benchmarks.benchmark(args.benchmark)
  common.require_generated_text(args)
  records = common.read_rows(args.input)
  rows = benchmarks.rows_to_judge(args.benchmark, records, args.seed)
  resize = spec.resize if args.resize is None else args.resize
  judge_file(args, rows, spec.task, "pair", spec.variant, common.input_options(args, resize), common.media_root(args))
  judged = common.read_rows(args.output)
  print(json.dumps({"benchmark": args.benchmark} | benchmarks.metrics(args.benchmark, judged, args.official),
                   indent=1))
  return 0
