"""Direct preference optimisation for the vision-language policy (TRL's `DPOTrainer.dpo_loss`, as UnifiedReward's
vendored copy in `trl/trainer/dpo_trainer.py` computes it).

With Δ = (log π(y_c) − log π(y_r)) − (log π_ref(y_c) − log π_ref(y_r)), log-probabilities summed over the labelled
completion tokens (averaged for ipo):
  sigmoid  −(1 − ε)·log σ(βΔ) − ε·log σ(−βΔ)     (ε: label smoothing)
  hinge    relu(1 − βΔ)
  ipo      (Δ − 1/(2β))²
and the logged rewards β(log π − log π_ref) of the chosen and of the rejected answers.

The step takes batches of preference examples (`data.examples.make_preference_example`) whose rows alternate
chosen, rejected: both answers of a pair go through the model in the same forward pass, and a micro-batch with an
even row count per device keeps each pair on one device. The frozen reference enters either as parameters, an
argument of the step (not donated; a bf16 copy is enough), never closed over, or as log-probabilities computed
once before training (`reference_logps`, a batch entry per row), which saves its forward pass in every step.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from ureward_jax.models.llava_onevision import LlavaOnevision
from ureward_jax.train.losses import sft_loss
from ureward_jax.train.step import target_logprobs

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


def sequence_logps(module: LlavaOnevision, params: Any, batch: dict, logits_chunk: int = 1024,
                   average: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(log π of each row's labelled tokens (R,) fp32, token log-probabilities (R, T), targets (R, T)) of one
  micro-batch; `average` for ipo."""
  logprobs, targets = target_logprobs(module, params, batch, logits_chunk)
  return completion_logps(logprobs, targets, average), logprobs, targets


def make_dpo_step(module: LlavaOnevision, optimizer: optax.GradientTransformation, beta: float,
                  loss_type: str = "sigmoid", label_smoothing: float = 0.0, gamma: float = 0.0,
                  logits_chunk: int = 1024):
  """step(params, opt_state, batch, reference_params) → (params, opt_state, metrics); jit it donating the first two.

  batch: the SFT step's layout (A, R, ...) with rows alternating chosen, rejected; with a "reference_logps" entry
  (A, R) those are the reference's log-probabilities and `reference_params` may be None. Loss = mean DPO loss + gamma ·
  the SFT cross-entropy of the chosen answers (UnifiedReward: gamma 0). Metrics: loss, the mean chosen and rejected
  rewards, their margin, and the share of pairs whose chosen reward is the higher (preference accuracy).
  """
  dpo_loss(jnp.zeros(1), jnp.zeros(1), jnp.zeros(1), jnp.zeros(1), beta, label_smoothing, loss_type)   # checks

  def loss_fn(params, reference_params, mb):
    average = loss_type == "ipo"
    policy, logprobs, targets = sequence_logps(module, params, mb, logits_chunk, average)
    if "reference_logps" in mb:
      reference = mb["reference_logps"]
    else:
      reference = jax.lax.stop_gradient(sequence_logps(module, reference_params, mb, logits_chunk, average)[0])
    losses, chosen, rejected = dpo_loss(policy[0::2], policy[1::2], reference[0::2], reference[1::2], beta,
                                        label_smoothing, loss_type)
    loss = jnp.mean(losses)
    if gamma:
      loss = loss + gamma * sft_loss(logprobs[0::2], targets[0::2])[0]
    return loss, (jnp.mean(chosen), jnp.mean(rejected), jnp.mean(chosen > rejected))

  def step(params, opt_state, batch, reference_params):
    def micro(grads, mb):
      (loss, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(params, reference_params, mb)
      return jax.tree.map(jnp.add, grads, g), (loss, *aux)

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, (losses, chosen, rejected, accuracy) = jax.lax.scan(micro, zeros, batch)
    grads = jax.tree.map(lambda g: g / losses.shape[0], grads)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics = {"loss": jnp.mean(losses), "grad_norm": optax.tree.norm(grads),
               "rewards_chosen": jnp.mean(chosen), "rewards_rejected": jnp.mean(rejected),
               "rewards_margin": jnp.mean(chosen - rejected), "rewards_accuracy": jnp.mean(accuracy)}
    return params, opt_state, metrics

  return step

