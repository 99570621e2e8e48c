"""The video DPO config's optimiser is torch's AdamW, VideoDPO's: at a constant rate, and stepped by `one_cycle` as
torch's OneCycleLR steps it, the same learning rate and β₁ at every step (rising, then falling, β₁ the other way)
and the same parameter updates."""

import numpy as np
import pytest
import torch

from configs import dpo_t2v_turbo
from ureward_jax.train.optim import make_optimizer, one_cycle

# VideoDPO's settings over a short run whose steps cover both phases.
MAX_LR, TOTAL, PCT, DIV, FINAL = 2e-5, 23, 0.2, 25.0, 10.0


def run_both(ours, make_scheduler=None, seed=0, on_step=lambda step, group: None):
  """TOTAL steps of `ours` and of torch's AdamW (lr MAX_LR, under `make_scheduler(optimizer)` if given) on the same
  random gradients; (our summed updates, torch's movement), fp64. `on_step` sees torch's param group first."""
  weight = torch.nn.Parameter(torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
  optimizer = torch.optim.AdamW([weight], lr=MAX_LR)
  scheduler = make_scheduler(optimizer) if make_scheduler else None
  params = weight.detach().numpy().astype(np.float32)
  state, start, moved, rng = ours.init(params), weight.detach().numpy().copy(), np.zeros((5, 3)), np.random.default_rng(1)
  for step in range(TOTAL):
    on_step(step, optimizer.param_groups[0])
    grad = rng.standard_normal((5, 3))
    weight.grad = torch.from_numpy(grad)
    optimizer.step()
    if scheduler:
      scheduler.step()
    updates, state = ours.update(grad.astype(np.float32), state, params)
    params = params + np.asarray(updates)
    moved += np.asarray(updates, np.float64)
  return moved, weight.detach().numpy() - start


def video_optimizer(**overrides):
  """(optimiser, rate schedule) of configs/dpo_t2v_turbo.py for TOTAL steps at peak MAX_LR."""
  optim = dpo_t2v_turbo.get_config().optim
  optim.update(lr=MAX_LR, **overrides)
  return make_optimizer(optim, TOTAL, np.zeros((5, 3), np.float32))


def assert_same_movement(moved, torch_moved):
  np.testing.assert_allclose(moved, torch_moved, rtol=1e-4, atol=1e-4 * np.abs(torch_moved).max())


def test_one_cycle_rates_momenta_and_updates_match_torch():
  lr, momentum = one_cycle(MAX_LR, TOTAL, PCT, DIV, FINAL)
  optimizer, schedule = video_optimizer(schedule="onecycle", pct_start=PCT, div_factor=DIV, final_div_factor=FINAL)
  rates = []

  def check(step, group):
    np.testing.assert_allclose(float(lr(step)), group["lr"], rtol=1e-5)
    assert float(schedule(step)) == float(lr(step))
    np.testing.assert_allclose(float(momentum(step)), group["betas"][0], rtol=1e-6)
    rates.append(group["lr"])

  moved, torch_moved = run_both(
      optimizer,
      lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=MAX_LR, total_steps=TOTAL, pct_start=PCT,
                                                      anneal_strategy="cos", div_factor=DIV, final_div_factor=FINAL),
      on_step=check)
  assert np.argmax(rates) == round(PCT * TOTAL) - 1 and rates[-1] == pytest.approx(MAX_LR / DIV / FINAL)
  assert_same_movement(moved, torch_moved)


def test_constant_rate_updates_match_torch():
  assert_same_movement(*run_both(video_optimizer()[0], seed=2))


def test_too_few_steps_for_two_phases_is_refused():
  with pytest.raises(ValueError, match="leaves no room"):
    one_cycle(MAX_LR, 4, pct_start=0.2)
