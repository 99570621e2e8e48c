"""A tiny random reward checkpoint (transformers → converted folder, with the shapes tokenizer) and media files."""

import numpy as np
import pytest
from PIL import Image

import ureward_jax
from converters.llava_onevision import convert_folder
from tests import tiny_llava as T
from ureward_jax.data import shapes


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
  """(transformers model, our loaded model, the tokenizer, the converted folder, a folder of media)."""
  root = tmp_path_factory.mktemp("judge")
  tokenizer = shapes.shapes_tokenizer()
  hf = T.hf_model(seed=3, vocab=tokenizer.get_vocab_size(), image_token=tokenizer.token_to_id("<image>"),
                  video_token=tokenizer.token_to_id("<video>"))
  T.save_hf(hf, root / "hf")
  tokenizer.save(str(root / "hf" / "tokenizer.json"))
  convert_folder(root / "hf", root / "ours", "float32")
  rng = np.random.default_rng(0)
  media = root / "media"
  (media / "clip").mkdir(parents=True)
  for name, (h, w) in {"a.png": (90, 140), "b.jpg": (120, 80), "c.png": (70, 70)}.items():
    Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(media / name)
  for name, colour in {"red.png": (255, 0, 0), "blue.png": (0, 0, 255)}.items():
    Image.new("RGB", (80, 80), colour).save(media / name)
  for j in range(5):
    Image.fromarray(rng.integers(0, 256, (60, 80, 3), np.uint8)).save(media / "clip" / f"{j:03d}.png")
  (media / "broken.png").write_bytes(b"not an image")
  return hf, ureward_jax.load(root / "ours"), tokenizer, root / "ours", str(media)
