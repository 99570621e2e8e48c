"""The reward SFT step (its loss through the one accumulating step): learns, accumulates gradients as averaged
micro-batches, freezes parts, shards exactly."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import transformers

from tests.models.test_structure import CONFIG
from tests.train.settings import optim
from ureward_jax import parallel
from ureward_jax.models.llava_onevision import LlavaOnevision, init_params
from ureward_jax.processing.feature_layout import VisualItem, build_layout
from ureward_jax.runners.llava import layout_config
from ureward_jax.train import trainable
from ureward_jax.train.accumulate import accumulating_step
from ureward_jax.train.losses import IGNORE
from ureward_jax.train.optim import learning_rate_schedule, make_optimizer, matrices
from ureward_jax.train.tasks.reward_sft import completion_logprobs, sft_loss_fn, tunable_mask

TOKENS = 5  # visual tokens per sample: the 2×2 patch features of a 28-px image and a newline


def make_batch(seed, accum=2, batch=4, length=12):
  """Micro-batches of one image + text each; labels on the second half, as an assistant turn would be."""
  rng = np.random.RandomState(seed)
  ids = rng.randint(0, 120, (accum, batch, length))
  labels = np.where(np.arange(length) >= length // 2, ids, IGNORE)
  ids[:, :, 1:1 + TOKENS] = CONFIG.image_token_id
  # Each sample's own layout: one image's features, then three padding rows whose destination is past the sequence.
  src, weight = build_layout([VisualItem("single")], layout_config(CONFIG))
  src = np.concatenate([src, np.zeros((3, 4), np.int32)])
  weight = np.concatenate([weight, np.zeros((3, 4), np.float32)])
  dest = np.concatenate([1 + np.arange(TOKENS), np.full(3, length)])
  src, weight, dest = (np.tile(x, (accum, batch) + (1,) * x.ndim) for x in (src, weight, dest))
  return dict(input_ids=jnp.asarray(ids), labels=jnp.asarray(labels), attention_mask=jnp.ones_like(ids),
              positions=jnp.broadcast_to(jnp.arange(length), ids.shape),
              pixels=jnp.asarray(rng.randn(accum, batch, 1, 28, 28, 3), jnp.float32),
              visual_src=jnp.asarray(src, jnp.int32), visual_weight=jnp.asarray(weight),
              visual_dest=jnp.asarray(dest, jnp.int32))


def sft_step(module, optimizer, logits_chunk=1024, mask=None):
  """step(params, opt_state, batch) of reward SFT, as the runner builds it (no reference, an unused key)."""
  step = accumulating_step(sft_loss_fn(module, logits_chunk), optimizer, mask, summed=("tokens",))
  return lambda p, o, b: step(p, o, b, None, jax.random.key(0))


def adamw(params, mask=None, rates={}, **overrides):
  """The reward tasks' AdamW over the trained part of `params`."""
  return make_optimizer(optim(**overrides), 10, trainable.split(params, mask)[0], decay_mask=matrices,
                        part_rates=rates)[0]


@pytest.fixture(scope="module")
def params():
  return nn.unbox(init_params(CONFIG, jax.random.key(0)))


def test_schedule_equals_transformers_cosine_with_warmup():
  import torch
  steps, warmup_ratio, lr = 100, 0.03, 2.5e-6
  opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
  ref = transformers.get_cosine_schedule_with_warmup(opt, int(np.ceil(warmup_ratio * steps)), steps)
  ours = learning_rate_schedule(lr, steps, "cosine", warmup_ratio)
  expected = []
  for _ in range(steps):
    expected.append(opt.param_groups[0]["lr"])
    opt.step()
    ref.step()
  np.testing.assert_allclose([float(ours(i)) for i in range(steps)], expected, rtol=1e-5, atol=1e-12)


