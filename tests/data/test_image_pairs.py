"""Diffusion-DPO image-pair data: torchvision-exact preprocessing, the winner first, ties dropped, unreadable pairs
kept with weight 0, micro-batches laid out [winners; losers], and a seeded, per-host, resumable stream."""

import dataclasses
import json
import logging
import pickle

import numpy as np
import pytest
from absl import flags
from PIL import Image

from tests.tiny_sdxl import write_tokenizer
from ureward_jax.data import image_pairs
from ureward_jax.data.image_pairs import BuildPair, PairDataConfig, load_pairs, pair_batches, preprocess
from ureward_jax.processing.clip_tokenizer import CLIPTokenizer

flags.FLAGS.mark_as_parsed()   # Grain reads absl flags; pytest does not parse them
R = 16
RED, BLUE = (255, 0, 0), (0, 0, 255)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
  root = tmp_path_factory.mktemp("tokenizers")
  return str(write_tokenizer(root / "tok", "<|endoftext|>")), str(write_tokenizer(root / "tok_2", "!"))


def write_jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def noise_pairs(root, count, seed=0):
  """`count` pairs of random images (so flips show), alternating label_0 1, 0; distinct captions."""
  rng = np.random.default_rng(seed)
  rows = []
  for i in range(count):
    for side in "ab":
      Image.fromarray(rng.integers(0, 256, (20 + i, 24, 3), np.uint8)).save(root / f"{i}{side}.png")
    rows.append({"id": f"p{i}", "caption": f"the cat {i}", "jpg_0": f"{i}a.png", "jpg_1": f"{i}b.png",
                 "label_0": 1 - i % 2})
  return load_pairs(write_jsonl(root / "pairs.jsonl", rows))


def _take(stream, n):
  return [b for b, _ in zip(stream, range(n))]


def expected_pixels(image, resolution, top, left, size, flip=False):
  """Independent of `preprocess`: PIL's bilinear resize to the given (width, height), a crop at (top, left) worked
  out by hand from torchvision's rules, ToTensor + Normalize in float64."""
  image = image.convert("RGB")
  if size != image.size:
    image = image.resize(size, Image.BILINEAR)
  array = np.asarray(image.crop((left, top, left + resolution, top + resolution)), np.float64)
  array = array / 255.0 * 2.0 - 1.0
  return np.fliplr(array) if flip else array


@pytest.mark.parametrize("wh, size, top, left", [
    ((300, 200), (96, 64), 0, 16),      # wide: height → 64, width int(64 · 300 / 200) = 96, left (96 − 64) / 2
    ((200, 300), (64, 96), 16, 0),      # tall
    ((262, 128), (131, 64), 0, 34),     # (131 − 64) / 2 = 33.5 rounds half to even (Python's round) → 34
    ((129, 64), (129, 64), 0, 32),      # no resize; round(32.5) → 32
    ((201, 199), (64, 64), 0, 0),       # int(64 · 201 / 199) = 64: square after resize
])
def test_preprocess_is_torchvisions_resize_crop_flip_normalize(wh, size, top, left):
  rng = np.random.default_rng(sum(wh))
  image = Image.fromarray(rng.integers(0, 256, (wh[1], wh[0], 3), np.uint8))
  for flip in (False, True):
    out = preprocess(image, 64, flip)
    assert out.shape == (64, 64, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected_pixels(image, 64, top, left, size, flip), rtol=0, atol=1e-6)
  assert not np.array_equal(preprocess(image, 64, True), preprocess(image, 64, False))
  assert preprocess(image, 64, False).min() >= -1 and preprocess(image, 64, False).max() <= 1
  # Other modes are converted to RGB first.
  grey = image.convert("L")
  np.testing.assert_array_equal(preprocess(grey, 64, False), preprocess(grey.convert("RGB"), 64, False))


