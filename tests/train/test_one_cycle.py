"""`torch_adamw` is torch's AdamW (VideoDPO's optimiser, at a constant rate) and `one_cycle_adamw` is it stepped by
OneCycleLR: the same learning rate and β₁ at every step (rising, then falling, β₁ the other way) and the same
parameter updates."""

import numpy as np
import pytest
import torch

from ureward_jax.train.optim import one_cycle, one_cycle_adamw, torch_adamw

# VideoDPO's settings over a short run whose steps cover both phases.
MAX_LR, TOTAL, PCT, DIV, FINAL = 2e-5, 23, 0.2, 25.0, 10.0


def test_rates_momenta_and_updates_match_torch():
  weight = torch.nn.Parameter(torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
  optimizer = torch.optim.AdamW([weight], lr=MAX_LR)
  scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=MAX_LR, total_steps=TOTAL, pct_start=PCT,
                                                  anneal_strategy="cos", div_factor=DIV, final_div_factor=FINAL)
  lr, momentum = one_cycle(MAX_LR, TOTAL, PCT, DIV, FINAL)
  ours = one_cycle_adamw(MAX_LR, TOTAL, PCT, DIV, FINAL)
  params = weight.detach().numpy().astype(np.float32)
  state, start, moved = ours.init(params), weight.detach().numpy().copy(), np.zeros((5, 3))
  rates, rng = [], np.random.default_rng(1)
  for step in range(TOTAL):
    group = optimizer.param_groups[0]
    np.testing.assert_allclose(float(lr(step)), group["lr"], rtol=1e-5)
    np.testing.assert_allclose(float(momentum(step)), group["betas"][0], rtol=1e-6)
    rates.append(group["lr"])
    grad = rng.standard_normal((5, 3))
    weight.grad = torch.from_numpy(grad)
    optimizer.step()
    scheduler.step()
    updates, state = ours.update(grad.astype(np.float32), state, params)
    params = params + np.asarray(updates)
    moved += np.asarray(updates, np.float64)
  assert np.argmax(rates) == round(PCT * TOTAL) - 1 and rates[-1] == pytest.approx(MAX_LR / DIV / FINAL)
  torch_moved = weight.detach().numpy() - start
  np.testing.assert_allclose(moved, torch_moved, rtol=1e-4, atol=1e-4 * np.abs(torch_moved).max())


def test_constant_rate_updates_match_torch():
  weight = torch.nn.Parameter(torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))
  optimizer = torch.optim.AdamW([weight], lr=MAX_LR)
  ours = torch_adamw(MAX_LR)
  params = weight.detach().numpy().astype(np.float32)
  state, start, moved, rng = ours.init(params), weight.detach().numpy().copy(), np.zeros((5, 3)), np.random.default_rng(3)
  for _ in range(TOTAL):
    grad = rng.standard_normal((5, 3))
    weight.grad = torch.from_numpy(grad)
    optimizer.step()
    updates, state = ours.update(grad.astype(np.float32), state, params)
    params = params + np.asarray(updates)
    moved += np.asarray(updates, np.float64)
  torch_moved = weight.detach().numpy() - start
  np.testing.assert_allclose(moved, torch_moved, rtol=1e-4, atol=1e-4 * np.abs(torch_moved).max())


def test_too_few_steps_for_two_phases_is_refused():
  with pytest.raises(ValueError, match="leaves no room"):
    one_cycle(MAX_LR, 4, pct_start=0.2)
