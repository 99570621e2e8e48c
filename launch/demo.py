"""`make demo`: convert a tiny random LLaVA-OneVision checkpoint, run the Flax port on an image prompt, and print
how far its logits and greedy tokens are from transformers' on the same weights.

Runs offline on a CPU in well under a minute. The checkpoint is random (no weights can be downloaded here), so the
generated tokens are meaningless; what the demo shows is the conversion path and the parity of the port.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

import ureward_jax  # noqa: E402
from converters.llava_onevision import convert_folder  # noqa: E402
from tests import tiny_llava  # noqa: E402  (the random tiny checkpoint the parity tests use)
from ureward_jax.processing.image import ImageProcessor  # noqa: E402


def sample_image() -> Image.Image:
  """A 320×480 picture: a red circle and a blue square on grey."""
  image = Image.new("RGB", (480, 320), (128, 128, 128))
  draw = ImageDraw.Draw(image)
  draw.ellipse((40, 60, 200, 220), fill=(220, 40, 40))
  draw.rectangle((280, 100, 420, 240), fill=(40, 60, 220))
  return image


def main():
  reference = tiny_llava.hf_model(seed=0)
  with tempfile.TemporaryDirectory() as tmp:
    tiny_llava.save_hf(reference, Path(tmp) / "hf")
    config = convert_folder(Path(tmp) / "hf", Path(tmp) / "converted", "float32")
    print(f"converted a random LLaVA-OneVision: SigLIP {config.vision.num_hidden_layers} layers, "
          f"Qwen2 {config.text.num_hidden_layers} layers, vocabulary {config.text.vocab_size}")
    model = ureward_jax.load(Path(tmp) / "converted")

  processor = ImageProcessor(size=tiny_llava.TILE, grid_pinpoints=config.image_grid_pinpoints)
  image = sample_image()
  pixels = processor([image])
  n_image = processor.num_image_tokens((image.height, image.width))
  rng = np.random.RandomState(0)
  ids = np.concatenate([rng.randint(1, 100, 12), np.full(n_image, config.image_token_id), rng.randint(1, 100, 20)])
  inputs = dict(input_ids=ids[None], pixel_values=pixels["pixel_values"], image_sizes=pixels["image_sizes"])
  print(f"prompt: {ids.size} tokens, of which {n_image} image tokens from "
        f"{pixels['pixel_values'].shape[1]} patches of {tiny_llava.TILE} px")

  ours = model.forward(**inputs)
  with torch.no_grad():
    ref = reference(**{k: torch.tensor(v) for k, v in inputs.items()}).logits.numpy()
  error = np.max(np.abs(ours - ref)) / np.max(np.abs(ref))
  print(f"logits: max |flax − torch| / max |torch| = {error:.2e}")

  new = 16
  flax_tokens = model.generate(**inputs, max_new_tokens=new)[0]
  with torch.no_grad():
    torch_tokens = reference.generate(**{k: torch.tensor(v) for k, v in inputs.items()}, max_new_tokens=new,
                                      do_sample=False, pad_token_id=0)[0, ids.size:].numpy()
  print(f"greedy tokens, flax : {flax_tokens.tolist()}")
  print(f"greedy tokens, torch: {torch_tokens.tolist()}")
  print("identical" if np.array_equal(flax_tokens, torch_tokens) else "DIFFERENT")


if __name__ == "__main__":
  main()
