"""CLIP text encoders as SDXL uses them: transformers' `CLIPTextModel` (text_encoder, CLIP ViT-L, quick GELU) and
`CLIPTextModelWithProjection` (text_encoder_2, OpenCLIP bigG, exact GELU, bias-free `text_projection`); also the
OpenCLIP ViT-H text tower of VideoCrafter2 / T2V-Turbo, the same blocks (`converters/t2v_turbo.py` renames its
`transformer.resblocks` and splits their fused attention projections).

Token + learned position embeddings → pre-LN blocks under a causal mask (and an optional padding mask) →
`final_layer_norm`. SDXL conditions on `hidden_states[-2]`, the output of the penultimate block *before* the final
LayerNorm, and (text_encoder_2) on `text_embeds`, the projected hidden state of the EOS token.

Parameter paths mirror the diffusers checkpoint files (`text_model.encoder.layers.{i}.self_attn.q_proj.weight`,
`text_projection.weight`), so `converters/sdxl.py` derives the name table from our tree. Note that transformers 5
itself drops the `text_model.` prefix of a plain `CLIPTextModel` (its `state_dict` starts at `embeddings.`), while
the files on the hub, written by transformers 4, keep it; our tree keeps it for both variants.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from ureward_jax.errors import UserError
from ureward_jax.nn.activations import ACTIVATIONS, check_activation
from ureward_jax.nn.attention import causal_mask, dot_product_attention
from ureward_jax.nn.linear import default_kernel_init, dense, logical
from ureward_jax.nn.norms import layer_norm
from ureward_jax.nn.remat import remat
from ureward_jax.parallel import constrain

# The EOS id of configs written before transformers PR #24773; with it the pooled token is the one with the largest
# id in each row (the EOS of the original vocabulary), not the first occurrence of `eos_token_id`.
LEGACY_EOS_TOKEN_ID = 2


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
  """transformers' `CLIPTextConfig` fields that shape the model, with its defaults (a `config.json` written by
  `save_pretrained` leaves out the keys equal to them), plus `with_projection` to select
  `CLIPTextModelWithProjection`. SDXL: ViT-L (768 wide, 12 × 12 heads, quick_gelu) and bigG (1280 wide, 32 layers,
  20 heads, gelu, projection 1280), both with the legacy `eos_token_id` 2."""
  vocab_size: int = 49408
  hidden_size: int = 512
  intermediate_size: int = 2048
  num_hidden_layers: int = 12
  num_attention_heads: int = 8
  max_position_embeddings: int = 77
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  projection_dim: int = 512
  eos_token_id: int = 49407
  pad_token_id: int | None = 1
  with_projection: bool = False

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "CLIPTextConfig":
    """From a transformers `config.json` dict / `CLIPTextConfig.to_dict()` or our `to_dict()` (extra keys ignored).

    Without a `with_projection` key the variant is read from `architectures` (`CLIPTextModelWithProjection`).
    """
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in d.items() if k in fields}
    if "with_projection" not in kwargs:
      kwargs["with_projection"] = "CLIPTextModelWithProjection" in (d.get("architectures") or ())
    config = cls(**kwargs)
    check_activation(config.hidden_act, "CLIP text hidden_act")
    if config.hidden_size % config.num_attention_heads:
      raise UserError(f"CLIP text hidden_size {config.hidden_size} is not a multiple of num_attention_heads "
                      f"{config.num_attention_heads}")
    return config

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


class CLIPAttention(nn.Module):
  """Multi-head self-attention, biases on all four projections; x (B, T, D), mask (B, 1, T, T) → (B, T, D)."""
  config: CLIPTextConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_backend: str = "xla"

  @nn.compact
  def __call__(self, x, mask):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    heads = x.shape[:-1] + (cfg.num_attention_heads, cfg.head_dim)
    q = checkpoint_name(dense(cfg.hidden_size, ("embed", "heads"), name="q_proj", **kw)(x), "query_proj")
    k = checkpoint_name(dense(cfg.hidden_size, ("embed", "heads"), name="k_proj", **kw)(x), "key_proj")
    v = checkpoint_name(dense(cfg.hidden_size, ("embed", "heads"), name="v_proj", **kw)(x), "value_proj")
    attn = dot_product_attention(q.reshape(heads), k.reshape(heads), v.reshape(heads), mask,
                                 backend=self.attention_backend)
    out = dense(cfg.hidden_size, ("heads", "embed"), name="out_proj", **kw)(attn.reshape(x.shape[:-1] + (-1,)))
    return checkpoint_name(out, "attention_out")


class CLIPMLP(nn.Module):
  """fc1 (D → I) → activation → fc2 (I → D)."""
  config: CLIPTextConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = dense(cfg.intermediate_size, ("embed", "mlp"), name="fc1", **kw)(x)
    h = checkpoint_name(ACTIVATIONS[cfg.hidden_act](h), "mlp_hidden")
    return checkpoint_name(dense(cfg.hidden_size, ("mlp", "embed"), name="fc2", **kw)(h), "mlp_out")


class CLIPEncoderLayer(nn.Module):
  """One pre-LN block; x (B, T, D), mask (B, 1, T, T) → (x, x if `collect` else None), shaped for `nn.scan`."""
  config: CLIPTextConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_backend: str = "xla"
  collect: bool = False

  @nn.compact
  def __call__(self, x, mask):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = checkpoint_name(x, "layer_input")
    h = layer_norm(cfg.layer_norm_eps, name="layer_norm1", **kw)(x)
    x = x + CLIPAttention(cfg, attention_backend=self.attention_backend, name="self_attn", **kw)(h, mask)
    h = layer_norm(cfg.layer_norm_eps, name="layer_norm2", **kw)(x)
    x = x + CLIPMLP(cfg, name="mlp", **kw)(h)
    x = constrain(x, ("batch", "length", "act_embed"))
    return x, (x if self.collect else None)


class CLIPEncoder(nn.Module):
  """The blocks, scanned: params under `layers/` with a leading layer axis.

  x (B, T, D), mask (B, 1, T, T) → (output of the last block, each block's output stacked (L, B, T, D) or None).
  """
  config: CLIPTextConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: str = "none"
  attention_backend: str = "xla"
  collect: bool = False

  @nn.compact
  def __call__(self, x, mask):
    layer = remat(CLIPEncoderLayer, self.remat, scanned=True)
    stack = nn.scan(layer, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=nn.broadcast,
                    length=self.config.num_hidden_layers, metadata_params={nn.PARTITION_NAME: "layers"})
    return stack(self.config, self.dtype, self.param_dtype, self.attention_backend, self.collect,
                 name="layers")(x, mask)


class _Embeddings(nn.Module):
  """input_ids (B, T) → token + position embeddings (B, T, D), positions 0..T-1."""
  config: CLIPTextConfig
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, input_ids):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    length = input_ids.shape[-1]
    if length > cfg.max_position_embeddings:
      raise ValueError(f"CLIP text sequence length {length} exceeds max_position_embeddings "
                       f"{cfg.max_position_embeddings}")
    tokens = nn.Embed(cfg.vocab_size, cfg.hidden_size, embedding_init=logical(default_kernel_init, ("vocab", "embed")),
                      name="token_embedding", **kw)
    positions = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size,
                         embedding_init=logical(default_kernel_init, ("length", "embed")),
                         name="position_embedding", **kw)
    return tokens(input_ids) + positions(jnp.arange(length))[None]


def eos_positions(input_ids: jax.Array, eos_token_id: int) -> jax.Array:
  """(B, T) ids → (B,) index of the pooled token, as transformers picks it: the first largest id of each row under
  the legacy `eos_token_id` 2, else the first occurrence of `eos_token_id` (0 in a row without one)."""
  if eos_token_id == LEGACY_EOS_TOKEN_ID:
    return jnp.argmax(input_ids, axis=-1)
  return jnp.argmax((input_ids == eos_token_id).astype(jnp.int32), axis=-1)


class CLIPTextTransformer(nn.Module):
  """input_ids (B, T) → {"last_hidden_state" (B, T, D), "pooler_output" (B, D), "hidden_states"}; see
  `CLIPTextModel`. Params: `embeddings/{token_embedding,position_embedding}`, `encoder/layers/*`, `final_layer_norm`.
  """
  config: CLIPTextConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: str = "none"
  attention_backend: str = "xla"

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, output_hidden_states: bool = False):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    batch, length = input_ids.shape
    x = _Embeddings(cfg, name="embeddings", **kw)(input_ids)
    x = constrain(x, ("batch", "length", "act_embed"))
    key_valid = jnp.ones((batch, length), bool) if attention_mask is None else attention_mask.astype(bool)
    mask = causal_mask(jnp.arange(length), key_valid)
    encoder = CLIPEncoder(cfg, remat=self.remat, attention_backend=self.attention_backend,
                          collect=output_hidden_states, name="encoder", **kw)
    h, per_layer = encoder(x, mask)
    final_layer_norm = layer_norm(cfg.layer_norm_eps, name="final_layer_norm", **kw)
    last = final_layer_norm(h)
    out = {"last_hidden_state": last, "pooler_output": last[jnp.arange(batch), eos_positions(input_ids,
                                                                                            cfg.eos_token_id)]}
    if output_hidden_states:
      out["hidden_states"] = (x,) + tuple(per_layer[i] for i in range(cfg.num_hidden_layers))
      out["penultimate_normed"] = final_layer_norm(out["hidden_states"][-2])
    return out


class CLIPTextModel(nn.Module):
  """transformers' `CLIPTextModel`, or `CLIPTextModelWithProjection` when `config.with_projection`.

  input_ids (B, T) int with T ≤ max_position_embeddings; attention_mask (B, T), 1 = real token, 0 = padding (keys
  only; it is combined with the causal mask, and a query that may see no key averages all values, as transformers'
  eager attention does). Returns a dict:
    last_hidden_state (B, T, D): after `final_layer_norm`;
    pooler_output (B, D): last_hidden_state at the EOS token (`eos_positions`);
    text_embeds (B, P): `text_projection(pooler_output)`, projection variant only;
    hidden_states (only with `output_hidden_states`): L + 1 arrays (B, T, D), the embeddings then every block's
      output, all before `final_layer_norm` (SDXL takes `hidden_states[-2]`);
    penultimate_normed (B, T, D) (only with `output_hidden_states`): `final_layer_norm(hidden_states[-2])`, the
      "penultimate" layer of VideoCrafter2's OpenCLIP embedder (all blocks but the last, then the final LayerNorm).
  Params: `text_model/...` (see `CLIPTextTransformer`) and, projection variant, `text_projection/kernel` (D, P).
  """
  config: CLIPTextConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: str = "none"
  attention_backend: str = "xla"

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, output_hidden_states: bool = False) -> dict[str, Any]:
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    out = CLIPTextTransformer(cfg, remat=self.remat, attention_backend=self.attention_backend, name="text_model",
                              **kw)(input_ids, attention_mask, output_hidden_states)
    if cfg.with_projection:
      projection = dense(cfg.projection_dim, ("embed", "embed_out"), use_bias=False, name="text_projection", **kw)
      out["text_embeds"] = projection(out["pooler_output"])
    return out


def init_params(config: CLIPTextConfig, rng: jax.Array, param_dtype=jnp.float32):
  """Randomly initialised params (with logical-axis metadata boxes) touching every parameter once."""
  module = CLIPTextModel(config, param_dtype=param_dtype)
  return module.init(rng, jnp.zeros((1, 2), jnp.int32))["params"]


def param_shapes(config: CLIPTextConfig, boxed: bool = False) -> dict:
  """The parameter tree as `jax.ShapeDtypeStruct`s, without allocating anything.

  boxed: keep the `nn.LogicallyPartitioned` boxes that carry each parameter's logical axis names.
  """
  shapes = jax.eval_shape(lambda rng: init_params(config, rng), jax.random.key(0))
  return shapes if boxed else nn.unbox(shapes)
