"""The one training step of every task: gradients accumulated over micro-batches by a scan, then one update.

A task supplies `loss_fn(params, reference, micro_batch, rng) → (loss, metrics)` for one micro-batch; this module
turns it into `step(params, opt_state, batch, reference, rng) → (params, opt_state, metrics)`, which the runner jits
once with the params and optimiser state donated (never the reference).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from ureward_jax.train import trainable


def accumulating_step(loss_fn: Callable, optimizer: optax.GradientTransformation, train_mask: dict | None = None,
                      summed: Sequence[str] = ()):
  """step(params, opt_state, batch, reference, rng) → (params, opt_state, metrics).

  batch: arrays with a leading micro-batch axis A; micro-batch a gets the rng `fold_in(rng, a)` (posterior samples,
  noise, timesteps, dropout). Each micro-batch's loss is its own mean and the A gradients are averaged, as
  LLaVA-NeXT's and DiffusionDPO's trainers accumulate. train_mask: a tree of bools laid out as the params (None: all
  train); a frozen leaf gets no gradient (none is computed) and no update, and `opt_state` is the optimiser's state of
  the trained subtree (`trainable.split(params, train_mask)[0]`). Metrics: loss, grad_norm (of the trained leaves) and
  the loss's metrics, each the mean over the micro-batches, or the sum for the names in `summed` (counts).
  """
  def step(params, opt_state, batch, reference, rng):
    trained, frozen = trainable.split(params, train_mask)

    def micro(grads, inputs):
      mb, index = inputs
      loss_of = lambda t: loss_fn(trainable.merge(t, frozen), reference, mb,  # noqa: E731
                                  jax.random.fold_in(rng, index))
      (loss, metrics), g = jax.value_and_grad(loss_of, has_aux=True)(trained)
      return jax.tree.map(jnp.add, grads, g), (loss, metrics)

    accum = jax.tree.leaves(batch)[0].shape[0]
    zeros = jax.tree.map(jnp.zeros_like, trained)
    grads, (losses, metrics) = jax.lax.scan(micro, zeros, (batch, jnp.arange(accum)))
    grads = jax.tree.map(lambda g: g / accum, grads)
    updates, opt_state = optimizer.update(grads, opt_state, trained)
    params = trainable.merge(optax.apply_updates(trained, updates), frozen)
    out = {"loss": jnp.mean(losses), "grad_norm": optax.tree.norm(grads)}
    return params, opt_state, out | {k: jnp.sum(v) if k in summed else jnp.mean(v) for k, v in metrics.items()}

  return step
