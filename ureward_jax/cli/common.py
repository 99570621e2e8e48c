"""What the `ureward` subcommands share: the user-error type, the judging options and model loading, and the JSONL
rows they read and results they append."""

from __future__ import annotations

import argparse
import os
import reprlib
import sys

from ureward_jax.data.jsonl import JsonlWriter, read_lines
from ureward_jax.errors import UserError
from ureward_jax.reward import inputs


class UsageError(UserError):
  """A problem the user fixes (an option, a file, a folder): `main` prints it as one `error:` line."""


def require_positive(args: argparse.Namespace, names) -> None:
  """Refuse counts and sizes below 1."""
  for name in names:
    if getattr(args, name) < 1:
      raise UsageError(f"--{name.replace('_', '-')} must be at least 1")


def require_generated_text(args: argparse.Namespace) -> None:
  """--official reads verdict strings, which only the generate method produces."""
  if args.official and args.method != "generate":
    raise UsageError("--official reads the scripts' verdict strings from generated text: add --method generate")


def add_judging_arguments(command: argparse.ArgumentParser, input_help: str, resize: int | None = None,
                          resize_help: str = "resize images and frames to this square first (default: keep sizes)"
                          ) -> None:
  """The options of every command that judges with a reward model; `resize` is the command's default side."""
  command.add_argument("--model", required=True, help="converted checkpoint folder (with tokenizer.json)")
  command.add_argument("--input", required=True, help=input_help)
  command.add_argument("--output", required=True, help="JSONL results (appended to; ids already there are skipped)")
  command.add_argument("--method", default="logits", choices=("logits", "generate"),
                       help="read the verdict from the answer tokens' probabilities, or from generated text")
  command.add_argument("--swap", action="store_true", help="judge both orders of each pair and average")
  command.add_argument("--batch-size", type=int, default=4, help="judgements per model call")
  command.add_argument("--max-new-tokens", type=int, default=1024, help="token limit of the generate method")
  command.add_argument("--num-frames", type=int, default=8, help="frames sampled per video")
  command.add_argument("--resize", type=int, default=resize, help=resize_help)
  command.add_argument("--max-pixels", type=int, default=inputs.InputOptions.max_pixels,
                       help="an image or frame image of more pixels is that row's error, found before it is decoded "
                            "(Pillow's decompression-bomb limit by default; a larger one is honoured)")
  command.add_argument("--pair-layout", default="anyres", choices=inputs.PAIR_LAYOUTS,
                       help="anyres tiles per image (the released scripts) or one padded tile (LLaVA-NeXT's trainer)")
  command.add_argument("--video-layout", default="frames", choices=inputs.VIDEO_LAYOUTS,
                       help="each frame as an image (the released scripts) or pooled frames (LLaVA-NeXT's trainer)")
  command.add_argument("--media-root", default=None, help="folder of relative media paths (default: the input's)")
  command.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="compute dtype")
  command.add_argument("--report", default=None, help="also write a static HTML page of the judged rows")


def input_options(args: argparse.Namespace, resize: int | None) -> inputs.InputOptions:
  require_positive(args, ["num_frames", "max_pixels"])
  return inputs.InputOptions(num_frames=args.num_frames, resize=resize, pair_layout=args.pair_layout,
                             video_layout=args.video_layout, max_pixels=args.max_pixels)


def media_root(args: argparse.Namespace) -> str:
  return args.media_root or os.path.dirname(os.path.abspath(args.input))


def load_model(folder: str, dtype: str):
  """(model, tokenizer) of a converted LLaVA-OneVision checkpoint folder."""
  import jax.numpy as jnp
  import tokenizers

  import ureward_jax
  from ureward_jax import pretrained

  model_type = pretrained.read_config(folder).get("model_type")
  if model_type != "llava_onevision":
    raise UsageError(f"{folder} holds a {model_type!r} checkpoint, not a LLaVA-OneVision model (convert one with "
                     "`python -m converters.llava_onevision`)")
  tokenizer_file = os.path.join(folder, "tokenizer.json")
  if not os.path.exists(tokenizer_file):
    raise UsageError(f"{tokenizer_file} is missing; the model folder must hold the checkpoint's fast tokenizer (write "
                     "one with transformers: AutoTokenizer.from_pretrained(SRC).save_pretrained(MODEL_DIR))")
  try:
    tokenizer = tokenizers.Tokenizer.from_file(tokenizer_file)
  except Exception as e:   # the tokenizers library raises a bare Exception for a file it cannot read
    raise UsageError(f"{tokenizer_file} is not a tokenizer file the tokenizers library reads ({e})") from None
  return ureward_jax.load(folder, dtype=jnp.dtype(dtype)), tokenizer


def valid_id(value) -> bool:
  """Whether a row's "id" is a string or an integer (not a bool): what results are keyed and resumed by."""
  return isinstance(value, (str, int)) and not isinstance(value, bool)


def read_rows(path: str) -> list[dict]:
  """The rows of a JSONL file to judge, each with an "id" (default its line, "line 7"). A line that is not a JSON
  object, or whose "id" is not a string or an integer, becomes a row known by its line with an "error", written and
  counted like any failed row; a row whose id an earlier row has is skipped with a warning."""
  rows, seen, duplicates = [], set(), []
  for line in read_lines(path):
    if line.row is None:
      rows.append({"id": f"line {line.number}", "error": f"unreadable line: {line.error}"})
      continue
    row = line.row
    if not valid_id(row.setdefault("id", f"line {line.number}")):
      row = {"id": f"line {line.number}",
             "error": f"'id' must be a string or an integer, got {reprlib.repr(row['id'])}"}
    if row["id"] in seen:
      duplicates.append(line.number)
      continue
    seen.add(row["id"])
    rows.append(row)
  warn_duplicates(duplicates)
  return rows


def warn_duplicates(line_numbers: list[int]) -> None:
  """Tell the user which lines were skipped because an earlier line has their id."""
  if line_numbers:
    print(f"warning: skipping {len(line_numbers)} rows whose id an earlier row has (lines "
          f"{', '.join(map(str, line_numbers[:20]))}{', ...' if len(line_numbers) > 20 else ''})", file=sys.stderr)


def results_writer(path: str) -> JsonlWriter:
  """The writer of a results file, telling the user when it removed the line an interrupted run cut short."""
  writer = JsonlWriter(path)
  if writer.repaired:
    print(f"warning: {writer.repaired}", file=sys.stderr)
  return writer
