"""JSON Lines: the one reader of record files and the one resumable writer of results.

Every JSONL file the project reads or appends to goes through here: training records and pairs (`data/`), and the
rows, benchmark records, prompts and results of the `ureward` command. Messages locate a line as `FILE:LINE`.

Reading skips blank lines and hands back each line's JSON object, or why the line holds none; the caller decides
what that means. Training data stops on it (`read_records`: a bad record is fixed, not trained around); a batch job
keeps it as one row's error, counted with the others.

Writing appends, one object per line, flushed a batch at a time, and knows the ids already in the file, so a re-run
skips them. Of the lines an interrupted run leaves, only the last can be cut short (appends never touch earlier
ones): `JsonlWriter` removes such a line, says so in `repaired`, and its row is done again. Any other line that is
not a JSON object with an id means the file was edited or damaged; that is an error naming the line, since guessing
would drop or repeat rows.

This module imports nothing else of the project but its error type: the command and every data reader sit above it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Hashable
from typing import Iterable, Iterator

from ureward_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Line:
  """One non-blank line of a JSONL file: its JSON object, or why it holds none."""
  path: str
  number: int                 # 1-based, blank lines counted: what an editor shows
  row: dict | None            # None when the line is not a JSON object
  error: str | None = None    # why it is not one

  @property
  def where(self) -> str:
    return f"{self.path}:{self.number}"


def _parse(text: bytes) -> tuple[dict | None, str | None]:
  """(the JSON object of a line, None) or (None, why it is not one)."""
  try:
    row = json.loads(text)
  except json.JSONDecodeError as e:
    return None, f"not a JSON object ({e.msg} at column {e.colno})"
  except UnicodeDecodeError as e:   # bytes are decoded per line, so one bad line does not stop the file
    return None, f"not UTF-8 text ({e.reason} at byte {e.start})"
  if not isinstance(row, dict):
    return None, f"expected a JSON object, got {type(row).__name__}"
  return row, None


def read_lines(path: str) -> Iterator[Line]:
  """Each non-blank line of a JSONL file, in order."""
  with open(path, "rb") as f:
    for number, text in enumerate(f, 1):
      if text.strip():
        yield Line(path, number, *_parse(text))


def read_records(path: str) -> list[tuple[str, dict]]:
  """(where, record) of each record of a `.json` list, or of a JSON Lines file (any other name); `where` names the
  file and line (or list entry) for messages. A record that is not a JSON object is a ValueError saying where."""
  if not path.endswith(".json"):
    records = []
    for line in read_lines(path):
      if line.error:
        raise UserError(f"{line.where}: {line.error}")
      records.append((line.where, line.row))
    return records
  with open(path, encoding="utf-8") as f:
    try:
      records = json.load(f)
    except json.JSONDecodeError as e:
      raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
  if not isinstance(records, list):
    raise UserError(f"{path}: expected a list of records (JSON objects), got {type(records).__name__}")
  located = [(f"{path}: record {i}", record) for i, record in enumerate(records)]
  for where, record in located:
    if not isinstance(record, dict):
      raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}")
  return located


class JsonlWriter:
  """Appends rows to a JSONL file, a batch at a time, and knows the ids already written.

  Made before the work starts: it reads the file (repairing the tail an interrupted run left) to fill `done`;
  entering it opens the file for appending. `append` writes a batch and flushes, so an interruption loses at most
  the batch being written.
  """

  def __init__(self, path: str, key: str = "id"):
    self.path, self.key = path, key
    self.done: set = set()
    self.repaired: str | None = None   # what opening did to an interrupted run's last line, for the user
    self._file = None
    if os.path.exists(path):
      self._recover()

  def _recover(self) -> None:
    whole, last = 0, b"\n"   # bytes of whole lines; the last line read
    with open(self.path, "rb") as f:
      for number, last in enumerate(f, 1):
        if last.strip():
          row, error = _parse(last)
          if not last.endswith(b"\n") and error:   # an append stopped mid-line: the row was never written
            with open(self.path, "r+b") as out:
              out.truncate(whole)
            self.repaired = (f"{self.path}:{number}: removed a line an interrupted run cut short ({len(last)} bytes); "
                             "its row is done again")
            return
          if not error and not isinstance(row.get(self.key, []), Hashable):
            error = f"no {self.key!r}, or one that is a list or an object"
          if error:
            raise UserError(f"{self.path}:{number}: {error}. Only the last line of an interrupted run can be cut "
                            "short, so the file was edited or damaged: fix or delete that line, or write elsewhere")
          self.done.add(row[self.key])
        whole += len(last)
    if not last.endswith(b"\n"):   # a whole last row that lost only its newline: keep it, end it
      with open(self.path, "ab") as out:
        out.write(b"\n")

  def __enter__(self) -> JsonlWriter:
    self._file = open(self.path, "a", encoding="utf-8")
    return self

  def __exit__(self, *exc) -> None:
    self._file.close()

  def append(self, rows: Iterable[dict]) -> None:
    """Write each row on its own line (each with its id) and flush."""
    for row in rows:
      self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
      self.done.add(row[self.key])
    self._file.flush()
