"""The JSONL reader and the resumable writer: bad lines located by file and line, resumed runs that skip written
ids, an interrupted run's cut last line removed and reported, damage elsewhere refused."""

import json

import pytest

from ureward_jax.data.jsonl import JsonlWriter, read_lines, read_records


def test_lines_are_located_and_bad_ones_explained(tmp_path):
  path = tmp_path / "rows.jsonl"
  path.write_bytes(b'{"id": "a"}\n\n  \n{"id": \n[1, 2]\n{"id": "\xff"}\n{"id": "b"}')
  lines = list(read_lines(str(path)))
  assert [(line.number, line.row) for line in lines] == [
      (1, {"id": "a"}), (4, None), (5, None), (6, None), (7, {"id": "b"})]
  assert lines[1].where == f"{path}:4" and lines[1].error.startswith("not a JSON object (Expecting value")
  assert lines[2].error == "expected a JSON object, got list"
  assert lines[3].error.startswith("not UTF-8 text")
  assert lines[0].error is None


def test_records_stop_at_the_first_bad_line(tmp_path):
  path = tmp_path / "train.jsonl"
  path.write_text('{"id": 1}\n\n{"id": 2}\n')
  assert read_records(str(path)) == [(f"{path}:1", {"id": 1}), (f"{path}:3", {"id": 2})]
  path.write_text('{"id": 1}\n\n"text"\n')
  with pytest.raises(ValueError, match=r"train.jsonl:3: expected a JSON object, got str"):
    read_records(str(path))
  listed = tmp_path / "train.json"
  listed.write_text(json.dumps([{"id": 1}, {"id": 2}]))
  assert read_records(str(listed)) == [(f"{listed}: record 0", {"id": 1}), (f"{listed}: record 1", {"id": 2})]
  listed.write_text(json.dumps([{"id": 1}, 2]))
  with pytest.raises(ValueError, match=r"train.json: record 1: expected a JSON object, got int"):
    read_records(str(listed))
  listed.write_text('[{"id": 1},')
  with pytest.raises(ValueError, match=r"train.json: not valid JSON"):
    read_records(str(listed))


def test_a_resumed_run_skips_written_ids_and_appends(tmp_path):
  path = tmp_path / "out.jsonl"
  writer = JsonlWriter(str(path))
  assert writer.done == set() and writer.repaired is None and not path.exists()   # nothing made before entering
  with writer:
    writer.append([{"id": "a", "x": "é"}, {"id": 2}])
    assert path.read_text(encoding="utf-8") == '{"id": "a", "x": "é"}\n{"id": 2}\n'   # flushed with the batch
  again = JsonlWriter(str(path))
  assert again.done == {"a", 2} and again.repaired is None
  with again:
    again.append([{"id": "c"}])
  assert again.done == {"a", 2, "c"}
  assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["a", 2, "c"]


def test_an_interrupted_last_line_is_removed_and_reported(tmp_path):
  path = tmp_path / "out.jsonl"
  path.write_text('{"id": "a"}\n\n{"id": "b", "text": "cut he')
  writer = JsonlWriter(str(path))
  assert writer.done == {"a"}
  assert writer.repaired == f"{path}:3: removed a line an interrupted run cut short (27 bytes); its row is done again"
  assert path.read_text() == '{"id": "a"}\n\n'
  # A cut inside a character ("é" is two bytes) is a cut line too, not a crash.
  path.write_bytes('{"id": "a"}\n{"id": "é'.encode()[:-1])
  assert JsonlWriter(str(path)).done == {"a"} and path.read_text() == '{"id": "a"}\n'


def test_a_whole_last_row_without_its_newline_is_kept(tmp_path):
  path = tmp_path / "out.jsonl"
  path.write_text('{"id": "a"}\n{"id": "b"}')
  writer = JsonlWriter(str(path))
  assert writer.done == {"a", "b"} and writer.repaired is None
  with writer:
    writer.append([{"id": "c"}])
  assert path.read_text() == '{"id": "a"}\n{"id": "b"}\n{"id": "c"}\n'


@pytest.mark.parametrize("text, message", [
    ('{"id": "a"}\n{"id": \n{"id": "c"}\n', r"out.jsonl:2: not a JSON object .*edited or damaged"),
    ('{"id": "a"}\n{"x": 1}\n', r"out.jsonl:2: no 'id', or one that is a list or an object"),
    ('{"id": ["a"]}\n', r"out.jsonl:1: no 'id'"),
    ('{"id": "a"}\n{"x": 1}', r"out.jsonl:2: no 'id'"),   # a whole object, not a cut: someone wrote it
])
def test_damage_other_than_a_cut_last_line_is_refused(tmp_path, text, message):
  path = tmp_path / "out.jsonl"
  path.write_text(text)
  with pytest.raises(ValueError, match=message):
    JsonlWriter(str(path))
  assert path.read_text() == text   # nothing removed
