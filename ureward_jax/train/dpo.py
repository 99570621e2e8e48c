"""Direct preference optimisation for the vision-language policy (TRL's `DPOTrainer.dpo_loss`, as UnifiedReward's
vendored copy computes it; `../shared/reference/models.md` §7.1).

With Δ = (log π(y_c) − log π(y_r)) − (log π_ref(y_c) − log π_ref(y_r)), log-probabilities summed over the labelled
completion tokens (averaged for ipo):
  sigmoid  −(1 − ε)·log σ(βΔ) − ε·log σ(−βΔ)     (ε: label smoothing)
  hinge    relu(1 − βΔ)
  ipo      (Δ − 1/(2β))²
and the logged rewards β(log π − log π_ref) of the chosen and of the rejected answers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

LOSS_TYPES = ("sigmoid", "hinge", "ipo")


def dpo_loss(policy_chosen_logps: jax.Array, policy_rejected_logps: jax.Array, reference_chosen_logps: jax.Array,
             reference_rejected_logps: jax.Array, beta: float, label_smoothing: float = 0.0,
             loss_type: str = "sigmoid") -> tuple[jax.Array, jax.Array, jax.Array]:
  """(losses (B,), chosen_rewards (B,), rejected_rewards (B,)) from log-probabilities (B,), as TRL defines them.

  The rewards carry no gradient.
  """
  if loss_type not in LOSS_TYPES:
    raise ValueError(f"unknown DPO loss type {loss_type!r}; expected one of {LOSS_TYPES}")
  if beta <= 0 or not 0 <= label_smoothing < 0.5:
    raise ValueError(f"need beta > 0 and 0 <= label_smoothing < 0.5, got {beta}, {label_smoothing}")
  logits = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
  if loss_type == "sigmoid":
    losses = (-jax.nn.log_sigmoid(beta * logits) * (1 - label_smoothing)
              - jax.nn.log_sigmoid(-beta * logits) * label_smoothing)
  elif loss_type == "hinge":
    losses = jax.nn.relu(1 - beta * logits)
  else:
    losses = (logits - 1 / (2 * beta)) ** 2
  chosen_rewards = jax.lax.stop_gradient(beta * (policy_chosen_logps - reference_chosen_logps))
  rejected_rewards = jax.lax.stop_gradient(beta * (policy_rejected_logps - reference_rejected_logps))
  return losses, chosen_rewards, rejected_rewards


def completion_logps(logprobs: jax.Array, targets: jax.Array, average: bool = False) -> jax.Array:
  """Per sample, the sum (or, for ipo, the mean) of the token log-probabilities (B, T) whose target is labelled."""
  counted = targets >= 0
  total = jnp.sum(jnp.where(counted, logprobs, 0.0), axis=-1)
  return total / jnp.maximum(jnp.sum(counted, axis=-1), 1) if average else total
