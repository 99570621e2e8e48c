"""Batched autoregressive decoding with a KV cache: greedy or sampled, the whole loop in one jitted function.

Rows are left-padded; RoPE positions count real tokens only (cumsum of the attention mask − 1), as transformers'
`generate` and LLaVA-NeXT do. The prefill writes the prompt into cache slots [0, T); new token i goes to slot T + i.
A `lax.while_loop` runs the steps, so nothing recompiles per token and the loop stops once every row has ended.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from ureward_jax.errors import UserError
from ureward_jax.models.qwen2 import Qwen2ForCausalLM
from ureward_jax.nn.attention import causal_mask


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """temperature 0 = greedy (argmax); otherwise softmax(logits / temperature) restricted by top_k / top_p."""
  max_new_tokens: int = 64
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  eos_token_ids: tuple[int, ...] = ()
  pad_token_id: int = 0

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise UserError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
    if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
      raise UserError(f"invalid sampling settings: temperature={self.temperature}, top_k={self.top_k}, "
                      f"top_p={self.top_p}")


def _choose(logits: jax.Array, rng: jax.Array, cfg: SamplingConfig) -> jax.Array:
  """Next token per row from fp32 logits (B, V)."""
  if cfg.temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / cfg.temperature
  if cfg.top_k:
    kth = jax.lax.top_k(logits, cfg.top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if cfg.top_p < 1:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
    cutoff_index = jnp.sum(cumulative < cfg.top_p, axis=-1, keepdims=True)
    cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("language_model", "cfg"))
def decode(language_model: Qwen2ForCausalLM, params, inputs_embeds: jax.Array, attention_mask: jax.Array,
           rng: jax.Array, cfg: SamplingConfig) -> tuple[jax.Array, jax.Array]:
  """Generate from prompt embeddings (B, T, D) with mask (B, T) (left padding).

  params: the language model's params. Returns (tokens (B, max_new_tokens) int32, padded with `pad_token_id` after
  a row's end, lengths (B,) of generated tokens including the end token).
  """
  batch, length, _ = inputs_embeds.shape
  total = length + cfg.max_new_tokens
  lm = functools.partial(language_model.apply, {"params": params})
  mask = attention_mask.astype(bool)
  key_valid = jnp.concatenate([mask, jnp.zeros((batch, cfg.max_new_tokens), bool)], axis=1)
  positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
  cache = Qwen2ForCausalLM.init_cache(language_model.config, batch, total, language_model.dtype)
  hidden, cache = lm(inputs_embeds, positions, causal_mask(jnp.arange(length), key_valid), cache, 0,
                     return_hidden=True)
  logits = lm(hidden[:, -1], method="logits").astype(jnp.float32)
  eos = jnp.asarray(cfg.eos_token_ids or (-1,), jnp.int32)

  def step(state):
    i, logits, cache, key_valid, position, tokens, done, rng = state
    rng, sub = jax.random.split(rng)
    token = _choose(logits, sub, cfg)
    token = jnp.where(done, cfg.pad_token_id, token)
    tokens = tokens.at[:, i].set(token)
    done = done | jnp.isin(token, eos)
    slot = length + i
    key_valid = key_valid.at[:, slot].set(True)
    position = position + 1
    embeds = lm(token[:, None], method="embed")
    hidden, cache = lm(embeds, position[:, None], causal_mask(jnp.full((1,), slot), key_valid), cache, slot,
                       return_hidden=True)
    logits = lm(hidden[:, 0], method="logits").astype(jnp.float32)
    return i + 1, logits, cache, key_valid, position, tokens, done, rng

  def running(state):
    i, *_, done, _ = state
    return (i < cfg.max_new_tokens) & ~jnp.all(done)

  tokens = jnp.full((batch, cfg.max_new_tokens), cfg.pad_token_id, jnp.int32)
  state = (0, logits, cache, key_valid, positions[:, -1], tokens, jnp.zeros((batch,), bool), rng)
  _, _, _, _, _, tokens, _, _ = jax.lax.while_loop(running, step, state)
  ended = jnp.isin(tokens, eos)
  lengths = jnp.where(ended.any(axis=1), jnp.argmax(ended, axis=1) + 1, cfg.max_new_tokens)
  return tokens, lengths


def sampling_config(max_new_tokens: int, eos_token_ids: Sequence[int] | int | None = None, **kwargs) -> SamplingConfig:
  """A `SamplingConfig` accepting one end id, several, or none."""
  if eos_token_ids is None:
    eos_token_ids = ()
  elif isinstance(eos_token_ids, int):
    eos_token_ids = (eos_token_ids,)
  return SamplingConfig(max_new_tokens=max_new_tokens, eos_token_ids=tuple(eos_token_ids), **kwargs)
