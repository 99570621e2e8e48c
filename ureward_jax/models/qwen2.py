"""Qwen2 decoder-only language model (HF `Qwen2ForCausalLM`), with an optional KV cache for decoding.

Pre-norm blocks: x += o_proj(attn(RMSNorm(x))); x += down(silu(gate(h)) · up(h)) with h = RMSNorm(x). Grouped-query
attention with biases on q/k/v only, rotate-half RoPE with θ from the config. The blocks are scanned: every
per-layer parameter is stacked on a leading axis of length `num_hidden_layers`.

The model takes embeddings, not ids, so vision features can be spliced in first (`embed` gives the text part).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from ureward_jax.errors import UserError
from ureward_jax.nn.attention import dot_product_attention
from ureward_jax.nn.linear import default_kernel_init, dense, logical
from ureward_jax.nn.norms import RMSNorm
from ureward_jax.nn.remat import remat
from ureward_jax.nn.rope import apply_rope, rope_tables
from ureward_jax.parallel import constrain

# A KV cache: {"k", "v"} of shape (layers, B, S, kv_heads, head_dim); slots [0, S) are filled left to right.
KVCache = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Qwen2Config:
  vocab_size: int = 152064
  hidden_size: int = 3584
  intermediate_size: int = 18944
  num_hidden_layers: int = 28
  num_attention_heads: int = 28
  num_key_value_heads: int = 4
  head_dim: int = 128
  rope_theta: float = 1e6
  rms_norm_eps: float = 1e-6
  tie_word_embeddings: bool = False
  max_position_embeddings: int = 32768
  bos_token_id: int | None = None
  eos_token_id: int | list[int] | None = None

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "Qwen2Config":
    """From an HF Qwen2 config dict (`text_config`, or the flat LLaVA-NeXT config); refuses what we do not model."""
    d = dict(d)
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
      raise UserError(f"RoPE scaling {rope} is not supported; only default RoPE is implemented")
    d.setdefault("rope_theta", rope.get("rope_theta", cls.rope_theta))
    if d.get("use_sliding_window"):
      raise UserError("use_sliding_window=True is not supported: Qwen2 checkpoints of this model use full attention")
    if d.get("hidden_act", "silu") != "silu":
      raise UserError(f"hidden_act {d['hidden_act']!r} is not supported; Qwen2 uses 'silu'")
    if d.get("head_dim") is None:
      d["head_dim"] = d["hidden_size"] // d["num_attention_heads"]
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in fields})


class Qwen2Attention(nn.Module):
  config: Qwen2Config
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_backend: str = "xla"

  @nn.compact
  def __call__(self, x, cos, sin, mask, cache, cache_index):
    """x (B, T, D); cos/sin (B, T, H); mask (B, 1, T, S); cache {"k","v"} (B, S, K, H) or None (then S = T)."""
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    q = dense((cfg.num_attention_heads, cfg.head_dim), ("embed", "heads", "head_dim"), name="q_proj", **kw)(x)
    k = dense((cfg.num_key_value_heads, cfg.head_dim), ("embed", "kv_heads", "head_dim"), name="k_proj", **kw)(x)
    v = dense((cfg.num_key_value_heads, cfg.head_dim), ("embed", "kv_heads", "head_dim"), name="v_proj", **kw)(x)
    q = checkpoint_name(apply_rope(q, cos, sin), "query_proj")
    k = checkpoint_name(apply_rope(k, cos, sin), "key_proj")
    v = checkpoint_name(v, "value_proj")
    if cache is not None:
      at = (0, cache_index, 0, 0)
      k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), at)
      v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), at)
      cache = {"k": k, "v": v}
      k, v = k.astype(self.dtype), v.astype(self.dtype)
    attn = dot_product_attention(q, k, v, mask, backend=self.attention_backend)
    out = dense(cfg.hidden_size, ("heads", "head_dim", "embed"), contract=(-2, -1), use_bias=False, name="o_proj",
                **kw)(attn)
    return checkpoint_name(out, "attention_out"), cache


class Qwen2MLP(nn.Module):
  config: Qwen2Config
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, use_bias=False)
    gate = dense(cfg.intermediate_size, ("embed", "mlp"), name="gate_proj", **kw)(x)
    up = dense(cfg.intermediate_size, ("embed", "mlp"), name="up_proj", **kw)(x)
    h = checkpoint_name(jax.nn.silu(gate) * up, "mlp_hidden")
    return checkpoint_name(dense(cfg.hidden_size, ("mlp", "embed"), name="down_proj", **kw)(h),
                                             "mlp_out")


class Qwen2DecoderLayer(nn.Module):
  """One block, shaped for `nn.scan`: (x, layer_cache) → (x, new_layer_cache)."""
  config: Qwen2Config
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_backend: str = "xla"

  @nn.compact
  def __call__(self, x, cache, cos, sin, mask, cache_index):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = checkpoint_name(x, "layer_input")
    h = RMSNorm(cfg.rms_norm_eps, self.param_dtype, name="input_layernorm")(x)
    attn, cache = Qwen2Attention(cfg, attention_backend=self.attention_backend, name="self_attn", **kw)(
        h, cos, sin, mask, cache, cache_index)
    x = x + attn
    h = RMSNorm(cfg.rms_norm_eps, self.param_dtype, name="post_attention_layernorm")(x)
    x = x + Qwen2MLP(cfg, name="mlp", **kw)(h)
    return constrain(x, ("batch", "length", "act_embed")), cache


class Qwen2ForCausalLM(nn.Module):
  """Params: `embed_tokens/embedding` (V, D), `layers/*` (stacked), `norm/scale`, `lm_head/kernel` (D, V) unless tied."""
  config: Qwen2Config
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: str = "none"
  attention_backend: str = "xla"

  def setup(self):
    cfg = self.config
    self.embed_tokens = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
                                 embedding_init=logical(default_kernel_init, ("vocab", "embed")))
    layer = remat(Qwen2DecoderLayer, self.remat, scanned=True)
    stack = nn.scan(layer, variable_axes={"params": 0}, split_rngs={"params": True},
                    in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                    length=cfg.num_hidden_layers, metadata_params={nn.PARTITION_NAME: "layers"})
    self.layers = stack(cfg, self.dtype, self.param_dtype, self.attention_backend)
    self.norm = RMSNorm(cfg.rms_norm_eps, self.param_dtype)
    if not cfg.tie_word_embeddings:
      self.lm_head = dense(cfg.vocab_size, ("embed", "vocab"), use_bias=False, dtype=self.dtype,
                           param_dtype=self.param_dtype)

  def embed(self, input_ids: jax.Array) -> jax.Array:
    """(B, T) int → (B, T, D)."""
    return self.embed_tokens(input_ids)

  def logits(self, hidden: jax.Array) -> jax.Array:
    """(..., D) final hidden states → (..., V) logits."""
    if self.config.tie_word_embeddings:
      return self.embed_tokens.attend(hidden)
    return self.lm_head(hidden)

  def __call__(self, inputs_embeds: jax.Array, positions: jax.Array, mask: jax.Array, cache: KVCache | None = None,
               cache_index: jax.Array | int = 0, return_hidden: bool = False):
    """inputs_embeds (B, T, D); positions (B, T) RoPE positions; mask (B, 1, T, S) from `causal_mask`.

    With a cache, the new keys are written to slots [cache_index, cache_index + T) and attention runs over all S
    slots. Returns (logits (B, T, V) — or final hidden states (B, T, D) with `return_hidden` — , updated cache).
    """
    cfg = self.config
    cos, sin = rope_tables(positions, cfg.head_dim, cfg.rope_theta)
    x = constrain(inputs_embeds.astype(self.dtype), ("batch", "length", "act_embed"))
    x, cache = self.layers(x, cache, cos, sin, mask, cache_index)
    x = self.norm(x)
    return (x if return_hidden else self.logits(x)), cache

  @staticmethod
  def init_cache(config: Qwen2Config, batch: int, length: int, dtype=jnp.float32) -> KVCache:
    shape = (config.num_hidden_layers, batch, length, config.num_key_value_heads, config.head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
