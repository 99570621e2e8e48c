"""The video-pair stream: VideoDPO's strided clips (each video of a pair with its own start), frames resized to the
clip size and mapped to [−1, 1], the caption dropped for the whole pair, the (0.72 / score)^dupbeta factor, bad
pairs weightless, and batch k a pure function of (records, seed, k)."""

import json
import logging

import numpy as np
import pytest

from tests.tiny_sdxl import write_tokenizer
from ureward_jax.data import video_pairs
from ureward_jax.data.image_pairs import PairDataConfig
from ureward_jax.data.video_pairs import (
  BuildVideoPair,
  ClipConfig,
  clip_positions,
  load_video_pairs,
  read_video_clip,
  video_pair_batches,
)
from ureward_jax.processing.clip_tokenizer import OpenCLIPTokenizer
from ureward_jax.processing.video import write_frame_folder

CLIP = ClipConfig(video_length=2, frame_stride=4, height=8, width=12, caption_dropout=0.0)


def test_clip_positions_follow_videodpo():
  """Positions 0, s, 2s, … (every frame when too few), `video_length` consecutive ones from a uniform start."""
  rng = np.random.default_rng(0)
  starts = {tuple(clip_positions(16, CLIP, rng)) for _ in range(200)}
  assert starts == {(0, 4), (4, 8), (8, 12)}
  assert {tuple(clip_positions(5, CLIP, rng)) for _ in range(100)} == {(0, 4)}
  assert {tuple(clip_positions(3, CLIP, rng)) for _ in range(100)} == {(0, 1), (1, 2)}   # stride gives 1: all frames
  with pytest.raises(ValueError, match="fewer than the 2"):
    clip_positions(1, CLIP, rng)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("videos")
  rows = []
  for i in range(6):
    for side in "ab":   # frame k of every video has all pixels equal to 10·k + (0 or 1): its clip is readable
      frames = np.stack([np.full((16, 24, 3), 10 * k + (side == "b"), np.uint8) for k in range(9)])
      write_frame_folder(frames, str(root / f"{i}{side}"))
    rows.append({"id": f"p{i}", "caption": f"caption {i}", "chosen": f"{i}a", "rejected": f"{i}b"})
  rows[2]["score"] = 0.36
  rows[4]["chosen"] = "gone"
  (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  return root, load_video_pairs(str(root / "pairs.jsonl")), write_tokenizer(root / "tok", "!")


def test_pairs_are_clips_of_each_video_with_factor_and_bad_pairs(data):
  root, records, tokenizer = data
  build = BuildVideoPair(records, CLIP, seed=0, tokenizer_folder=tokenizer)
  pair = build.build(0)
  assert pair["pixels"].shape == (2, 2, 8, 12, 3) and pair["pixels"].dtype == np.float32
  levels = np.round((pair["pixels"][..., 0, 0, 0] / 2 + 0.5) * 255).astype(int)   # (member, frame) pixel values
  for member, offset in enumerate((0, 1)):
    first, second = (levels[member] - offset) // 10
    assert second - first == 4 and first in (0, 4)   # strided positions of a 9-frame video: 0, 4, 8
  assert pair["factor"] == pytest.approx(0.72) and build.build(2)["factor"] == pytest.approx(2.0)
  np.testing.assert_array_equal(pair["ids"], OpenCLIPTokenizer(tokenizer)(["caption 0"])[0])
  bad = build.build(4)
  assert bad["bad"] == 1 and not bad["pixels"].any()
  # Another epoch draws other starts for some pair.
  assert any(not np.array_equal(build.build(i, 0)["pixels"], build.build(i, 1)["pixels"]) for i in (0, 1, 3))


def test_a_pair_that_raises_anything_is_skipped(data, monkeypatch, caplog):
  root, records, tokenizer = data
  real = video_pairs.read_clip

  def crashing(path, choose, *args):
    if path == records[1]["rejected"]:
      raise RuntimeError("the decoder crashed")
    return real(path, choose, *args)
  monkeypatch.setattr(video_pairs, "read_clip", crashing)
  build = BuildVideoPair(records, CLIP, seed=0, tokenizer_folder=tokenizer)
  with caplog.at_level(logging.WARNING):
    assert [build.build(i)["bad"] for i in range(3)] == [0, 1, 0]
  assert "skipping pair p1 (1): RuntimeError: the decoder crashed" in caplog.text


def test_caption_dropout_empties_the_pairs_caption(data):
  root, records, tokenizer = data
  build = BuildVideoPair(records, ClipConfig(**{**CLIP.__dict__, "caption_dropout": 0.5}), 0, tokenizer)
  empty = OpenCLIPTokenizer(tokenizer)([""])[0]
  dropped = [np.array_equal(build.build(0, epoch)["ids"], empty) for epoch in range(40)]
  assert 8 <= sum(dropped) <= 32


def test_batches_are_deterministic_and_resume_by_index(data):
  root, records, tokenizer = data
  config = PairDataConfig(global_batch=4, grad_accum=2, seed=3)
  stream = iter(video_pair_batches(records, config, CLIP, tokenizer))
  batches = [next(stream) for _ in range(3)]
  again = next(iter(video_pair_batches(records, config, CLIP, tokenizer, start=2)))
  for key in ("pixels", "ids", "factor", "weight", "index"):
    np.testing.assert_array_equal(again[key], batches[2][key])
  b = batches[0]
  assert b["pixels"].shape == (2, 4, 2, 8, 12, 3) and b["ids"].shape == (2, 2, 77) and b["factor"].shape == (2, 2)
  # [chosen; rejected] inside each micro-batch: the rejected videos' pixels are one level above the chosen ones.
  levels = np.round((b["pixels"][:, :, 0, 0, 0, 0] / 2 + 0.5) * 255).astype(int) % 10
  ok = b["weight"] > 0
  assert (levels[:, :2][ok] == 0).all() and (levels[:, 2:][ok] == 1).all()


def test_other_sizes_are_resized_or_centre_cropped(tmp_path):
  """A 16 × 64 video (16 columns black, 32 grey, 16 white) into an 8 × 12 clip: stretched, all three bands stay;
  scaled to cover (8 × 32) and centre-cropped, only the grey middle remains."""
  band = np.repeat(np.array([0, 128, 255], np.uint8), [16, 32, 16])[None, :, None].repeat(16, 0).repeat(3, 2)
  write_frame_folder(np.stack([band] * 4), str(tmp_path / "v"))
  rng = np.random.default_rng(0)
  stretched = read_video_clip(str(tmp_path / "v"), CLIP, rng)
  cropped = read_video_clip(str(tmp_path / "v"), ClipConfig(**{**CLIP.__dict__, "center_crop": True}), rng)
  assert stretched.shape == cropped.shape == (2, 8, 12, 3)
  assert stretched[0, 0, 0, 0] == -1 and stretched[0, 0, -1, 0] == 1
  np.testing.assert_allclose(cropped, 128 / 255 * 2 - 1, atol=1e-6)


def test_bad_rows_are_refused(tmp_path):
  for row, message in [({"caption": "x", "chosen": "a"}, "missing rejected"),
                       ({"caption": 3, "chosen": "a", "rejected": "b"}, "caption must be a string"),
                       ({"caption": "x", "chosen": "a", "rejected": "b", "score": 0}, "score must be a positive")]:
    (tmp_path / "p.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=message):
      load_video_pairs(str(tmp_path / "p.jsonl"))
