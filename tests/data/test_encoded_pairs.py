"""Encoded Diffusion-DPO pairs on disk: the stream reads each pair's latents and its caption's embeddings in
`pair_batches`' order and layout; a folder resumes only with the settings it was made with and is used only when
complete. (The encoding pass itself, end to end: tests/train/test_runner_diffusion.py.)"""

import json

import numpy as np
import pytest
from absl import flags

from tests.data.test_image_pairs import _take, noise_pairs, tokenizers  # noqa: F401  (a fixture)
from ureward_jax.data.encoded_pairs import (
  EncodedFolder,
  check_encoded,
  distinct_captions,
  encoded_batches,
  settings_for,
)
from ureward_jax.data.image_pairs import PairDataConfig, pair_batches

flags.FLAGS.mark_as_parsed()
R, LATENT, D, P = 16, (2, 2, 4), 6, 3


def shapes(n, c):
  return {"latent_mean": (n, 2, *LATENT), "latent_logvar": (n, 2, *LATENT), "weight": (n,), "caption_index": (n,),
          "prompt_embeds": (c, 77, D), "text_embeds": (c, P)}


def write_synthetic(folder, records, data):
  """Values that name what they belong to: latents = record index + 0.5 for the loser (logvar negated), caption
  arrays = caption index; record 1 unreadable."""
  captions, index = distinct_captions(records)
  out = EncodedFolder(str(folder), settings_for(records, data, "/ckpt"), shapes(len(records), len(captions)))
  member = np.arange(len(records))[:, None] + np.array([0.0, 0.5])
  out.arrays["latent_mean"][:] = member[..., None, None, None]
  out.arrays["latent_logvar"][:] = -member[..., None, None, None]
  out.arrays["caption_index"][:] = index
  out.arrays["weight"][:] = [0.0 if i == 1 else 1.0 for i in range(len(records))]
  out.arrays["prompt_embeds"][:] = np.arange(len(captions))[:, None, None]
  out.arrays["text_embeds"][:] = np.arange(len(captions))[:, None]
  out.save(captions_done=len(captions), pairs_done=len(records), complete=True)
  return captions, index


def test_distinct_captions_in_order_of_first_use():
  records = [{"caption": c} for c in ("a", "b", "a", "c", "b")]
  captions, index = distinct_captions(records)
  assert captions == ["a", "b", "c"] and index.tolist() == [0, 1, 0, 2, 1] and index.dtype == np.int32


def test_the_stream_reads_pairs_in_pair_batches_order_and_layout(tmp_path, tokenizers):  # noqa: F811
  records = noise_pairs(tmp_path, 6)
  for r in records[3:]:
    r["caption"] = records[0]["caption"]   # shared captions are stored once
  data = PairDataConfig(global_batch=4, grad_accum=2, resolution=R, seed=5)
  captions, caption_index = write_synthetic(tmp_path / "encoded", records, data)
  assert len(captions) == 3
  check_encoded(str(tmp_path / "encoded"), settings_for(records, data, "/elsewhere"))   # the pipeline may move

  for pc in (1, 2):
    for pi in range(pc):
      encoded = _take(encoded_batches(str(tmp_path / "encoded"), data, start=1, process_index=pi, process_count=pc),
                      4)
      pixels = _take(pair_batches(records, data, *tokenizers, start=1, process_index=pi, process_count=pc), 4)
      for e, p in zip(encoded, pixels):
        np.testing.assert_array_equal(e["index"], p["index"])   # same pairs, same order, same host split
        a, m = p["ids"].shape[:2]
        assert e["latent_mean"].shape == (a, 2 * m, *LATENT) and e["prompt_embeds"].shape == (a, m, 77, D)
        assert e["text_embeds"].shape == (a, m, P) and e["time_ids"].shape == (a, m, 6)
        index = e["index"].reshape(a, m)
        for k in range(a):
          np.testing.assert_array_equal(e["latent_mean"][k, :m, 0, 0, 0], index[k])          # winners
          np.testing.assert_array_equal(e["latent_mean"][k, m:, 0, 0, 0], index[k] + 0.5)    # then losers
          np.testing.assert_array_equal(e["latent_logvar"][k, m:, 0, 0, 0], -(index[k] + 0.5))
          np.testing.assert_array_equal(e["prompt_embeds"][k, :, 0, 0], caption_index[index[k]])
          np.testing.assert_array_equal(e["text_embeds"][k, :, 0], caption_index[index[k]])
        np.testing.assert_array_equal(e["time_ids"][0, 0], [R, R, 0, 0, R, R])
        np.testing.assert_array_equal(e["bad"], e["index"] == 1)
        np.testing.assert_array_equal(e["weight"].reshape(-1), e["index"] != 1)


def test_a_folder_resumes_only_with_its_settings_and_is_read_only_when_complete(tmp_path, tokenizers):  # noqa: F811
  records = noise_pairs(tmp_path, 4)
  data = PairDataConfig(global_batch=2, resolution=R)
  folder = str(tmp_path / "encoded")
  out = EncodedFolder(folder, settings_for(records, data, "/ckpt"), shapes(4, 4))
  out.arrays["latent_mean"][:2] = 7.0
  out.save(captions_done=4, pairs_done=2)
  with pytest.raises(ValueError, match="did not finish.*launch.encode_pairs"):
    check_encoded(folder, settings_for(records, data, "/ckpt"))

  again = EncodedFolder(folder, settings_for(records, data, "/ckpt"), shapes(4, 4))   # an interrupted pass resumes
  assert again.progress == {"captions_done": 4, "pairs_done": 2, "complete": False}
  np.testing.assert_array_equal(again.arrays["latent_mean"][:2], 7.0)

  for changed, message in [(PairDataConfig(global_batch=2, resolution=32), "resolution: 16 there, 32 here"),
                           (PairDataConfig(global_batch=2, resolution=R, random_flip=False), "random_flip"),
                           (PairDataConfig(global_batch=2, resolution=R, seed=1), "seed: 0 there, 1 here")]:
    with pytest.raises(ValueError, match=message):
      EncodedFolder(folder, settings_for(records, changed, "/ckpt"), shapes(4, 4))
  with pytest.raises(ValueError, match="checkpoint"):
    EncodedFolder(folder, settings_for(records, data, "/other"), shapes(4, 4))
  swapped = [records[1], records[0], *records[2:]]
  with pytest.raises(ValueError, match="pairs_sha256"):
    EncodedFolder(folder, settings_for(swapped, data, "/ckpt"), shapes(4, 4))
  with pytest.raises(ValueError, match="has shape .* expected"):
    EncodedFolder(folder, settings_for(records, data, "/ckpt"), {**shapes(4, 4), "prompt_embeds": (4, 77, D + 1)})

  again.save(complete=True)
  assert json.loads((tmp_path / "encoded" / "encoded.json").read_text())["progress"]["complete"]
  check_encoded(folder, settings_for(records, data, "/ckpt"))
  with pytest.raises(ValueError, match="pairs: 4 there, 3 here"):
    check_encoded(folder, settings_for(records[:3], data, "/ckpt"))
  with pytest.raises(FileNotFoundError, match="not a folder of encoded pairs"):
    check_encoded(str(tmp_path), settings_for(records, data, "/ckpt"))
