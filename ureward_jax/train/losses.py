"""Token log-probabilities and the reward model's SFT loss, without materialising (B, T, V) fp32 logits.

The vocabulary head is applied `chunk` positions at a time inside a rematerialised scan: for one 13,000-token
sequence and Qwen2's 152k vocabulary the full fp32 logits would take 7.9 GB; a 1,024-position chunk takes 0.6 GB,
in the forward and the backward pass alike.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from ureward_jax.processing.chat import IGNORE


def token_logprobs(logits_fn: Callable[[jax.Array], jax.Array], hidden: jax.Array, targets: jax.Array,
                   chunk: int = 1024) -> jax.Array:
  """log p(targets) (B, T) in fp32, from final hidden states (B, T, D) and `logits_fn`: (B, C, D) → (B, C, V).

  Targets outside [0, V) (e.g. IGNORE) give 0.
  """
  batch, length, width = hidden.shape
  chunks = -(-length // chunk)
  pad = chunks * chunk - length
  hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(batch, chunks, chunk, width).swapaxes(0, 1)
  targets = jnp.pad(targets, ((0, 0), (0, pad)), constant_values=IGNORE).reshape(batch, chunks, chunk)

  @jax.checkpoint
  def one(h, t):
    logits = logits_fn(h).astype(jnp.float32)
    logz = jax.nn.logsumexp(logits, axis=-1)
    valid = (t >= 0) & (t < logits.shape[-1])
    picked = jnp.take_along_axis(logits, jnp.where(valid, t, 0)[..., None], axis=-1)[..., 0]
    return jnp.where(valid, picked - logz, 0.0)

  out = jax.lax.map(lambda xs: one(*xs), (hidden, targets.swapaxes(0, 1)))
  return out.swapaxes(0, 1).reshape(batch, chunks * chunk)[:, :length]


def shift_labels(labels: jax.Array) -> jax.Array:
  """Targets for each position: the next position's label (the last position gets IGNORE)."""
  return jnp.concatenate([labels[:, 1:], jnp.full_like(labels[:, :1], IGNORE)], axis=1)


def sft_loss(logprobs: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean negative log-likelihood over positions whose target is not IGNORE, and that count."""
  counted = targets != IGNORE
  count = jnp.sum(counted)
  return -jnp.sum(jnp.where(counted, logprobs, 0.0)) / jnp.maximum(count, 1), count