def test_preprocess_equals_torchvision_when_installed():
  transforms = pytest.importorskip("torchvision.transforms")
  image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (200, 262, 3), np.uint8))
  for flip in (False, True):
    steps = [transforms.Resize(64, interpolation=transforms.InterpolationMode.BILINEAR), transforms.CenterCrop(64)]
    steps += [transforms.RandomHorizontalFlip(p=1.0)] if flip else []
    steps += [transforms.ToTensor(), transforms.Normalize([0.5], [0.5])]
    theirs = transforms.Compose(steps)(image).numpy().transpose(1, 2, 0)
    np.testing.assert_array_equal(preprocess(image, 64, flip), theirs)


def test_load_pairs_resolves_paths_drops_ties_and_names_bad_lines(tmp_path, caplog):
  rows = [{"id": "a", "caption": "c", "jpg_0": "x.png", "jpg_1": "/abs/y.png", "label_0": 1, "extra": 3},
          {"id": "tie", "caption": "c", "jpg_0": "x.png", "jpg_1": "y.png", "label_0": 0.5},
          {"caption": "c", "jpg_0": "x.png", "jpg_1": "y.png", "label_0": 0}]
  path = write_jsonl(tmp_path / "pairs.jsonl", rows)
  with caplog.at_level(logging.INFO):
    pairs = load_pairs(path)
  assert "dropped 1 of 3" in caplog.text
  assert [p.get("id") for p in pairs] == ["a", None]
  assert pairs[0]["jpg_0"] == str(tmp_path / "x.png") and pairs[0]["jpg_1"] == "/abs/y.png" and pairs[0]["extra"] == 3
  assert load_pairs(path, image_folder="/media")[1]["jpg_1"] == "/media/y.png"
  (tmp_path / "list.json").write_text(json.dumps(rows))
  assert [p["jpg_0"] for p in load_pairs(str(tmp_path / "list.json"), "m")] == ["m/x.png", "m/x.png"]

  good = json.dumps(rows[0])
  for bad, message in [
      ({k: v for k, v in rows[0].items() if k != "label_0"}, "pairs.jsonl:3: .*missing label_0"),
      ({k: v for k, v in rows[0].items() if k != "caption"}, "pairs.jsonl:3: .*missing caption"),
      (rows[0] | {"label_0": 2}, "pairs.jsonl:3: label_0 must be"),
      (rows[0] | {"label_0": "1"}, "pairs.jsonl:3: label_0 must be"),
      (rows[0] | {"jpg_1": None}, "pairs.jsonl:3: jpg_1 must be an image path"),
      ([1, 2], "pairs.jsonl:3: expected a JSON object")]:
    (tmp_path / "pairs.jsonl").write_text(f"{good}\n\n{json.dumps(bad)}\n")   # a blank line counts
    with pytest.raises(ValueError, match=message):
      load_pairs(str(tmp_path / "pairs.jsonl"))
  (tmp_path / "pairs.jsonl").write_text(f"{good}\n{{\"id\": \n")
  with pytest.raises(ValueError, match="pairs.jsonl:2: not a JSON object"):
    load_pairs(str(tmp_path / "pairs.jsonl"))


def test_the_winner_comes_first_and_both_tokenizers_run(tmp_path, tokenizers):
  Image.new("RGB", (20, 30), RED).save(tmp_path / "red.png")
  Image.new("RGB", (30, 20), BLUE).save(tmp_path / "blue.jpg")
  rows = [{"id": "one", "caption": "the red cat", "jpg_0": "red.png", "jpg_1": "blue.jpg", "label_0": 1},
          {"id": "zero", "caption": "the blue dog!", "jpg_0": "red.png", "jpg_1": "blue.jpg", "label_0": 0}]
  build = BuildPair(load_pairs(write_jsonl(tmp_path / "p.jsonl", rows)), R, True, 0, *tokenizers)
  red, blue = (np.asarray(c, np.float32) / 255 * 2 - 1 for c in (RED, BLUE))
  for index, (winner, loser) in enumerate([(red, blue), (blue, red)]):
    pair = build.build(index)
    assert pair["pixels"].shape == (2, R, R, 3) and pair["pixels"].dtype == np.float32
    np.testing.assert_allclose(pair["pixels"][0], np.broadcast_to(winner, (R, R, 3)), atol=0.02)   # JPEG: close
    np.testing.assert_allclose(pair["pixels"][1], np.broadcast_to(loser, (R, R, 3)), atol=0.02)
    assert pair["index"] == index and pair["bad"] == 0
    for key, folder in zip(("ids", "ids_2"), tokenizers):
      np.testing.assert_array_equal(pair[key], CLIPTokenizer(folder)([rows[index]["caption"]])[0])
  assert not np.array_equal(build.build(1)["ids"], build.build(1)["ids_2"])   # "!" pads and is id 0 in the second
  # The tokenizers load in the worker and do not travel.
  assert build._tokenizers is not None and pickle.loads(pickle.dumps(build))._tokenizers is None


