"""The error boundary of every entry point: user errors are one line with status 1, Ctrl-C is status 130 with one
line, anything else keeps its traceback."""

import errno
import os

import pytest

from ureward_jax import errors
from ureward_jax.errors import INTERRUPTED, UserError, describe, guard


def test_user_errors_are_described_in_one_line(tmp_path):
  assert describe(UserError("--batch-size must be at least 1")) == "--batch-size must be at least 1"
  try:
    open(tmp_path / "absent.jsonl")
  except OSError as e:
    assert describe(e) == f"{tmp_path / 'absent.jsonl'}: No such file or directory (check the path)"
  try:
    open(tmp_path)
  except OSError as e:
    assert describe(e).endswith("(a file was expected, not a folder)")
  (tmp_path / "file").write_text("")
  try:
    open(tmp_path / "file" / "out.jsonl", "w")
  except OSError as e:
    assert describe(e).startswith(str(tmp_path / "file" / "out.jsonl")) and "a folder was expected" in describe(e)
  assert describe(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))).endswith("(free some space or write elsewhere)")
  assert describe(FileNotFoundError("no tokenizer at 'x'")) == "no tokenizer at 'x'"   # raised with a message


def test_programming_errors_are_not_user_errors():
  for error in (ValueError("operands could not be broadcast"), TypeError("bad"), KeyError("k"), OSError("closed")):
    assert describe(error) is None


def test_guard_statuses(capsys):
  assert guard(lambda: None) == 0 and guard(lambda: 3) == 3

  def refuse():
    raise UserError("the destination holds notes.md")
  with pytest.raises(SystemExit) as exit_:
    guard(refuse)
  assert exit_.value.code == "error: the destination holds notes.md"   # printed by Python, status 1

  def interrupt():
    raise KeyboardInterrupt
  with pytest.raises(SystemExit) as exit_:
    guard(interrupt)
  assert exit_.value.code == errors.INTERRUPT and capsys.readouterr().err == INTERRUPTED + "\n"

  def bug():
    raise ZeroDivisionError("integer modulo by zero")
  with pytest.raises(ZeroDivisionError):   # its traceback is the report a bug needs
    guard(bug)
