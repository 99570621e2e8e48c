"""Direct preference optimisation of the vision-language policy (TRL's `DPOTrainer.dpo_loss`, as UnifiedReward's
vendored copy in `trl/trainer/dpo_trainer.py` computes it).

With Δ = (log π(y_c) − log π(y_r)) − (log π_ref(y_c) − log π_ref(y_r)), log-probabilities summed over the labelled
completion tokens (averaged for ipo):
  sigmoid  −(1 − ε)·log σ(βΔ) − ε·log σ(−βΔ)     (ε: label smoothing)
  hinge    relu(1 − βΔ)
  ipo      (Δ − 1/(2β))²
and the logged rewards β(log π − log π_ref) of the chosen and of the rejected answers.

Batches are reward SFT's layout with rows alternating chosen, rejected (`data.examples.make_preference_example`):
both answers of a pair go through the model in the same forward pass, and a micro-batch with an even row count per
device keeps each pair on one device. The frozen reference is the starting model, in `dpo.reference_dtype`: run in
every step (`dpo.reference = "step"`), or once over the data before training (`"precomputed"`, kept in
workdir/reference_logps.npy), which saves its forward pass in every step.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from ureward_jax import parallel
from ureward_jax.data.pipeline import MODEL_KEYS, BuildExample, to_device
from ureward_jax.errors import UserError
from ureward_jax.models.llava_onevision import LlavaOnevision
from ureward_jax.train import params
from ureward_jax.train.losses import sft_loss
from ureward_jax.train.tasks.reward_sft import RewardSFT, target_logprobs

LOSS_TYPES = ("sigmoid", "hinge", "ipo")
REFERENCES = ("step", "precomputed")


def dpo_loss(policy_chosen_logps: jax.Array, policy_rejected_logps: jax.Array, reference_chosen_logps: jax.Array,
             reference_rejected_logps: jax.Array, beta: float, label_smoothing: float = 0.0,
             loss_type: str = "sigmoid") -> tuple[jax.Array, jax.Array, jax.Array]:
  """(losses (B,), chosen_rewards (B,), rejected_rewards (B,)) from log-probabilities (B,), as TRL defines them.

  The rewards carry no gradient.
  """
  check_settings(beta, label_smoothing, loss_type)
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


def check_settings(beta: float, label_smoothing: float, loss_type: str) -> None:
  if loss_type not in LOSS_TYPES:
    raise UserError(f"unknown DPO loss type {loss_type!r}; expected one of {LOSS_TYPES}")
  if beta <= 0 or not 0 <= label_smoothing < 0.5:
    raise UserError(f"need beta > 0 and 0 <= label_smoothing < 0.5, got {beta}, {label_smoothing}")


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


def dpo_loss_fn(module: LlavaOnevision, beta: float, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
                gamma: float = 0.0, logits_chunk: int = 1024):
  """loss_fn(params, reference_params, micro_batch, rng) → (loss, metrics) of one micro-batch (rows alternating
  chosen, rejected). With a "reference_logps" entry (R,) those are the reference's log-probabilities and
  `reference_params` may be None. Loss = mean DPO loss + gamma · the SFT cross-entropy of the chosen answers
  (UnifiedReward: gamma 0). Metrics: the mean chosen and rejected rewards, their margin, and the share of pairs whose
  chosen reward is the higher (preference accuracy)."""
  check_settings(beta, label_smoothing, loss_type)
  average = loss_type == "ipo"

  def loss_fn(params, reference_params, mb, rng):
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
    return loss, {"rewards_chosen": jnp.mean(chosen), "rewards_rejected": jnp.mean(rejected),
                  "rewards_margin": jnp.mean(chosen - rejected), "rewards_accuracy": jnp.mean(chosen > rejected)}
  return loss_fn


class VlmDPO(RewardSFT):
  rows_per_sample = 2

  @classmethod
  def config_keys(cls, config):
    keys = super().config_keys(config)
    return keys | {"": ("dpo",), "dpo": ("beta", "loss_type", "label_smoothing", "gamma", "reference",
                                         "reference_dtype")}

  def __init__(self, config, mesh, abstract=False):
    super().__init__(config, mesh, abstract)
    if config.dpo.reference not in REFERENCES:
      raise UserError(f"dpo.reference {config.dpo.reference!r} is not one of {REFERENCES}")
    self.precomputed = config.dpo.reference == "precomputed"
    self.table = None
    # A step running the reference forward does 8 instead of 6 FLOPs per parameter and token.
    self.flops_factor = 1.0 if self.precomputed else 4 / 3

  def reference(self, params_, shardings):
    """The starting model in `dpo.reference_dtype` (never the resumed one); None when its log-probabilities are
    precomputed: they are then computed here, before any resume, and kept in the workdir."""
    reference = params.cast(params_, self.config.dpo.reference_dtype, shardings)
    if not self.precomputed:
      return reference
    if not self.abstract:
      self.table = self._reference_table(reference)
    return None

  def loss_fn(self):
    d = self.config.dpo
    return dpo_loss_fn(self.module, d.beta, d.loss_type, d.label_smoothing, d.gamma, self.config.train.logits_chunk)

  def step_inputs(self):
    shapes = super().step_inputs()
    if self.precomputed:
      for inputs in shapes.values():
        inputs["reference_logps"] = jax.ShapeDtypeStruct(inputs["input_ids"].shape[:2], jnp.float32,
                                                         sharding=self.rows)
    return shapes

  def stream(self, start):
    batches = super().stream(start)
    if not self.precomputed:
      return batches
    return (b | {"reference_logps": self.table[b["index"], np.arange(len(b["index"])) % 2]} for b in batches)

  def _reference_table(self, reference) -> np.ndarray:
    """(N, 2) fp32: the reference's log-probabilities of every record's chosen and rejected answer, computed in one
    pass over the records in order (bad records: 0) and kept in workdir/reference_logps.npy for resumed runs."""
    path = os.path.join(self.config.workdir, "reference_logps.npy")
    records = self.records
    if os.path.exists(path):
      table = np.load(path)
      if table.shape != (len(records), 2):
        raise UserError(f"{path} holds {table.shape[0]} records' reference log-probabilities but the data has "
                        f"{len(records)}; delete it to compute them again")
      return table
    if jax.process_count() > 1:
      raise UserError("precomputed reference log-probabilities are computed on one host; run the pass "
                      "single-host first (it writes reference_logps.npy) or use dpo.reference='step'")
    build = BuildExample(records, self.example, self.tokenizer_file, preference=True)
    average, chunk = self.config.dpo.loss_type == "ipo", self.config.train.logits_chunk
    logps = jax.jit(lambda p, b: sequence_logps(self.module, p, {k: v[0] for k, v in b.items()}, chunk, average)[0])
    pairs = self.micro // 2
    table = np.zeros((len(records), 2), np.float32)
    with parallel.activation_rules(self.mesh):
      for start in tqdm(range(0, len(records), pairs), desc="reference log-probabilities", unit="batch",
                        total=-(-len(records) // pairs)):
        indices = [min(i, len(records) - 1) for i in range(start, start + pairs)]   # the last batch padded
        examples = [build.map(i) for i in indices]
        batch = {k: np.concatenate([e[k] for e in examples]) for k in MODEL_KEYS}
        values = np.asarray(logps(reference, to_device(batch, 1, self.rows))).reshape(-1, 2)
        count = min(pairs, len(records) - start)
        table[start:start + count] = values[:count]
    os.makedirs(self.config.workdir, exist_ok=True)   # the config is checked by now: the run may write
    np.save(path + ".partial.npy", table)   # whole or not at all: a resumed run trusts what it finds
    os.replace(path + ".partial.npy", path)
    return table
