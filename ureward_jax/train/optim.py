"""Optimisers, learning-rate schedules and module freezing.

AdamW with global-norm clipping and the transformers Trainer's schedules (linear warm-up over
ceil(warmup_ratio · steps) steps, then cosine or linear decay to 0, or constant). Freezing follows LLaVA-NeXT's
`mm_tunable_parts`: a frozen part gets no update and no optimiser state beyond zeros. `torch_adamw` is torch's AdamW,
the video DPO run's optimiser, at a constant rate or stepped by `one_cycle` (torch's `OneCycleLR`).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import optax

# LLaVA-NeXT's tunable parts → our top-level parameter groups. `image_newline` trains with the language model there
# (its rule is "everything outside the vision tower and projector").
TUNABLE_PARTS = {
    "mm_language_model": ("language_model", "image_newline"),
    "mm_mlp_adapter": ("multi_modal_projector",),
    "mm_vision_tower": ("vision_tower",),
}
ALL_PARTS = tuple(TUNABLE_PARTS)


def learning_rate_schedule(lr: float, num_steps: int, schedule: str = "cosine", warmup_ratio: float = 0.0):
  warmup = math.ceil(warmup_ratio * num_steps)
  if schedule == "constant":
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])
  if schedule == "cosine":
    decay = optax.cosine_decay_schedule(lr, max(num_steps - warmup, 1))
  elif schedule == "linear":
    decay = optax.linear_schedule(lr, 0.0, max(num_steps - warmup, 1))
  else:
    raise ValueError(f"unknown schedule {schedule!r}; expected cosine, linear or constant")
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def one_cycle(max_lr: float, total_steps: int, pct_start: float = 0.3, div_factor: float = 25.0,
              final_div_factor: float = 1e4, base_momentum: float = 0.85, max_momentum: float = 0.95):
  """(learning-rate schedule, momentum schedule) of torch's `OneCycleLR` (two phases, cosine annealing, momentum
  cycled), by optimiser step. The rate rises from max_lr / div_factor to max_lr by step pct_start · total − 1, then
  falls to max_lr / (div_factor · final_div_factor) at step total − 1; the momentum (Adam's β₁) moves the other way,
  max → base → max. Each phase is annealed by end + (start − end)(1 + cos(π · pct)) / 2 of its share pct."""
  peak_step, last_step = float(pct_start * total_steps) - 1, total_steps - 1
  if not 0 < peak_step < last_step:
    raise ValueError(f"one-cycle schedule: pct_start {pct_start} of {total_steps} steps leaves no room for both "
                     "phases; train more steps or change pct_start")
  initial = max_lr / div_factor

  def annealed(start, peak, end):
    def at(step):
      step = jnp.asarray(step, jnp.float32)
      rise = jnp.clip(step / peak_step, 0.0, 1.0)
      fall = jnp.clip((step - peak_step) / (last_step - peak_step), 0.0, 1.0)
      cosine = lambda a, b, pct: b + (a - b) / 2 * (jnp.cos(jnp.pi * pct) + 1)  # noqa: E731
      return jnp.where(step <= peak_step, cosine(start, peak, rise), cosine(peak, end, fall))
    return at
  return (annealed(initial, max_lr, initial / final_div_factor),
          annealed(max_momentum, base_momentum, max_momentum))


def torch_adamw(learning_rate, weight_decay: float = 1e-2, b1=0.9, b2: float = 0.999, eps: float = 1e-8,
                clip_norm: float | None = None) -> optax.GradientTransformation:
  """torch's `AdamW(params, lr)`: Adam with decoupled weight decay (1e-2 by default) on every parameter, optionally
  after global-norm clipping. `learning_rate` and `b1` are numbers or schedules (`one_cycle`'s pair: torch's
  OneCycleLR writes its momentum into `betas`); both are kept in the state (`inject_hyperparams`)."""
  adamw = optax.inject_hyperparams(optax.adamw)(learning_rate=learning_rate, b1=b1, b2=b2, eps=eps,
                                                weight_decay=weight_decay)
  return optax.chain(optax.clip_by_global_norm(clip_norm), adamw) if clip_norm else adamw


def trainable_labels(params: dict, parts: Sequence[str] = ALL_PARTS) -> dict:
  """"train" / "freeze" for every leaf, by top-level group."""
  unknown = set(parts) - set(TUNABLE_PARTS)
  if unknown:
    raise ValueError(f"unknown tunable parts {sorted(unknown)}; expected some of {list(TUNABLE_PARTS)}")
  groups = {group for part in parts for group in TUNABLE_PARTS[part]}
  return {name: jax.tree.map(lambda _, n=name: "train" if n in groups else "freeze", tree)
          for name, tree in params.items()}


def make_optimizer(params: dict, lr: float, num_steps: int, schedule: str = "cosine", warmup_ratio: float = 0.0,
                   weight_decay: float = 0.0, clip_norm: float | None = 1.0, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8, parts: Sequence[str] = ALL_PARTS, projector_lr: float | None = None,
                   vision_tower_lr: float | None = None) -> optax.GradientTransformation:
  """AdamW for the trainable parts of `params` (decay on matrices only, as transformers' Trainer skips biases and
  norms), nothing for the frozen ones.

  `projector_lr` / `vision_tower_lr` are LLaVA-NeXT's `mm_projector_lr` / `mm_vision_tower_lr`: that part's peak
  learning rate, on the same schedule (None: `lr`). AdamW's whole update, decay included, is proportional to the
  learning rate, so each part's update is the common one scaled by its rate over `lr`; clipping stays global.
  """
  decay_mask = jax.tree.map(lambda p: p.ndim >= 2, params)
  adamw = optax.adamw(learning_rate_schedule(lr, num_steps, schedule, warmup_ratio), b1=b1, b2=b2, eps=eps,
                      weight_decay=weight_decay, mask=decay_mask)
  chain = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
  train = optax.chain(*chain, adamw)
  optimizer = optax.multi_transform({"train": train, "freeze": optax.set_to_zero()}, trainable_labels(params, parts))
  rates = {"multi_modal_projector": projector_lr, "vision_tower": vision_tower_lr}
  if all(rate is None for rate in rates.values()):
    return optimizer
  scales = {name: jax.tree.map(lambda _, r=rates.get(name): 1.0 if r is None else r / lr, tree)
            for name, tree in params.items()}
  return optax.chain(optimizer, optax.stateless(lambda updates, _: jax.tree.map(jnp.multiply, updates, scales)))


def param_count(params: Any) -> int:
  return sum(x.size for x in jax.tree.leaves(params))
