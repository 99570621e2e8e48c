"""The reward model's SFT step: next-token cross-entropy on the labelled positions, gradient accumulation, AdamW.

A batch is a dict of arrays with a leading micro-batch axis A (gradient accumulation): `input_ids`, `labels`
(IGNORE where nothing is learned), `attention_mask`, `positions` of shape (A, B, T) and, for visual samples, each
sample's own patches and layout (`LlavaOnevision.embed`, per-sample form): `pixels` (A, B, P, H, W, C),
`visual_src`/`visual_weight` (A, B, V, 4), `visual_dest` (A, B, V) with padding rows at destination T. Each
micro-batch's loss is the mean over its labelled tokens and the A micro-batch gradients are averaged, as
LLaVA-NeXT's trainer does.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from ureward_jax.models.llava_onevision import LlavaOnevision
from ureward_jax.train.losses import sft_loss, shift_labels, token_logprobs

VISUAL_KEYS = ("pixels", "visual_src", "visual_weight", "visual_dest")


def target_logprobs(module: LlavaOnevision, params: Any, batch: dict, logits_chunk: int = 1024):
  """(log p of each position's next token (B, T) fp32, those targets (B, T)) for one micro-batch (no A axis)."""
  visual = [batch.get(k) for k in VISUAL_KEYS]
  hidden = module.apply({"params": params}, batch["input_ids"], batch["attention_mask"], batch["positions"], *visual,
                        return_hidden=True)
  targets = shift_labels(batch["labels"])

  def logits(h):
    return module.apply({"params": params}, h, method=lambda m, x: m.language_model.logits(x))
  return token_logprobs(logits, hidden, targets, logits_chunk), targets


def loss_fn(module: LlavaOnevision, params: Any, batch: dict, logits_chunk: int = 1024):
  """(mean NLL over labelled tokens, number of labelled tokens) for one micro-batch (leaves without the A axis)."""
  return sft_loss(*target_logprobs(module, params, batch, logits_chunk))


def completion_logprobs(module: LlavaOnevision, params: Any, batch: dict, logits_chunk: int = 1024) -> jax.Array:
  """Summed fp32 log-probability of each sample's labelled tokens (B,), for one micro-batch (leaves without A).

  With `assistant_only` examples this is log p(answer | prompt): what ranks candidate verdicts and what DPO compares.
  Unlabelled positions contribute 0 (`token_logprobs` of IGNORE).
  """
  return jnp.sum(target_logprobs(module, params, batch, logits_chunk)[0], axis=1)


def make_sft_step(module: LlavaOnevision, optimizer: optax.GradientTransformation, logits_chunk: int = 1024):
  """step(params, opt_state, batch) → (params, opt_state, metrics); jit it with donation of the first two."""

  def step(params, opt_state, batch):
    def micro(grads, mb):
      (loss, count), g = jax.value_and_grad(loss_fn, argnums=1, has_aux=True)(module, params, mb, logits_chunk)
      return jax.tree.map(jnp.add, grads, g), (loss, count)

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, (losses, counts) = jax.lax.scan(micro, zeros, batch)
    grads = jax.tree.map(lambda g: g / losses.shape[0], grads)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics = {"loss": jnp.mean(losses), "grad_norm": optax.tree.norm(grads), "tokens": jnp.sum(counts)}
    return params, opt_state, metrics

  return step