def test_an_unreadable_pair_keeps_its_slot_with_weight_zero(tmp_path, tokenizers, caplog):
  records = noise_pairs(tmp_path, 4)
  records[2]["jpg_1"] = str(tmp_path / "missing.png")
  (tmp_path / "broken.png").write_bytes(b"not an image")
  records[3]["jpg_0"] = str(tmp_path / "broken.png")
  data = PairDataConfig(global_batch=4, grad_accum=2, resolution=R, num_epochs=1)
  with caplog.at_level(logging.WARNING):
    (batch,) = list(pair_batches(records, data, *tokenizers, process_index=0, process_count=1))
  assert "skipping pair p2" in caplog.text and "missing.png" in caplog.text and "skipping pair p3" in caplog.text
  assert batch["pixels"].shape == (2, 4, R, R, 3) and batch["weight"].shape == (2, 2)
  assert sorted(batch["index"].tolist()) == [0, 1, 2, 3]
  bad = np.isin(batch["index"], [2, 3])
  np.testing.assert_array_equal(batch["bad"], bad.astype(np.int32))
  np.testing.assert_array_equal(batch["weight"].reshape(-1), (~bad).astype(np.float32))
  pixels = batch["pixels"].reshape(2, 2, 2, R, R, 3)   # (A, winner/loser, M, ...)
  for slot, is_bad in enumerate(bad):
    a, m = divmod(slot, 2)
    assert (np.abs(pixels[a, :, m]).max() == 0) == is_bad
  assert np.all(batch["ids"][batch["weight"] == 0] != 0)   # the captions are still tokenized


def test_a_pair_that_raises_anything_is_skipped(tmp_path, tokenizers, huge_png, monkeypatch, caplog):
  records = noise_pairs(tmp_path, 3)
  records[2]["jpg_1"] = huge_png
  real = image_pairs._open

  def crashing(path):
    if path == records[1]["jpg_0"]:
      raise RuntimeError("the decoder crashed")
    return real(path)
  monkeypatch.setattr(image_pairs, "_open", crashing)
  build = BuildPair(records, R, False, 0, *tokenizers)
  with caplog.at_level(logging.WARNING):
    assert [build.build(i)["bad"] for i in range(3)] == [0, 1, 1]
  assert "skipping pair p1 (1): RuntimeError: the decoder crashed" in caplog.text
  assert "skipping pair p2 (2): DecompressionBombError" in caplog.text


