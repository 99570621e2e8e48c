"""Destinations that never lose a user's files: the converters and `ureward generate` (and whatever else writes a
model folder) write only into a folder that is new, empty, or one they wrote themselves, never into or around their
own source.

A folder the project writes carries `MANIFEST` (the tool that wrote it and the entries it made), which is how a
later run knows the folder is its own: a folder without one, or with an entry the manifest does not list (a file the
user added), is refused with a message naming what is there. A whole folder (a converted checkpoint) is written to
a hidden sibling, `.NAME.partial-*`, and renamed into place when complete, so an interrupted conversion leaves the
destination as it was; a folder a command fills as it goes (generate's candidates) is claimed up front and each of
its files is written whole or not at all by that command.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from ureward_jax.errors import UserError

MANIFEST = ".ureward_jax.json"


def _overlap(dst: Path, sources: Iterable[str | os.PathLike]) -> None:
  """Refuse a destination that is a source, lies inside one, or holds one (replacing it would remove the source)."""
  for source in sources:
    source = Path(source).resolve()
    if dst == source or source in dst.parents:
      raise UserError(f"the destination {dst} is inside the source {source}; choose a folder outside it")
    if dst in source.parents:
      raise UserError(f"the destination {dst} holds the source {source}; choose a folder outside it")


def _manifest(folder: Path) -> dict | None:
  try:
    manifest = json.loads((folder / MANIFEST).read_text())
  except (OSError, ValueError):
    return None
  return manifest if isinstance(manifest, dict) and isinstance(manifest.get("entries"), list) else None


def check_destination(dst: str | os.PathLike, tool: str, sources: Iterable[str | os.PathLike] = ()) -> Path:
  """`dst` resolved, if `tool` may write there: a new path, an empty folder, or a folder `tool` wrote that holds
  nothing else; else a UserError saying what is in the way."""
  dst = Path(dst).resolve()
  _overlap(dst, sources)
  if not dst.exists():
    return dst
  if not dst.is_dir():
    raise UserError(f"the destination {dst} is a file; give a folder path (a new or empty folder)")
  entries = sorted(os.listdir(dst))
  if not entries:
    return dst
  manifest = _manifest(dst)
  shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
  if manifest is None:
    raise UserError(f"the destination {dst} already holds files this project did not write ({shown}); choose a new "
                    "or empty folder")
  if manifest.get("tool") != tool:
    raise UserError(f"the destination {dst} was written by {manifest.get('tool')}, not {tool}; choose a new or empty "
                    "folder")
  foreign = [name for name in entries if name != MANIFEST and name not in manifest["entries"]]
  if foreign:
    raise UserError(f"the destination {dst} also holds files {tool} did not write ({', '.join(foreign[:5])}); move "
                    "them or choose a new or empty folder")
  return dst


def _write_manifest(folder: Path, tool: str, entries: Iterable[str]) -> None:
  (folder / MANIFEST).write_text(json.dumps({"tool": tool, "entries": sorted(entries)}, indent=1))


@contextlib.contextmanager
def staged_folder(dst: str | os.PathLike, tool: str, sources: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
  """Yield an empty hidden sibling of `dst` to write into; when the block completes it replaces `dst` (checked as
  `check_destination` does), and when it fails or is interrupted it is removed and `dst` is left untouched."""
  dst = check_destination(dst, tool, sources)
  made = _make_parents(dst)
  staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.partial-", dir=dst.parent))
  try:
    yield staging
    _write_manifest(staging, tool, os.listdir(staging))
    if dst.exists():   # a folder this tool wrote before: swap, then drop the old one
      old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
      os.replace(dst, old / dst.name)
      os.replace(staging, dst)
      shutil.rmtree(old)
    else:
      os.replace(staging, dst)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
    _remove_if_empty(made)


def check_file(dst: str | os.PathLike, sources: Iterable[str | os.PathLike] = ()) -> Path:
  """`dst` resolved, if a single file may be written there: nothing there yet, and not in or around a source."""
  dst = Path(dst).resolve()
  _overlap(dst, sources)
  if dst.exists():
    raise UserError(f"{dst} already exists; remove it or choose another file name")
  return dst


@contextlib.contextmanager
def staged_file(dst: str | os.PathLike, sources: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
  """Yield a hidden temporary path beside `dst` to write one file to; renamed to `dst` when the block completes.
  An existing `dst` is refused: a single file cannot say who wrote it."""
  dst = check_file(dst, sources)
  made = _make_parents(dst)
  handle, name = tempfile.mkstemp(prefix=f".{dst.name}.partial-", dir=dst.parent)
  os.close(handle)
  try:
    yield Path(name)
    os.replace(name, dst)
  finally:
    if os.path.exists(name):
      os.remove(name)
    _remove_if_empty(made)


def _make_parents(dst: Path) -> list[Path]:
  """Create the missing folders above `dst`; returns them, nearest first."""
  missing = [parent for parent in dst.parents if not parent.exists()]
  dst.parent.mkdir(parents=True, exist_ok=True)
  return missing


def _remove_if_empty(folders: list[Path]) -> None:
  """Remove `folders` (nearest first) while they are empty: what a failed write created, it takes back."""
  for folder in folders:
    try:
      folder.rmdir()
    except OSError:   # not empty (the write succeeded) or already gone
      return


def claim_folder(dst: str | os.PathLike, tool: str, entries: Iterable[str],
                 sources: Iterable[str | os.PathLike] = ()) -> Path:
  """Make `dst` a folder `tool` fills as it goes (checked as `check_destination` does) and record `entries`, the
  names it may write there, so that a re-run knows the folder as its own."""
  dst = check_destination(dst, tool, sources)
  dst.mkdir(parents=True, exist_ok=True)
  manifest = _manifest(dst)
  if manifest is None or not set(entries) <= set(manifest["entries"]):
    _write_manifest(dst, tool, set(entries) | set(manifest["entries"] if manifest else ()))
  return dst
