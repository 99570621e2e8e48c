"""Judgements per second: the logits path (one teacher-forced pass) vs the generate path (greedy verdict) on this CPU.

One random mid-size LLaVA-OneVision (default: SigLIP 384 wide × 6 layers at 384 px, Qwen2 512 wide × 6 layers with
8 heads and 2 kv heads, vocabulary 32,000) judges image-generation pairs with the official wording: two 384×384
images per row, each tiled as the inference scripts tile it (anyres: base view + 1 tile → 1,485 visual tokens), about
3,250 prompt tokens in all. The generate path decodes `--verdict-tokens` tokens per row (default 150, a reasoned
verdict; a random model's end token is ignored so every answer has that length) and parses them; the logits path
scores the three verdict sentences in the same pass as the prompt. Both run through `ureward_jax.reward.scoring.Judge`,
image loading included, after one untimed warm-up batch that compiles them. Printed: rows per second of each and
the ratio logits / generate.

  python -m bench.scoring [--rows 4] [--batch-size 2] [--verdict-tokens 150]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import linen as nn  # noqa: E402
from PIL import Image  # noqa: E402

from ureward_jax.data import shapes  # noqa: E402
from ureward_jax.models.llava_onevision import LlavaOnevisionConfig, init_params  # noqa: E402
from ureward_jax.models.qwen2 import Qwen2Config  # noqa: E402
from ureward_jax.models.siglip import SiglipVisionConfig  # noqa: E402
from ureward_jax.processing.chat import prompt_ids  # noqa: E402
from ureward_jax.processing.feature_layout import num_tokens  # noqa: E402
from ureward_jax.reward.scoring import Judge  # noqa: E402
from ureward_jax.runners.llava import LlavaOnevisionForConditionalGeneration, layout_config  # noqa: E402


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  arg = parser.add_argument
  arg("--rows", type=int, default=4, help="timed rows per path")
  arg("--batch-size", type=int, default=2)
  arg("--verdict-tokens", type=int, default=150, help="tokens the generate path decodes per row")
  arg("--image", type=int, default=384, help="side of each image of the pair")
  arg("--vision-hidden", type=int, default=384)
  arg("--vision-layers", type=int, default=6)
  arg("--text-hidden", type=int, default=512)
  arg("--text-layers", type=int, default=6)
  arg("--vocab", type=int, default=32000)
  return parser.parse_args()


def main():
  args = parse_args()
  tokenizer = shapes.shapes_tokenizer()
  config = LlavaOnevisionConfig(
      vision=SiglipVisionConfig(hidden_size=args.vision_hidden, intermediate_size=4 * args.vision_hidden,
                                num_hidden_layers=args.vision_layers, num_attention_heads=6),
      text=Qwen2Config(vocab_size=args.vocab, hidden_size=args.text_hidden, intermediate_size=3 * args.text_hidden,
                       num_hidden_layers=args.text_layers, num_attention_heads=8, num_key_value_heads=2,
                       head_dim=args.text_hidden // 8),
      image_token_id=tokenizer.token_to_id("<image>"), video_token_id=tokenizer.token_to_id("<video>"))
  params = nn.unbox(init_params(config, jax.random.key(0)))
  model = LlavaOnevisionForConditionalGeneration.from_params(config, params)

  rng = np.random.default_rng(0)
  with tempfile.TemporaryDirectory() as media:
    for name in ("a.png", "b.png"):
      Image.fromarray(rng.integers(0, 256, (args.image, args.image, 3), np.uint8)).save(os.path.join(media, name))
    rows = [{"prompt": "a red circle and a blue square", "images": ["a.png", "b.png"]}] * args.rows
    warmup = rows[:args.batch_size]
    text, visuals = Judge(model, tokenizer, "image_generation", "pair").prepare(rows[0], media)
    visual_tokens = sum(num_tokens(item, layout_config(config)) for item, _ in visuals)
    print(f"prompt: {len(prompt_ids(tokenizer, text)) - len(visuals) + visual_tokens} tokens "
          f"({visual_tokens} visual); generate decodes {args.verdict_tokens} tokens per row")
    rates = {}
    for method in ("logits", "generate"):
      judge = Judge(model, tokenizer, "image_generation", "pair", method=method, batch_size=args.batch_size,
                    max_new_tokens=args.verdict_tokens)
      judge.end_ids = []   # a random model stops anywhere: every generated verdict is verdict_tokens long
      judge.judge(warmup, media)
      start = time.perf_counter()
      judge.judge(rows, media)
      seconds = time.perf_counter() - start
      rates[method] = args.rows / seconds
      print(f"{method:>9}: {args.rows} rows in {seconds:.2f} s = {rates[method]:.3f} rows/s")
  print(f"ratio logits / generate: {rates['logits'] / rates['generate']:.1f}×")


if __name__ == "__main__":
  main()
