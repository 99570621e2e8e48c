"""Every optimiser and learning-rate schedule of the training tasks, built from a config's `optim` section.

- `adamw`: AdamW with optional global-norm clipping. Which parameters decay is the task's choice: transformers'
  Trainer skips biases and norms (the reward model and VLM DPO), torch's `AdamW(params)` decays every parameter (the
  diffusion runs).
- `adafactor`: transformers' `Adafactor(scale_parameter=False, relative_step=False, warmup_init=False)`, DiffusionDPO's
  choice for SDXL.
- Schedules: `cosine`, `linear` (the Trainer's: linear warm-up over ceil(warmup_ratio · steps), then decay to 0),
  `constant` (after the same warm-up) and `onecycle` (torch's `OneCycleLR`, which also cycles Adam's β₁).

The optimiser sees the trained subtree alone (`trainable.split`): a frozen parameter has no gradient, no update and no
state.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ureward_jax.errors import UserError

NAMES = ("adamw", "adafactor")
SCHEDULES = ("cosine", "linear", "constant", "onecycle")
# The keys of `optim` every config declares, and those that only one optimiser or schedule reads.
KEYS = ("name", "lr", "schedule", "warmup_ratio", "weight_decay", "clip_norm")
EXTRA_KEYS = {"adafactor": ("clip_threshold",), "onecycle": ("pct_start", "div_factor", "final_div_factor")}


def config_keys(optim: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The `optim` keys a config with this optimiser and schedule must declare (and may not exceed)."""
  if optim.name not in NAMES:
    raise UserError(f"optim.name {optim.name!r} is not one of {NAMES}")
  if optim.schedule not in SCHEDULES:
    raise UserError(f"optim.schedule {optim.schedule!r} is not one of {SCHEDULES}")
  return KEYS + EXTRA_KEYS.get(optim.name, ()) + EXTRA_KEYS.get(optim.schedule, ())


def learning_rate_schedule(lr: float, num_steps: int, schedule: str = "cosine", warmup_ratio: float = 0.0):
  warmup = math.ceil(warmup_ratio * num_steps)
  if schedule == "constant":
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])
  if schedule == "cosine":
    decay = optax.cosine_decay_schedule(lr, max(num_steps - warmup, 1))
  elif schedule == "linear":
    decay = optax.linear_schedule(lr, 0.0, max(num_steps - warmup, 1))
  else:
    raise UserError(f"unknown schedule {schedule!r}; expected cosine, linear or constant")
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def one_cycle(max_lr: float, total_steps: int, pct_start: float = 0.3, div_factor: float = 25.0,
              final_div_factor: float = 1e4, base_momentum: float = 0.85, max_momentum: float = 0.95):
  """(learning-rate schedule, momentum schedule) of torch's `OneCycleLR` (two phases, cosine annealing, momentum
  cycled), by optimiser step. The rate rises from max_lr / div_factor to max_lr by step pct_start · total − 1, then
  falls to max_lr / (div_factor · final_div_factor) at step total − 1; the momentum (Adam's β₁) moves the other way,
  max → base → max. Each phase is annealed by end + (start − end)(1 + cos(π · pct)) / 2 of its share pct."""
  peak_step, last_step = float(pct_start * total_steps) - 1, total_steps - 1
  if not 0 < peak_step < last_step:
    raise UserError(f"one-cycle schedule: pct_start {pct_start} of {total_steps} steps leaves no room for both "
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


def adafactor(learning_rate, weight_decay: float = 1e-2, clip_threshold: float = 1.0) -> optax.GradientTransformation:
  """transformers' `Adafactor(scale_parameter=False, relative_step=False, warmup_init=False)`: factored second moments
  (β₂ₜ = 1 − t^−0.8, ε 1e-30), each update clipped to RMS ≤ `clip_threshold`, decoupled weight decay
  p ← p − lr·wd·p, no momentum. Matrices are factored over their two largest axes (transformers: the last two of the
  PyTorch layout), which differs for conv kernels only."""
  return optax.chain(optax.scale_by_factored_rms(decay_rate=0.8, epsilon=1e-30, min_dim_size_to_factor=1),
                     optax.clip_by_block_rms(clip_threshold),
                     optax.add_decayed_weights(weight_decay),
                     optax.scale_by_learning_rate(learning_rate))


def make_optimizer(optim: ml_collections.ConfigDict, num_steps: int, params: Any, peak_lr: float | None = None,
                   decay_mask: Callable[[Any], Any] | None = None, part_rates: Mapping[str, float | None] | None = None
                   ) -> tuple[optax.GradientTransformation, Callable[[int], Any]]:
  """(optimiser of the trained `params`, its learning-rate schedule by step) from the `optim` section.

  peak_lr: the peak rate when the task derives it from `optim.lr` (DiffusionDPO's scaling by the batch); default
  `optim.lr`. decay_mask: params → tree of bools, the leaves AdamW decays (None: all, as torch's AdamW). part_rates:
  {top-level parameter group: its own peak rate} on the same schedule (LLaVA-NeXT's `mm_projector_lr`,
  `mm_vision_tower_lr`; None: the common rate). The optimiser's whole update, decay included, is proportional to the
  rate, so a group's update is the common one scaled by its rate over the peak; clipping stays global.
  """
  config_keys(optim)
  lr = optim.lr if peak_lr is None else peak_lr
  if optim.schedule == "onecycle":
    learning_rate, b1 = one_cycle(lr, num_steps, optim.pct_start, optim.div_factor, optim.final_div_factor)
  else:
    learning_rate, b1 = learning_rate_schedule(lr, num_steps, optim.schedule, optim.warmup_ratio), 0.9
  if optim.name == "adafactor":
    update = adafactor(learning_rate, optim.weight_decay, optim.clip_threshold)
  else:
    mask = None if decay_mask is None else decay_mask(params)
    # A scheduled β₁ (torch's OneCycleLR writes it into Adam's betas) must live in the state to change by step.
    adamw = optax.inject_hyperparams(optax.adamw) if callable(b1) else optax.adamw
    update = adamw(learning_rate=learning_rate, b1=b1, b2=0.999, eps=1e-8, weight_decay=optim.weight_decay,
                   mask=mask)
  chain = [optax.clip_by_global_norm(optim.clip_norm)] if optim.clip_norm else []
  rates = {name: rate for name, rate in (part_rates or {}).items() if rate is not None and name in params}
  if rates:
    scales = {name: jax.tree.map(lambda _, r=rates.get(name): 1.0 if r is None else r / lr, tree)
              for name, tree in params.items()}
    chain.append(update)
    update = optax.stateless(lambda updates, _: jax.tree.map(jnp.multiply, updates, scales))
  return optax.chain(*chain, update), learning_rate


def matrices(params: Any) -> Any:
  """True for every leaf with at least two axes: what transformers' Trainer decays (not biases, not norms)."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def param_count(params: Any) -> int:
  return sum(x.size for x in jax.tree.leaves(params))
