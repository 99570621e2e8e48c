"""Prefill latency: the jitted Flax LLaVA-OneVision vs transformers (eager attention) on this CPU.

A mid-size random model (SigLIP 384-wide × 6 layers at 384 px, Qwen2 512-wide × 6 layers), one 384-px anyres
image and a text prompt, about 1,200 tokens in all; fp32 on both sides, same weights (converted through the real
converter). Prints the median of several runs and the ratio transformers / ours (> 1: ours is faster).

  python -m bench.llava_forward [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

import ureward_jax  # noqa: E402
from converters.llava_onevision import convert_folder  # noqa: E402
from ureward_jax.processing import anyres  # noqa: E402

IMAGE_TOKEN = 31998
IMAGE_SIZE = (200, 384)
TEXT_TOKENS = 80


def build_reference() -> transformers.LlavaOnevisionForConditionalGeneration:
  vision = transformers.SiglipVisionConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=6,
                                           num_attention_heads=6, image_size=384, patch_size=14,
                                           vision_use_head=False)
  text = transformers.Qwen2Config(vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=6,
                                  num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096)
  config = transformers.LlavaOnevisionConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                                             image_token_index=IMAGE_TOKEN, video_token_index=IMAGE_TOKEN + 1,
                                             vision_feature_layer=-1, vision_feature_select_strategy="full")
  config._attn_implementation = "eager"
  torch.manual_seed(0)
  return transformers.LlavaOnevisionForConditionalGeneration(config).eval()


def inputs_for(config) -> dict[str, np.ndarray]:
  rng = np.random.RandomState(0)
  n_image = anyres.tiled_token_count(IMAGE_SIZE, config.image_grid_pinpoints, 384, 27, "anyres_max_9")
  patches = anyres.num_patches(IMAGE_SIZE, config.image_grid_pinpoints, 384)
  ids = rng.randint(0, 31000, TEXT_TOKENS + n_image)
  ids[10:10 + n_image] = IMAGE_TOKEN
  return dict(input_ids=ids[None], pixel_values=rng.randn(1, patches, 3, 384, 384).astype(np.float32),
              image_sizes=np.array([IMAGE_SIZE]))


def median_seconds(fn, runs: int) -> float:
  fn()  # warm-up (compilation for the jitted side)
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--runs", type=int, default=5)
  args = parser.parse_args()
  reference = build_reference()
  with tempfile.TemporaryDirectory() as tmp:
    reference.save_pretrained(Path(tmp) / "hf")
    convert_folder(Path(tmp) / "hf", Path(tmp) / "ours", "float32")
    ours = ureward_jax.load(Path(tmp) / "ours")
  inputs = inputs_for(ours.config)
  torch_inputs = {k: torch.tensor(v) for k, v in inputs.items()}

  def run_reference():
    with torch.no_grad():
      return reference(**torch_inputs).logits

  def run_ours():
    return jax.block_until_ready(ours.forward(**inputs))

  error = float(np.max(np.abs(run_ours() - run_reference().numpy())) / np.max(np.abs(run_reference().numpy())))
  t_ref, t_ours = median_seconds(run_reference, args.runs), median_seconds(run_ours, args.runs)
  print(f"tokens: {inputs['input_ids'].shape[1]}  torch threads: {torch.get_num_threads()}  "
        f"jax devices: {jax.devices()}")
  print(f"transformers eager prefill: {t_ref * 1e3:8.1f} ms")
  print(f"ureward_jax jitted prefill: {t_ours * 1e3:8.1f} ms")
  print(f"ratio (transformers / ours): {t_ref / t_ours:.2f}   max relative logit difference: {error:.1e}")


if __name__ == "__main__":
  main()