def test_micro_batches_are_winners_then_losers(tmp_path, tokenizers):
  # Solid colours that name the pair and the side: red channel 16·i, blue 255 for the winner, 0 for the loser.
  rows = []
  for i in range(8):
    for side in "ab":
      winner = (side == "a") == (i % 2 == 0)
      Image.new("RGB", (24, 18), (16 * i, 7, 255 if winner else 0)).save(tmp_path / f"{i}{side}.png")
    rows.append({"id": f"p{i}", "caption": f"the cat {'and the dog ' * i}", "jpg_0": f"{i}a.png",
                 "jpg_1": f"{i}b.png", "label_0": 1 - i % 2})
  records = load_pairs(write_jsonl(tmp_path / "p.jsonl", rows))
  data = PairDataConfig(global_batch=4, grad_accum=2, resolution=R, seed=3)
  tokenize, tokenize_2 = (CLIPTokenizer(folder) for folder in tokenizers)
  for batch in _take(pair_batches(records, data, *tokenizers, process_index=0, process_count=1), 3):
    assert batch["pixels"].shape == (2, 4, R, R, 3) and batch["ids"].shape == batch["ids_2"].shape == (2, 2, 77)
    assert batch["weight"].dtype == np.float32 and batch["index"].shape == batch["bad"].shape == (4,)
    for a in range(2):
      for m in range(2):
        index = batch["index"][2 * a + m]
        for row, blue in ((m, 255), (2 + m, 0)):   # winners first, then losers, in the same pair order
          colour = np.round((batch["pixels"][a, row] + 1) / 2 * 255)
          np.testing.assert_array_equal(colour, np.broadcast_to([16 * index, 7, blue], (R, R, 3)))
        np.testing.assert_array_equal(batch["ids"][a, m], tokenize([rows[index]["caption"]])[0])
        np.testing.assert_array_equal(batch["ids_2"][a, m], tokenize_2([rows[index]["caption"]])[0])


def test_the_stream_is_seeded_resumable_and_split_across_hosts(tmp_path, tokenizers):
  records = noise_pairs(tmp_path, 6)
  data = PairDataConfig(global_batch=2, resolution=R, seed=7)

  def stream(data, pi=0, pc=1, start=0):
    return pair_batches(records, data, *tokenizers, start=start, process_index=pi, process_count=pc)

  first = _take(stream(data), 7)   # more than an epoch: a reshuffled second one
  again = _take(stream(data), 7)
  for x, y in zip(first, again):
    assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
  order = np.concatenate([b["index"] for b in first])
  assert sorted(order[:6]) == list(range(6)) and not np.array_equal(order[:6], order[6:12])
  other = np.concatenate([b["index"] for b in _take(stream(PairDataConfig(global_batch=2, resolution=R, seed=8)), 3)])
  assert not np.array_equal(order[:6], other)
  for k in (1, 4):
    (resumed,) = _take(stream(data, start=k), 1)
    assert all(np.array_equal(resumed[key], first[k][key]) for key in first[k])

  # Flips are drawn per image: each equals its file preprocessed with or without one, and both happen.
  flipped = []
  for batch in first:
    for m, index in enumerate(batch["index"]):
      winner_first = ("jpg_0", "jpg_1") if records[index]["label_0"] == 1 else ("jpg_1", "jpg_0")
      for row, key in zip((m, 2 + m), winner_first):   # M = 2: rows winner 0, winner 1, loser 0, loser 1
        image = Image.open(records[index][key])
        got = batch["pixels"][0, row]
        assert np.array_equal(got, preprocess(image, R, True)) or np.array_equal(got, preprocess(image, R, False))
        flipped.append(np.array_equal(got, preprocess(image, R, True)))
  assert 0 < sum(flipped) < len(flipped)
  unflipped = _take(stream(dataclasses.replace(data, random_flip=False)), 1)[0]
  index = unflipped["index"][0]
  winner = records[index]["jpg_0" if records[index]["label_0"] == 1 else "jpg_1"]
  np.testing.assert_array_equal(unflipped["pixels"][0, 0], preprocess(Image.open(winner), R, False))

  # Two hosts: per-host batches of 1, disjoint, together the epoch.
  one_epoch = PairDataConfig(global_batch=2, resolution=R, seed=7, num_epochs=1)
  hosts = [np.concatenate([b["index"] for b in stream(one_epoch, pi=i, pc=2)]) for i in range(2)]
  assert len(hosts[0]) == len(hosts[1]) == 3 and not set(hosts[0]) & set(hosts[1])
  assert sorted(np.concatenate(hosts)) == list(range(6))
  with pytest.raises(ValueError, match="does not split into 2 hosts × 2 micro-batches"):
    stream(PairDataConfig(global_batch=6, grad_accum=2), pc=2)
  with pytest.raises(ValueError, match="no image pairs"):
    pair_batches([], data, *tokenizers, process_index=0, process_count=1)

