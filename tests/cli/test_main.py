"""The `ureward` entry point: every default in --help, and a user's error shown as one `error:` line with a
non-zero status, never a traceback."""

import argparse
import os
import subprocess
import sys

import pytest

from ureward_jax.cli import COMMANDS, main, parser

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def option_help(text: str) -> dict[str, str]:
  """Option string → its whole help entry (invocation and text, on one line) of an argparse help page."""
  entries, current = {}, None
  for line in text.splitlines():
    if line.startswith("  -"):
      current = line.split()[0].rstrip(",")
      entries[current] = line.strip()
    elif current and line.startswith("    "):
      entries[current] += " " + line.strip()
    else:
      current = None
  return entries


def test_help_shows_every_default(monkeypatch):
  monkeypatch.setenv("COLUMNS", "100")   # wrapped as on a terminal: entries span lines
  commands = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
  assert sorted(commands.choices) == ["build-pairs", "eval", "generate", "score"]
  for name, command in commands.choices.items():
    entries = option_help(command.format_help())
    for action in command._actions:
      if action.default in (None, argparse.SUPPRESS):
        continue
      entry = entries[action.option_strings[0]]
      assert f"(default: {action.default})" in entry, (name, entry)
  assert "(default: 512)" in option_help(commands.choices["build-pairs"].format_help())["--resize"]


def test_a_helper_error_is_one_line_and_a_nonzero_status(tmp_path):
  (tmp_path / "p.txt").write_text("a cat\n")
  done = subprocess.run(
      [sys.executable, "-m", "ureward_jax.cli", "generate", "--model", str(tmp_path), "--prompts",
       str(tmp_path / "p.txt"), "--num-per-prompt", "2", "--out", str(tmp_path / "out")],
      cwd=ROOT, capture_output=True, text=True, timeout=300, env=os.environ | {"JAX_PLATFORMS": "cpu"})
  assert done.returncode == 1 and done.stdout == ""
  assert done.stderr.splitlines() == [
      f"error: {tmp_path} is not a converted SDXL pipeline folder: {tmp_path / 'config.json'} is missing (convert "
      "one with `python -m converters.sdxl --src SRC --dst DIR`)"]


def test_a_damaged_output_file_is_named_before_any_model_loads(tmp_path):
  (tmp_path / "in.jsonl").write_text('{"id": "a", "prompt": "x", "images": ["1.png", "2.png"]}\n')
  (tmp_path / "out.jsonl").write_text('{"id": "a"}\n{"id": \n{"id": "b"}\n')
  with pytest.raises(SystemExit, match=r"^error: .*out.jsonl:2: not a JSON object .*fix or delete that line"):
    main(["score", "--model", str(tmp_path / "no_model"), "--task", "image_generation", "--mode", "pair",
          "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.jsonl")])


def test_a_cut_last_line_is_removed_with_a_warning(tmp_path, capsys):
  (tmp_path / "in.jsonl").write_text('{"id": "a", "prompt": "x", "images": ["1.png", "2.png"]}\n')
  out = tmp_path / "out.jsonl"
  out.write_text('{"id": "b"}\n{"id": "a", "winn')
  with pytest.raises(SystemExit, match="config.json is missing"):   # the repair comes first, then the (missing) model
    main(["score", "--model", str(tmp_path), "--task", "image_generation", "--mode", "pair",
          "--input", str(tmp_path / "in.jsonl"), "--output", str(out)])
  assert f"warning: {out}:2: removed a line an interrupted run cut short" in capsys.readouterr().err
  assert out.read_text() == '{"id": "b"}\n'


def test_help_says_what_happens_to_a_bad_row():
  commands = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
  for module in COMMANDS:
    text = " ".join(commands.choices[module.NAME].format_help().split())
    assert " ".join(module.BAD_ROWS.split()) in text and "error" in module.BAD_ROWS, module.NAME
