"""LLaVA-OneVision: SigLIP tower → 2-layer GELU projector → features spliced into Qwen2's input embeddings.

`LlavaOnevision` is the Flax module (jittable; the visual layout comes in as arrays, which `runners/llava.py` builds on
the host from transformers-style arguments).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ureward_jax.models.qwen2 import Qwen2Config, Qwen2ForCausalLM
from ureward_jax.models.siglip import SiglipVisionConfig, SiglipVisionTower
from ureward_jax.nn.activations import ACTIVATIONS, check_activation
from ureward_jax.nn.attention import causal_mask
from ureward_jax.nn.linear import dense, logical, torch_linear_kernel_init

# The anyres canvases of LLaVA-OneVision's checkpoints: [384·i, 384·j] for i, j in 1..6 as (H, W), height-major; the
# order decides ties when the processor picks one (`processing.anyres.select_best_resolution`).
DEFAULT_PINPOINTS = tuple((384 * i, 384 * j) for i in range(1, 7) for j in range(1, 7))


@dataclasses.dataclass(frozen=True)
class LlavaOnevisionConfig:
  """Architecture and token-layout facts of a converted checkpoint (`config.json` of our checkpoint folders)."""
  vision: SiglipVisionConfig = SiglipVisionConfig()
  text: Qwen2Config = Qwen2Config()
  image_token_id: int = 151646
  video_token_id: int = 151647
  image_grid_pinpoints: tuple[tuple[int, int], ...] = DEFAULT_PINPOINTS
  vision_aspect_ratio: str = "anyres_max_9"
  projector_hidden_act: str = "gelu"
  video_newline: str = "one_token"     # HF; UnifiedReward training writes "grid"
  video_pool: str = "bilinear"
  unpad_exact_round: bool = True        # HF's model rounds to 7 decimals; LLaVA-NeXT floors

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["model_type"] = "llava_onevision"
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "LlavaOnevisionConfig":
    d = {k: v for k, v in d.items() if k not in ("model_type", "source")}
    d["vision"] = SiglipVisionConfig(**d["vision"])
    d["text"] = Qwen2Config(**d["text"])
    d["image_grid_pinpoints"] = tuple(tuple(p) for p in d["image_grid_pinpoints"])
    return cls(**d)


# Architectures by name, for runs and compiles that start from no checkpoint. The 7B is UnifiedReward-7b's
# (LLaVA-OneVision-7B: so400m cut to 26 layers, Qwen2-7B with its 152,064-row vocabulary).
PRESETS = {
    "llava_onevision_7b": LlavaOnevisionConfig(),
    "llava_onevision_0.5b": LlavaOnevisionConfig(text=Qwen2Config(
        vocab_size=151_936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, head_dim=64, tie_word_embeddings=True)),
    # The demo's model for the 32-px shapes world: 16 tokens per tile; launch.train sizes its vocabulary and special
    # token ids from the tokenizer it trains with.
    "demo_tiny": LlavaOnevisionConfig(
        vision=SiglipVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=32, patch_size=8),
        text=Qwen2Config(vocab_size=1024, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=64, rope_theta=10_000.0),
        image_grid_pinpoints=((32, 32), (32, 64), (64, 32)), video_newline="grid"),
}


class MultiModalProjector(nn.Module):
  """linear_1 (Dv → D) → GELU (exact erf by default) → linear_2 (D → D).

  Initialised as LLaVA builds it, with torch's default Linear kernels: at the 0.02 normal, a model trained from
  scratch sees visual tokens an order of magnitude smaller than its text embeddings, and learns to ignore them.
  """
  hidden_size: int
  act: str = "gelu"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=torch_linear_kernel_init)
    x = dense(self.hidden_size, ("vision_embed", "embed"), name="linear_1", **kw)(x)
    x = ACTIVATIONS[self.act](x)
    return dense(self.hidden_size, ("embed", "embed_out"), name="linear_2", **kw)(x)


class LlavaOnevision(nn.Module):
  """Params: `vision_tower`, `multi_modal_projector/{linear_1,linear_2}`, `image_newline` (D,), `language_model`."""
  config: LlavaOnevisionConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: str = "none"
  attention_backend: str = "xla"

  def setup(self):
    cfg = self.config
    check_activation(cfg.projector_hidden_act, "projector activation")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, remat=self.remat,
              attention_backend=self.attention_backend)
    self.vision_tower = SiglipVisionTower(cfg.vision, **kw)
    self.multi_modal_projector = MultiModalProjector(cfg.text.hidden_size, cfg.projector_hidden_act,
                                                     dtype=self.dtype, param_dtype=self.param_dtype)
    self.image_newline = self.param("image_newline", logical(nn.initializers.normal(cfg.text.hidden_size**-0.5),
                                                             ("embed",)), (cfg.text.hidden_size,), self.param_dtype)
    self.language_model = Qwen2ForCausalLM(cfg.text, **kw)

  def visual_features(self, pixels: jax.Array) -> jax.Array:
    """pixels (P, H, W, 3) → projected features (P, L, D)."""
    return self.multi_modal_projector(self.vision_tower(pixels)["features"])

  def embed(self, input_ids: jax.Array, pixels: jax.Array | None = None, visual_src: jax.Array | None = None,
            visual_weight: jax.Array | None = None, visual_dest: jax.Array | None = None) -> jax.Array:
    """Token embeddings (B, T, D) with visual tokens written in, from a layout of `build_layout` in one of two forms.

    Per sample (training batches): pixels (B, P, H, W, C), visual_src/visual_weight (B, V, 4) indexing that sample's
    P·L features (index P·L: `image_newline`), visual_dest (B, V) positions in [0, T). Every gather and scatter stays
    within a sample, so a batch sharded over devices never moves visual features between them.
    Whole batch (inference): pixels (P, H, W, C), src/weight (V, 4), visual_dest (V,) flat positions in B·T.
    Destinations past the end are padding rows of a fixed-size layout: dropped.
    """
    embeds = self.language_model.embed(input_ids)
    if pixels is None:
      return embeds
    if visual_dest.ndim == 2:
      return self._splice(embeds, pixels, visual_src, visual_weight, visual_dest)
    batch, length, width = embeds.shape
    merged = self._splice(embeds.reshape(1, batch * length, width), pixels[None], visual_src[None],
                          visual_weight[None], visual_dest[None])
    return merged.reshape(batch, length, width)

  def _splice(self, embeds, pixels, visual_src, visual_weight, visual_dest):
    batch, patches = pixels.shape[:2]
    features = self.visual_features(pixels.reshape(batch * patches, *pixels.shape[2:]))
    features = features.reshape(batch, -1, features.shape[-1])
    newline = jnp.broadcast_to(self.image_newline.astype(features.dtype), (batch, 1, features.shape[-1]))
    table = jnp.concatenate([features, newline], axis=1)
    taps = jax.vmap(lambda t, s: t[s])(table, visual_src)
    # The 4-tap sums (bilinear weights such as 0.107) are formed in fp32 whatever the compute dtype.
    visual = jnp.einsum("bvk,bvkd->bvd", visual_weight.astype(jnp.float32), taps.astype(jnp.float32))
    return jax.vmap(lambda e, d, v: e.at[d].set(v, mode="drop"))(embeds, visual_dest, visual.astype(embeds.dtype))

  def __call__(self, input_ids, attention_mask, positions, pixels=None, visual_src=None, visual_weight=None,
               visual_dest=None, return_hidden: bool = False):
    """input_ids, attention_mask, positions (B, T) → logits (B, T, V) (or hidden states (B, T, D))."""
    embeds = self.embed(input_ids, pixels, visual_src, visual_weight, visual_dest)
    mask = causal_mask(jnp.arange(input_ids.shape[1]), attention_mask.astype(bool))
    out, _ = self.language_model(embeds, positions, mask, return_hidden=return_hidden)
    return out


def init_params(config: LlavaOnevisionConfig, rng: jax.Array, param_dtype=jnp.float32):
  """Randomly initialised params (with logical-axis metadata boxes) touching every parameter once."""
  module = LlavaOnevision(config, param_dtype=param_dtype)
  side = config.vision.image_size
  tokens = config.vision.tokens_per_side**2
  ids = jnp.zeros((1, 2), jnp.int32)
  pixels = jnp.zeros((1, side, side, config.vision.num_channels))
  src = jnp.zeros((1, 4), jnp.int32).at[0, 0].set(tokens)
  return module.init(rng, ids, jnp.ones((1, 2), jnp.int32), jnp.zeros((1, 2), jnp.int32), pixels, src,
                     jnp.ones((1, 4)), jnp.zeros((1,), jnp.int32))["params"]


def param_shapes(config: LlavaOnevisionConfig, boxed: bool = False) -> dict:
  """The parameter tree as `jax.ShapeDtypeStruct`s, without allocating anything.

  boxed: keep the `nn.LogicallyPartitioned` boxes that carry each parameter's logical axis names.
  """
  shapes = jax.eval_shape(lambda rng: init_params(config, rng), jax.random.key(0))
  return shapes if boxed else nn.unbox(shapes)

