"""Training data: mixtures, examples from every record kind, bad records, truncation, and a resumable stream whose
order does not depend on loading workers or restarts."""

import json
import logging

import numpy as np
import pytest
from absl import flags

from ureward_jax.data import shapes
from ureward_jax.data.examples import BadRecord, ExampleConfig, make_example
from ureward_jax.data.jsonl import read_records
from ureward_jax.data.pipeline import DataConfig, batch_stats, batches
from ureward_jax.data.sources import Record, load_mixture, sample
from ureward_jax.models.llava_onevision import PRESETS
from ureward_jax.processing.chat import IGNORE

flags.FLAGS.mark_as_parsed()   # Grain reads absl flags; pytest does not parse them
MODEL = PRESETS["demo_tiny"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  root = tmp_path_factory.mktemp("shapes")
  shapes.generate(root, num_per_task=6, split="train", seed=0)
  tokenizer = shapes.shapes_tokenizer()
  tokenizer.save(str(root / "tokenizer.json"))
  return root, tokenizer


def example_config(max_length=576, max_patches=8):
  return ExampleConfig.for_model(MODEL, max_length, max_patches, video_frames=4)


def test_mixture_strategies_are_seeded_and_exact(tmp_path):
  rows = [{"id": str(i), "conversations": []} for i in range(10)]
  (tmp_path / "a.json").write_text(json.dumps(rows))
  (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
  (tmp_path / "mix.yaml").write_text(
      "datasets:\n  - json_path: a.json\n    sampling_strategy: first:3\n"
      "  - json_path: b.jsonl\n    sampling_strategy: end:2\n    image_folder: media\n"
      "  - json_path: a.json\n    sampling_strategy: random:40%\n")
  mixture = load_mixture(str(tmp_path / "mix.yaml"), seed=5)
  assert [r.data["id"] for r in mixture[:5]] == ["0", "1", "2", "8", "9"]
  assert mixture[3].image_folder == str(tmp_path / "media") and mixture[0].image_folder == str(tmp_path)
  drawn = [r.data["id"] for r in mixture[5:]]
  assert len(drawn) == 4 == len(set(drawn))
  assert drawn == [r.data["id"] for r in load_mixture(str(tmp_path / "mix.yaml"), seed=5)[5:]]
  assert sample(rows, "all") == rows
  with pytest.raises(ValueError, match="unknown sampling strategy 'some:3'"):
    sample(rows, "some:3")
  (tmp_path / "broken.jsonl").write_text('{"id": 1}\n{"id": \n')
  with pytest.raises(ValueError, match="broken.jsonl:2"):
    read_records(str(tmp_path / "broken.jsonl"))


def test_every_task_and_mode_becomes_an_example(world):
  root, tokenizer = world
  cfg = example_config()
  seen = set()
  for i, record in enumerate(load_mixture(str(root / "train.yaml"))):
    example = make_example(record, i, cfg, tokenizer)
    length = int(example["attention_mask"].sum())
    visual = example["visual_dest"] < cfg.max_length
    # Visual tokens sit where the text had its placeholders, never learned; the verdict or score is.
    assert np.all(example["labels"][example["visual_dest"][visual]] == IGNORE)
    assert np.all(example["input_ids"][example["visual_dest"][visual]] == MODEL.image_token_id) or \
        np.all(example["input_ids"][example["visual_dest"][visual]] == MODEL.video_token_id)
    target = record.data["conversations"][-1]["value"]
    learned = tokenizer.decode([int(t) for t in example["labels"][:length] if t != IGNORE])
    assert target.split()[-1].strip(".") in learned
    assert example["bad"] == 0 and example["truncated"] == 0
    seen.add((record.data["task"], record.data["mode"]))
  assert len(seen) == 8


def _an_image(root):
  return next(r.data["image"] for r in load_mixture(str(root / "train.yaml")) if "image" in r.data)


def _record(root, **fields):
  data = {"id": "r", "conversations": [{"from": "human", "value": "<image>\nWhat color is the circle?"},
                                       {"from": "gpt", "value": "red"}]}
  data.update(fields)
  return Record({k: v for k, v in data.items() if v is not None}, str(root), "test.json")


def test_bad_records_say_what_is_wrong(world, tmp_path):
  root, tokenizer = world
  image = _an_image(root)
  (tmp_path / "corrupt.png").write_bytes(b"not a png")
  cases = {
      "missing file": _record(root, image="media/nowhere.png"),
      "corrupt image": _record(tmp_path, image="corrupt.png"),
      "empty conversation": _record(root, image=image, conversations=[]),
      "no assistant turn": _record(root, image=image,
                                   conversations=[{"from": "human", "value": "<image>\nhi"}]),
      "0 <image> markers in the text for 1 visual inputs": _record(
          root, image=image, conversations=[{"from": "human", "value": "hi"},
                                                       {"from": "gpt", "value": "red"}]),
      "needs 2 patches; the budget is 1": _record(root, image=image),
  }
  for reason, record in cases.items():
    cfg = example_config(max_patches=1 if reason.startswith("needs") else 8)
    with pytest.raises(BadRecord, match=reason):
      make_example(record, 0, cfg, tokenizer)


def test_bad_records_take_an_empty_slot_and_are_logged(world, huge_png, caplog):
  """A missing file, a 20000×20000 image (Pillow's own error) and a malformed field each skip their record, logged
  and counted; the others are examples."""
  root, _ = world
  image = _an_image(root)
  records = [_record(root, id=f"good{i}", image=image) for i in range(3)]
  records += [_record(root, id="lost", image="media/nowhere.png"), _record(root, id="huge", image=huge_png),
              _record(root, id="field", images=7)]
  stream = batches(records, example_config(), str(root / "tokenizer.json"),
                   DataConfig(global_batch=6, num_epochs=1), process_index=0, process_count=1)
  with caplog.at_level(logging.WARNING):
    (batch,) = list(stream)
  bad = batch["bad"].astype(bool)
  assert sorted(records[i].data["id"] for i in batch["index"][bad]) == ["field", "huge", "lost"]
  assert batch_stats(batch)["bad"] == 3
  assert np.all(batch["labels"][bad] == IGNORE) and np.all(batch["attention_mask"][bad] == 0)
  assert "skipping record lost" in caplog.text and "missing file" in caplog.text
  assert "skipping record huge" in caplog.text
  assert "DecompressionBombError: Image size (400000000 pixels)" in caplog.text
  assert "skipping record field" in caplog.text and "TypeError" in caplog.text


def test_truncation_is_counted_and_cuts_visual_tokens_too(world):
  root, tokenizer = world
  record = next(r for r in load_mixture(str(root / "train.yaml")) if r.data["task"] == "video_understanding")
  full = make_example(record, 0, example_config(), tokenizer)
  length = int(full["attention_mask"].sum())
  first_visual = int(full["visual_dest"].min())
  cut = make_example(record, 0, example_config(max_length=first_visual + 3), tokenizer)
  assert cut["truncated"] == 1 and full["truncated"] == 0 and length > first_visual + 3
  assert np.sum(cut["visual_dest"] < first_visual + 3) == 3
  np.testing.assert_array_equal(cut["input_ids"], full["input_ids"][:first_visual + 3])


def _stream(root, records, workers=0, start=0, **kwargs):
  cfg = DataConfig(global_batch=4, seed=3, buckets=(320, 448), workers=workers)
  return batches(records, example_config(), str(root / "tokenizer.json"), cfg, start=start, **kwargs)


def _take(stream, n):
  out = []
  for batch in stream:
    out.append(batch)
    if len(out) == n:
      return out


def test_order_is_independent_of_workers_restarts_and_hosts(world):
  root, _ = world
  records = load_mixture(str(root / "train.yaml"))
  reference = _take(_stream(root, records, process_index=0, process_count=1), 14)   # 48 records: > 1 epoch
  indices = [b["index"].tolist() for b in reference]
  assert sorted(sum(indices[:12], [])) == list(range(48))           # an epoch covers every record once
  assert indices[12:] != [indices[0], indices[1]]                   # and the next one is reshuffled
  with_workers = _take(_stream(root, records, workers=2, process_index=0, process_count=1), 14)
  resumed = _take(_stream(root, records, start=9, process_index=0, process_count=1), 5)
  for got, want in zip(with_workers + resumed, reference + reference[9:]):
    assert got.keys() == want.keys()
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  hosts = [_take(_stream(root, records, process_index=i, process_count=2), 3) for i in range(2)]
  host_indices = [sum((b["index"].tolist() for b in h), []) for h in hosts]
  assert not set(host_indices[0]) & set(host_indices[1]) and all(len(b["index"]) == 2 for b in hosts[0])


def test_batches_are_cut_to_the_shortest_bucket_that_fits(world):
  root, _ = world
  records = [r for r in load_mixture(str(root / "train.yaml")) if r.data["task"] == "image_generation"]
  (batch,) = _take(_stream(root, records, process_index=0, process_count=1), 1)
  longest = int(batch["attention_mask"].sum(axis=1).max())
  assert longest <= 320 and batch["input_ids"].shape == (4, 320) and batch["visual_src"].shape == (4, 320, 4)
  assert batch["visual_dest"].max() == 320
