"""A tiny random SDXL pipeline saved as diffusers does, for converter, pipeline and Diffusion-DPO tests.

Every parameter is perturbed, so zero-initialised layers (proj_out, conv_out) take part. The tokenizers are CLIP
byte-level BPE folders with a toy vocabulary: the 512 byte symbols (plain and with `</w>`), a few merges, then the
two special tokens, so `<|endoftext|>` has the largest id as in CLIP and `!` is id 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import diffusers
import torch
import transformers

# One cross-attention level with one resnet and one transformer block: the UNet's own parity tests cover down- and
# up-sampling and deeper blocks (tests/models/test_unet2d.py); here the pipeline and training programs stay small
# enough to compile in seconds.
UNET = dict(block_out_channels=(32,), layers_per_block=1, down_block_types=("CrossAttnDownBlock2D",),
            up_block_types=("CrossAttnUpBlock2D",), attention_head_dim=2, use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=8, transformer_layers_per_block=1,
            projection_class_embeddings_input_dim=80, cross_attention_dim=64, norm_num_groups=32, sample_size=16)
VAE = dict(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=32,
           down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=32,
           scaling_factor=0.13025, force_upcast=True)
# SDXL-Turbo's scheduler_config.json.
SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 timestep_spacing="trailing", steps_offset=1, prediction_type="epsilon")
MERGES = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("an", "d</w>"), ("c", "a"), ("ca", "t</w>"), ("d", "o"),
          ("do", "g</w>"), ("r", "e"), ("re", "d</w>"), ("b", "l"), ("bl", "u"), ("blu", "e</w>")]


def _byte_symbols() -> list[str]:
  """GPT-2's printable stand-ins for the 256 bytes, in CLIP's vocabulary order (printable bytes first)."""
  printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
      list(range(ord("®"), ord("ÿ") + 1))
  others = [b for b in range(256) if b not in printable]
  return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def write_tokenizer(folder: Path, pad_token: str) -> Path:
  folder.mkdir(parents=True, exist_ok=True)
  symbols = _byte_symbols()
  tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in MERGES] + ["<|startoftext|>",
                                                                                  "<|endoftext|>"]
  (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
  (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in MERGES) + "\n")
  (folder / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
       "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": pad_token}))
  return folder


def _perturb(module: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
  with torch.no_grad():
    for p in module.parameters():
      p.add_(scale * torch.randn_like(p))
  return module.eval()


def text_encoders(vocab_size: int):
  common = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4,
                vocab_size=vocab_size, max_position_embeddings=77, bos_token_id=vocab_size - 2, eos_token_id=2,
                pad_token_id=1, attn_implementation="eager")
  first = transformers.CLIPTextModel(transformers.CLIPTextConfig(hidden_act="quick_gelu", **common))
  second = transformers.CLIPTextModelWithProjection(
      transformers.CLIPTextConfig(hidden_act="gelu", projection_dim=32, **common))
  return _perturb(first), _perturb(second)


def pipeline(seed: int = 0, root: Path | None = None) -> diffusers.StableDiffusionXLPipeline:
  """The tiny pipeline (fp32, eval); with `root`, its tokenizers are written there first."""
  torch.manual_seed(seed)
  tokenizer_dir = write_tokenizer(root / "tok", "<|endoftext|>")
  tokenizer_2_dir = write_tokenizer(root / "tok_2", "!")
  tokenizer = transformers.CLIPTokenizer.from_pretrained(tokenizer_dir)
  tokenizer_2 = transformers.CLIPTokenizer.from_pretrained(tokenizer_2_dir)
  text_encoder, text_encoder_2 = text_encoders(len(tokenizer))
  return diffusers.StableDiffusionXLPipeline(
      vae=_perturb(diffusers.AutoencoderKL(**VAE)), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
      tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=_perturb(diffusers.UNet2DConditionModel(**UNET)),
      scheduler=diffusers.EulerAncestralDiscreteScheduler(**SCHEDULER))


def save_pipeline(root: Path, seed: int = 0) -> tuple[diffusers.StableDiffusionXLPipeline, Path]:
  pipe = pipeline(seed, root)
  pipe.save_pretrained(root / "sdxl")
  return pipe, root / "sdxl"