def test_loss_falls(params):
  module = LlavaOnevision(CONFIG)
  optimizer = make_optimizer(optim(warmup_ratio=0.1), 40, params, decay_mask=matrices)[0]
  step = jax.jit(sft_step(module, optimizer, logits_chunk=5), donate_argnums=(0, 1))
  p, state = jax.tree.map(jnp.copy, params), optimizer.init(params)
  batch = make_batch(0)
  losses = []
  for _ in range(40):
    p, state, metrics = step(p, state, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.5 * losses[0]
  assert int(metrics["tokens"]) == 2 * 4 * 6   # labels on positions 6..11, predicted from positions 5..10


def test_accumulation_averages_micro_batch_gradients(params):
  module = LlavaOnevision(CONFIG)
  batch = make_batch(1)
  sgd = optax.sgd(1.0)
  step = jax.jit(sft_step(module, sgd, logits_chunk=7))
  new, _, _ = step(params, sgd.init(params), batch)
  loss_fn = sft_loss_fn(module, 7)
  grad = jax.jit(jax.grad(lambda p, mb: loss_fn(p, None, mb, None)[0]))
  grads = [grad(params, jax.tree.map(lambda x, i=i: x[i], batch)) for i in range(2)]
  expected = jax.tree.map(lambda p, a, b: p - 0.5 * (a + b), params, *grads)
  for got, want in zip(jax.tree.leaves(new), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_frozen_parts_do_not_move(params):
  module = LlavaOnevision(CONFIG)
  mask = tunable_mask(params, ("mm_language_model",))
  optimizer = adamw(params, mask)
  step = jax.jit(sft_step(module, optimizer, mask=mask))
  new, _, _ = step(params, optimizer.init(trainable.split(params, mask)[0]), make_batch(2))
  same = lambda tree_a, tree_b: all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(tree_a),
                                                                        jax.tree.leaves(tree_b)))
  assert same(new["vision_tower"], params["vision_tower"])
  assert same(new["multi_modal_projector"], params["multi_modal_projector"])
  assert not same(new["language_model"], params["language_model"])
  assert not np.array_equal(new["image_newline"], params["image_newline"])
  with pytest.raises(ValueError, match="unknown train.tunable_parts"):
    tunable_mask(params, ("mm_everything",))


def test_part_learning_rates_scale_that_parts_update(params):
  module = LlavaOnevision(CONFIG)
  batch = make_batch(4)
  moved = {}
  for rates in ({}, dict(multi_modal_projector=1e-3, vision_tower=2.5e-3)):
    optimizer = adamw(params, rates=rates, weight_decay=0.1)
    new, _, _ = jax.jit(sft_step(module, optimizer))(params, optimizer.init(params), batch)
    moved[bool(rates)] = jax.tree.map(lambda a, b: np.asarray(a - b), new, params)
  for part, ratio in (("multi_modal_projector", 0.1), ("vision_tower", 0.25), ("language_model", 1.0)):
    for scaled, plain in zip(jax.tree.leaves(moved[True][part]), jax.tree.leaves(moved[False][part])):
      np.testing.assert_allclose(scaled, ratio * plain, rtol=1e-5, atol=2e-7)   # fp32 rounding of p + update
  assert any(np.abs(x).max() > 0 for x in jax.tree.leaves(moved[True]["vision_tower"]))


@pytest.mark.parametrize("shape", [dict(data=2, fsdp=4, tensor=1), dict(data=2, fsdp=2, tensor=2)],
                         ids=["fsdp4xdata2", "fsdp2xdata2xtensor2"])
def test_sharded_step_equals_single_device_step(params, shape):
  module = LlavaOnevision(CONFIG)
  # AdamW with eps = 1: on the first step Adam's g / (|g| + eps) would turn float noise in near-zero gradients into
  # full-size updates; a large eps keeps the update proportional to the gradient, so the comparison is well posed.
  optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3, eps=1.0))
  step = sft_step(module, optimizer, logits_chunk=5)
  batch = make_batch(3, batch=8)   # one sample per data × fsdp shard
  single, _, single_metrics = jax.jit(step)(params, optimizer.init(params), batch)

  mesh = parallel.make_mesh(**shape)
  shardings = parallel.param_shardings(jax.eval_shape(lambda r: init_params(CONFIG, r), jax.random.key(0)), mesh)
  sharded_params = parallel.place(params, shardings)
  batch = jax.device_put(batch, parallel.data_sharding(mesh, batch_axis=1))
  with parallel.activation_rules(mesh):
    state = jax.jit(optimizer.init)(sharded_params)
    new, _, metrics = jax.jit(step, out_shardings=(shardings, None, None))(sharded_params, state, batch)
  assert new["language_model"]["layers"]["mlp"]["up_proj"]["kernel"].sharding == \
      shardings["language_model"]["layers"]["mlp"]["up_proj"]["kernel"]
  np.testing.assert_allclose(metrics["loss"], single_metrics["loss"], rtol=1e-6)
  for got, want in zip(jax.tree.leaves(new), jax.tree.leaves(single)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_completion_logprobs_sum_the_labelled_tokens(params):
  module = LlavaOnevision(CONFIG)
  batch = jax.tree.map(lambda x: x[0], make_batch(4))
  got = completion_logprobs(module, params, batch, logits_chunk=5)
  logits = module.apply({"params": params}, batch["input_ids"], batch["attention_mask"], batch["positions"],
                        batch["pixels"], batch["visual_src"], batch["visual_weight"], batch["visual_dest"])
  logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  targets = batch["labels"][:, 1:]
  picked = jnp.take_along_axis(logp, jnp.maximum(targets, 0)[..., None], axis=-1)[..., 0]
  want = jnp.sum(jnp.where(targets != IGNORE, picked, 0.0), axis=1)
  np.testing.assert_allclose(got, want, rtol=1e-5)
