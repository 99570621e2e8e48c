"""Test-wide settings: CPU with 8 host devices (for the sharding tests; single-device code runs on the first),
fp32 matmuls at full precision (parity tests compare against PyTorch in fp32)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"])
# The AOT tests load libtpu in this process and in a subprocess; its lock file would refuse the second.
os.environ["ALLOW_MULTIPLE_LIBTPU_LOAD"] = "1"

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def pair(tmp_path_factory):
  """(tiny transformers LLaVA-OneVision, our model converted from its `save_pretrained` folder), fp32."""
  import ureward_jax
  from converters.llava_onevision import convert_folder
  from tests import tiny_llava
  hf = tiny_llava.hf_model(seed=0)
  root = tmp_path_factory.mktemp("llava")
  convert_folder(tiny_llava.save_hf(hf, root / "hf"), root / "ours", "float32")
  return hf, ureward_jax.load(root / "ours")


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
  """A tiny random reward checkpoint with the shapes tokenizer, and media files: (transformers model, our loaded
  model, the tokenizer, the converted folder, the media folder)."""
  import numpy as np
  from PIL import Image

  import ureward_jax
  from converters.llava_onevision import convert_folder
  from tests import tiny_llava as T
  from ureward_jax.data import shapes
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


@pytest.fixture(scope="session")
def sdxl(tmp_path_factory):
  """A tiny random SDXL pipeline: (the diffusers pipeline, its saved folder, our converted folder)."""
  from converters import sdxl as converter
  from tests import tiny_sdxl
  root = tmp_path_factory.mktemp("sdxl")
  pipe, folder = tiny_sdxl.save_pipeline(root)
  converter.convert_folder(folder, root / "ours", "float32")
  return pipe, folder, root / "ours"


@pytest.fixture(scope="session")
def huge_png(tmp_path_factory):
  """The path of a 20000×20000 PNG (400 million pixels, past Pillow's decompression-bomb error) of about 50 KB:
  one bit per pixel, all zeros, written directly so no image of that size is ever held in memory."""
  import struct
  import zlib

  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

  side = 20000
  row = b"\0" * (1 + side // 8)   # filter byte, then side bits
  packer = zlib.compressobj(9)
  pixels = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
  header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)   # bit depth 1, greyscale
  path = tmp_path_factory.mktemp("huge") / "huge.png"
  path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
  return str(path)
