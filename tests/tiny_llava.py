"""Tiny random LLaVA-OneVision checkpoints built from transformers' config classes, in every on-disk format.

Every parameter is perturbed (norm weights around 1, biases and the zero-initialised ones random), so no layer
compares vacuously. Tiles are 70 px (5×5 tokens): odd like the real 27×27, so video pooling rounds up as it does
at full size, and pinpoints up to 4×4 tiles exercise the anyres_max_9 cap.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

from tests.parity import max_rel  # noqa: F401 - the tests read it as tiny_llava.max_rel

TILE = 70
IMAGE_TOKEN, VIDEO_TOKEN, VOCAB = 126, 127, 128
FULL = 1e-4     # tolerance on full-model logits, relative to their scale
MODULE = 1e-5   # tolerance on a single module's output


def hf_config(tie: bool = False, text_layers: int = 2, vision_layers: int = 2, hidden: int = 32, heads: int = 4,
              kv_heads: int = 2, vocab: int = VOCAB, image_token: int = IMAGE_TOKEN,
              video_token: int = VIDEO_TOKEN) -> transformers.LlavaOnevisionConfig:
  vision = transformers.SiglipVisionConfig(hidden_size=24, intermediate_size=37, num_hidden_layers=vision_layers,
                                           num_attention_heads=4, image_size=TILE, patch_size=14,
                                           vision_use_head=False)
  text = transformers.Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                                  num_hidden_layers=text_layers, num_attention_heads=heads,
                                  num_key_value_heads=kv_heads, rope_theta=1e6, rms_norm_eps=1e-6,
                                  tie_word_embeddings=tie, max_position_embeddings=4096)
  return transformers.LlavaOnevisionConfig(
      vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=image_token,
      video_token_index=video_token, image_grid_pinpoints=[[TILE * i, TILE * j] for i in range(1, 5)
                                                           for j in range(1, 5)],
      vision_feature_layer=-1, vision_feature_select_strategy="full", tie_word_embeddings=tie)


def perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
  """Replace every parameter with random values of a sane scale (weights ~ 1/√fan_in, norms ~ 1)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if "norm" in name and name.endswith("weight"):
        p.copy_(1.0 + 0.1 * noise)
      elif p.ndim == 1:
        p.copy_(0.1 * noise)
      else:
        p.copy_(noise / np.sqrt(np.prod(p.shape[1:])))
  return model


def hf_model(seed: int = 0, **config_kwargs) -> transformers.LlavaOnevisionForConditionalGeneration:
  torch.manual_seed(seed)
  config = hf_config(**config_kwargs)
  config._attn_implementation = "eager"
  model = transformers.LlavaOnevisionForConditionalGeneration(config)
  if config.tie_word_embeddings:
    model.tie_weights()
  return perturb(model, seed).eval()


def save_hf(model, folder: Path) -> Path:
  model.save_pretrained(folder)
  return folder


def save_llava_next(model, folder: Path) -> Path:
  """The LLaVA-NeXT (UnifiedReward-7b) naming and flat config, from the transformers runtime names."""
  from safetensors.torch import save_file
  folder.mkdir(parents=True, exist_ok=True)
  renames = [("model.vision_tower.", "model.vision_tower.vision_tower.vision_model."),
             ("model.multi_modal_projector.linear_1", "model.mm_projector.0"),
             ("model.multi_modal_projector.linear_2", "model.mm_projector.2"),
             ("model.language_model.", "model.")]
  state = {}
  for name, tensor in model.state_dict().items():
    for old, new in renames:
      if name.startswith(old):
        name = new + name[len(old):]
        break
    state[name] = tensor.contiguous().clone()
  if model.config.tie_word_embeddings:
    state.pop("lm_head.weight")
  save_file(state, str(folder / "model.safetensors"))
  text = model.config.text_config.to_dict()
  config = {**{k: v for k, v in text.items() if k != "rope_parameters"},
            "rope_theta": text["rope_parameters"]["rope_theta"], "architectures": ["LlavaQwenForCausalLM"],
            "model_type": "llava", "vision_config": model.config.vision_config.to_dict(),
            "mm_projector_type": "mlp2x_gelu", "mm_patch_merge_type": "spatial_unpad",
            "image_aspect_ratio": "anyres_max_9", "mm_newline_position": "grid",
            "image_grid_pinpoints": [[w, h] for h, w in model.config.image_grid_pinpoints],
            "image_token_index": model.config.image_token_id, "video_token_index": model.config.video_token_id}
  (folder / "config.json").write_text(json.dumps(config))
  return folder


def random_text(rng, n, below=IMAGE_TOKEN):
  """n random text token ids (below the image and video placeholder ids)."""
  return rng.randint(0, below, n).tolist()


def image_inputs(hf, sizes, batch_num_images=None, seed=0, text=(7, 9)):
  """A prompt with the images of `sizes`, placeholders expanded to the count transformers' model produces (any
  LLaVA-OneVision config: its tile size and image token are read from it)."""
  rng = np.random.RandomState(seed)
  tile, image_token = hf.config.vision_config.image_size, hf.config.image_token_id
  below = min(image_token, hf.config.video_token_id)
  tiled = [True] * len(sizes) if batch_num_images is None else [n == 1 for n in batch_num_images for _ in range(n)]
  patches = [image_size_to_num_patches(s, hf.config.image_grid_pinpoints, tile) if t else 1
             for s, t in zip(sizes, tiled)]
  pixel_values = rng.randn(len(sizes), max(patches), 3, tile, tile).astype(np.float32)
  image_sizes = np.array(sizes, np.int64)
  bni = None if batch_num_images is None else torch.tensor(batch_num_images)
  with torch.no_grad():
    feats = hf.model.get_image_features(torch.tensor(pixel_values), torch.tensor(image_sizes),
                                        batch_num_images=bni).pooler_output
  n_tokens = sum(f.shape[0] for f in feats)
  ids = np.array([random_text(rng, text[0], below) + [image_token] * n_tokens + random_text(rng, text[1], below)])
  return dict(input_ids=ids, pixel_values=pixel_values, image_sizes=image_sizes,
              batch_num_images=None if batch_num_images is None else np.array(batch_num_images))


def reference_logits(hf, **inputs):
  torch_inputs = {k: torch.tensor(v) for k, v in inputs.items() if v is not None}
  with torch.no_grad():
    return hf(**torch_inputs).logits.numpy()
