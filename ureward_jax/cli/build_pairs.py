"""`ureward build-pairs`: judge each prompt's candidates and keep one chosen / rejected pair per prompt.

  ureward build-pairs --model DIR --task TASK --input items.jsonl --output pairs.jsonl [--policy DIR] ...

The candidates (given, or sampled from --policy) are judged as pairs and points with the "dpo" wordings and one pair
per prompt is kept (`ureward_jax.preference`). The kept records are appended to pairs.jsonl in the task's trainer
format, and every prompt's judgements to pairs.judgements.jsonl, whose ids a re-run skips. A bad item never stops
the run: its judgement entry holds its "error", and it is counted (`BAD_ROWS`).
"""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from ureward_jax.cli import common
from ureward_jax.reward import inputs, prompts

NAME = "build-pairs"
HELP = "judge candidates and keep one preference pair per prompt"
BAD_ROWS = ("An item that cannot be prepared (not a JSON object, malformed candidates, a missing or unreadable file "
            "or an image over --max-pixels, an error row of generate's candidates.jsonl, anything its judging or "
            "sampling preparation raises) gets an \"error\" in the judgements file and is counted, and the other "
            "items go on.")
# The counts the summary line reports: the prompts by outcome, then the verdicts and scores that could not count.
_OUTCOMES = ("kept", "tied", "undecided", "errors")
_EXCLUSIONS = ("tied_pairs", "unreadable_pairs", "unreadable_scores")


def add_arguments(command: argparse.ArgumentParser) -> None:
  command.add_argument("--task", required=True, choices=prompts.TASKS, help="what the items hold")
  command.add_argument("--judgements", default=None,
                       help="every prompt's verdicts, scores and selection (default: OUTPUT.judgements.jsonl)")
  command.add_argument("--official", action="store_true",
                       help="read and select as the released scripts do (needs --method generate)")
  command.add_argument("--policy", default=None,
                       help="converted LLaVA policy folder to sample answers from, for items without candidates")
  command.add_argument("--num-candidates", type=int, default=10, help="answers sampled per item from --policy")
  command.add_argument("--temperature", type=float, default=0.7, help="sampling temperature of --policy")
  command.add_argument("--seed", type=int, default=0, help="seed of the --policy samples")
  command.add_argument("--prompts-per-batch", type=int, default=4, help="items judged (and sampled) together")
  # The sifting scripts judge images and frames resized to 512².
  common.add_judging_arguments(command, "JSONL items: a prompt or question and its candidates", resize=512,
                               resize_help="resize images and frames to this square first, as the sifting scripts")


def run(args: argparse.Namespace) -> int:
  from ureward_jax.preference.build import PairBuilder, sample_answers
  from ureward_jax.reward.scoring import Judge

  common.require_positive(args, ["batch_size", "prompts_per_batch", "num_candidates"])
  if args.seed < 0:   # numpy's seed sequences take non-negative integers only
    raise common.UsageError(f"--seed must be 0 or more, got {args.seed}")
  common.require_generated_text(args)
  judgements_path = args.judgements or args.output.removesuffix(".jsonl") + ".judgements.jsonl"
  items = common.read_rows(args.input)
  log, out = common.results_writer(judgements_path), common.results_writer(args.output)
  pending = [item for item in items if item["id"] not in log.done]
  model, tokenizer = common.load_model(args.model, args.dtype)
  options, root = common.input_options(args, args.resize), common.media_root(args)
  judges = [Judge(model, tokenizer, args.task, mode, method=args.method, variant="dpo",
                  swap=args.swap and mode == "pair", batch_size=args.batch_size,
                  max_new_tokens=args.max_new_tokens, options=options) for mode in ("pair", "point")]
  builder = PairBuilder(*judges, official=args.official)
  policy = common.load_model(args.policy, args.dtype) if args.policy else None
  # The policy sees LLaVA's layout (pooled frames) at full size; only the pixel limit is the user's.
  policy_options = inputs.InputOptions(video_layout="pooled", max_pixels=options.max_pixels)
  counts = dict.fromkeys(_OUTCOMES + _EXCLUSIONS, 0)
  with out, log, tqdm(total=len(pending), unit="prompt", desc="building pairs") as bar:
    for start in range(0, len(pending), args.prompts_per_batch):
      chunk = pending[start:start + args.prompts_per_batch]
      if policy is not None:
        need = [item for item in chunk if "candidates" not in item and "error" not in item]
        sampled = sample_answers(*policy, need, args.task, args.num_candidates, args.temperature,
                                 args.max_new_tokens, args.seed, policy_options, root) if need else []
        for item, answers in zip(need, sampled):
          item.update({"candidates": answers} if isinstance(answers, list) else {"error": answers})
      built = iter(builder.build([item for item in chunk if "error" not in item], root))
      kept_records, entries = [], []
      for item in chunk:
        kept, entry = (None, {"id": item["id"], "error": item["error"]}) if "error" in item else next(built)
        # A pair written before an interruption cut the judgements' line is not written twice.
        if kept is not None and kept["id"] not in out.done:
          kept_records.append(kept)
        if "error" in entry:
          counts["errors"] += 1
        else:
          counts[entry["reason"]] += 1
          for key in _EXCLUSIONS:
            counts[key] += entry[key]
        entries.append(entry | {"candidates": item.get("candidates")})
      out.append(kept_records)
      log.append(entries)
      bar.update(len(chunk))
  print(f"{counts['kept']} pairs kept, {counts['tied']} prompts dropped as tied, {counts['undecided']} undecided, "
        f"{counts['errors']} with errors; {counts['tied_pairs']} tied and {counts['unreadable_pairs']} unreadable "
        f"verdicts, {counts['unreadable_scores']} unreadable scores; {len(items) - len(pending)} prompts already in "
        f"{judgements_path}", file=sys.stderr)
  return 0
