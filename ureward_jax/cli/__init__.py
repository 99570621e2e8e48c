"""The `ureward` command: judge with a reward model, evaluate on benchmarks, build preference pairs, and generate
the candidates they are built from. One module per subcommand (`score`, `evaluate`, `build_pairs`, `generate`), each
with its `add_arguments` and `run`; `common` holds what they share.

  ureward score --model DIR --task TASK --mode {pair,point} --input in.jsonl --output out.jsonl ...
  ureward eval --benchmark NAME --model DIR --input records.jsonl --output judged.jsonl ...
  ureward build-pairs --model DIR --task TASK --input items.jsonl --output pairs.jsonl ...
  ureward generate --model DIR --prompts prompts.txt --num-per-prompt 10 --out DIR ...

Every command appends its results to JSONL a batch at a time and, run again with the same output, skips what is
there. A bad row (a line, a record, an item, a prompt) becomes that row's "error", written and counted, and the run
goes on; each module's `BAD_ROWS` says how. Helpers raise; `main` alone turns a user's error into a message
(`ureward_jax.errors`).
"""

from __future__ import annotations

import argparse

from ureward_jax import errors
from ureward_jax.cli import build_pairs, evaluate, generate, score

COMMANDS = (score, evaluate, build_pairs, generate)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
  """Ends each option's help with its default; an option defaulting to None says in its help what happens then."""

  def _get_help_string(self, action: argparse.Action) -> str:
    return action.help if action.default is None else super()._get_help_string(action)


def parser() -> argparse.ArgumentParser:
  """The `ureward` parser: one subparser per command module, which sets `run` to the module's `run`; its help
  ends with what the command does with a bad row (the module's `BAD_ROWS`)."""
  top = argparse.ArgumentParser(prog="ureward", description="UnifiedReward in JAX.")
  commands = top.add_subparsers(dest="command", required=True)
  for module in COMMANDS:
    command = commands.add_parser(module.NAME, help=module.HELP, description=module.HELP, epilog=module.BAD_ROWS,
                                  formatter_class=_HelpFormatter)
    module.add_arguments(command)
    command.set_defaults(run=module.run)
  return top


def main(argv=None) -> int:
  """Run one command; 0 when it finished. Runs under `errors.guard`: a user's error ends it as SystemExit("error:
  ..."), which Python prints as that one line on stderr with exit status 1 (callers in Python see the message), Ctrl-C
  with "interrupted; re-run to resume" and status 130; a bad command line exits with argparse's usage message and
  status 2."""
  args = parser().parse_args(argv)
  return errors.guard(lambda: args.run(args))
