"""Scaled dot-product attention: one function, several backends, grouped-query heads built in.

Layouts: query (B, T, N, H), key and value (B, S, K, H) with N a multiple of K (query head n reads kv head
n // (N / K), as `repeat_kv` does), mask (B, 1 | N, T, S) boolean with True = may attend. Output (B, T, N, H).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ureward_jax.errors import UserError

BACKENDS = ("xla", "cudnn")


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array | None = None, *,
                          backend: str = "xla", query_chunk: int = 1024) -> jax.Array:
  """Softmax(q kᵀ / √H) v with the softmax in fp32; rows with no allowed key come out as the mean of the values.

  The xla backend takes queries `query_chunk` at a time once there are more than twice that many, so the fp32
  logits of a long prompt (28 heads × 12k² × 4 B ≈ 16 GB for a UnifiedReward video pair) never exist at once, in
  the forward or the backward pass; each query row still sees all its keys, so the result is the same.
  """
  if backend == "xla":
    if query.shape[1] > 2 * query_chunk:
      return _chunked(query, key, value, mask, query_chunk)
    return _xla_attention(query, key, value, mask)
  if backend == "cudnn":
    return jax.nn.dot_product_attention(query, key, value, mask=mask, implementation="cudnn")
  raise UserError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")


def _chunked(query, key, value, mask, chunk):
  batch, q_len = query.shape[:2]
  chunks = -(-q_len // chunk)
  pad = chunks * chunk - q_len
  query = jnp.pad(query, ((0, 0), (0, pad), (0, 0), (0, 0)))
  query = query.reshape(batch, chunks, chunk, *query.shape[2:]).swapaxes(0, 1)
  if mask is not None:
    mask = jnp.pad(mask, ((0, 0), (0, 0), (0, pad), (0, 0)))
    mask = mask.reshape(*mask.shape[:2], chunks, chunk, mask.shape[-1]).transpose(2, 0, 1, 3, 4)
  # Each chunk is recomputed in the backward pass rather than keeping its (B, N, chunk, S) probabilities for every
  # chunk at once: the memory behaviour of flash attention, at the price of one more forward of the logits.
  one_chunk = jax.checkpoint(lambda q, m: _xla_attention(q, key, value, m))
  out = jax.lax.map(lambda qm: one_chunk(*qm), (query, mask))
  return out.swapaxes(0, 1).reshape(batch, chunks * chunk, *out.shape[3:])[:, :q_len]


def _xla_attention(query, key, value, mask):
  batch, q_len, num_heads, head_dim = query.shape
  num_kv_heads = key.shape[2]
  if num_heads % num_kv_heads:
    raise UserError(f"{num_heads} query heads cannot share {num_kv_heads} kv heads evenly")
  groups = num_heads // num_kv_heads
  kv_len = key.shape[1]
  # Plain batched matmuls over (B, K): the G query heads of a kv head and their T positions form one (G·T)-row
  # operand. A grouped einsum with the group axis left free lowers to a 3× slower loop on CPU.
  query = query.reshape(batch, q_len, num_kv_heads, groups, head_dim).transpose(0, 2, 3, 1, 4)
  query = query.reshape(batch, num_kv_heads, groups * q_len, head_dim)
  key, value = key.transpose(0, 2, 1, 3), value.transpose(0, 2, 1, 3)
  logits = jnp.einsum("bkqh,bksh->bkqs", query, key, preferred_element_type=jnp.float32)
  logits = logits.reshape(batch, num_kv_heads, groups, q_len, kv_len) * (head_dim**-0.5)
  if mask is not None:
    # (B, 1 | N, T, S) → (B, 1 | K, 1 | G, T, S) to broadcast over the grouped heads.
    mask = mask[:, :, None] if mask.shape[1] == 1 else mask.reshape(batch, num_kv_heads, groups, *mask.shape[-2:])
    # The most negative finite value, as an additive mask in PyTorch: a fully masked row stays finite.
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(value.dtype)
  out = jnp.einsum("bkqs,bksh->bkqh", probs.reshape(batch, num_kv_heads, groups * q_len, kv_len), value)
  out = out.reshape(batch, num_kv_heads, groups, q_len, head_dim).transpose(0, 3, 1, 2, 4)
  return out.reshape(batch, q_len, num_heads, head_dim)


def causal_mask(query_slots: jax.Array, key_valid: jax.Array) -> jax.Array:
  """(B, 1, T, S) mask: query at slot t sees key slots s <= t that hold a real token.

  query_slots: (T,) or (B, T) slot index of each query in the key sequence. key_valid: (B, S) bool.
  """
  key_slots = jnp.arange(key_valid.shape[-1])
  query_slots = jnp.broadcast_to(query_slots, (key_valid.shape[0],) + query_slots.shape[-1:])
  causal = key_slots[None, None, :] <= query_slots[:, :, None]
  return (causal & key_valid[:, None, :])[:, None]
