"""Destinations that never lose a user's files: what may be written where, and staging that leaves nothing behind."""

import pytest

from ureward_jax.errors import UserError
from ureward_jax.outputs import MANIFEST, check_destination, claim_folder, staged_file, staged_folder


def write(folder, name, text):
  with staged_folder(folder, "tool") as staging:
    (staging / name).write_text(text)


def test_new_empty_or_own_folders_are_written(tmp_path):
  write(tmp_path / "new", "a.txt", "1")
  (tmp_path / "empty").mkdir()
  write(tmp_path / "empty", "a.txt", "1")
  write(tmp_path / "new", "b.txt", "2")   # its own folder: replaced whole
  assert sorted(p.name for p in (tmp_path / "new").iterdir()) == [MANIFEST, "b.txt"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "new"]   # no staging left beside it


def test_what_is_not_its_own_is_refused(tmp_path):
  (tmp_path / "users").mkdir()
  (tmp_path / "users" / "config.json").write_text("mine")
  with pytest.raises(UserError, match="files this project did not write .*config.json"):
    write(tmp_path / "users", "a.txt", "1")
  write(tmp_path / "ours", "a.txt", "1")
  (tmp_path / "ours" / "notes.md").write_text("added by the user")
  with pytest.raises(UserError, match="also holds files tool did not write .*notes.md"):
    write(tmp_path / "ours", "a.txt", "2")
  with pytest.raises(UserError, match="was written by tool, not other"):
    check_destination(tmp_path / "ours", "other")
  (tmp_path / "file").write_text("mine")
  with pytest.raises(UserError, match="is a file"):
    check_destination(tmp_path / "file", "tool")
  assert (tmp_path / "users" / "config.json").read_text() == "mine"
  assert (tmp_path / "ours" / "notes.md").read_text() == "added by the user"


def test_source_and_destination_must_not_overlap(tmp_path):
  source = tmp_path / "src"
  source.mkdir()
  for dst in (source, source / "out"):
    with pytest.raises(UserError, match="inside the source"):
      check_destination(dst, "tool", [source])
  with pytest.raises(UserError, match="holds the source"):
    check_destination(tmp_path, "tool", [source])


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failed_write_leaves_the_destination_as_it_was(tmp_path, error):
  write(tmp_path / "out", "a.txt", "first")
  with pytest.raises(error):
    with staged_folder(tmp_path / "out", "tool") as staging:
      (staging / "a.txt").write_text("half")
      raise error
  assert (tmp_path / "out" / "a.txt").read_text() == "first"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
  with pytest.raises(error):   # the folders it made for a destination in a new place are taken back too
    with staged_folder(tmp_path / "new" / "deeper" / "out", "tool"):
      raise error
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_file_is_written_whole_and_never_over_another(tmp_path):
  with staged_file(tmp_path / "model.ckpt") as partial:
    partial.write_bytes(b"weights")
  assert (tmp_path / "model.ckpt").read_bytes() == b"weights"
  with pytest.raises(UserError, match="already exists"):
    with staged_file(tmp_path / "model.ckpt"):
      pass
  with pytest.raises(RuntimeError):
    with staged_file(tmp_path / "other.ckpt") as partial:
      partial.write_bytes(b"half")
      raise RuntimeError
  with pytest.raises(RuntimeError):
    with staged_file(tmp_path / "new" / "other.ckpt"):
      raise RuntimeError
  assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt"]


def test_a_claimed_folder_is_its_own_on_a_rerun(tmp_path):
  claim_folder(tmp_path / "out", "generate", ["images", "candidates.jsonl"])
  (tmp_path / "out" / "images").mkdir()
  claim_folder(tmp_path / "out", "generate", ["images", "candidates.jsonl"])
  (tmp_path / "out" / "mine.txt").write_text("x")
  with pytest.raises(UserError, match="mine.txt"):
    claim_folder(tmp_path / "out", "generate", ["images", "candidates.jsonl"])
