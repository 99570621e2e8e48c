"""Sharding on 8 host CPU devices: the rule table, born-sharded params, and sharded == single-device outputs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import ureward_jax
from converters.llava_onevision import convert_folder
from tests import tiny_llava
from tests.models.test_structure import CONFIG
from tests.tiny_llava import image_inputs
from tests.train.settings import optim
from ureward_jax import parallel
from ureward_jax.models.llava_onevision import LlavaOnevision, init_params, param_shapes
from ureward_jax.train import trainable
from ureward_jax.train.optim import make_optimizer, matrices
from ureward_jax.train.tasks.reward_sft import TUNABLE_PARTS, tunable_mask


def test_make_mesh_sizes():
  assert dict(parallel.make_mesh(data=2, fsdp=-1, tensor=2).shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert dict(parallel.make_mesh().shape) == {"data": 1, "fsdp": 8, "tensor": 1}
  with pytest.raises(ValueError, match="do not split"):
    parallel.make_mesh(data=3, fsdp=-1)
  with pytest.raises(ValueError, match="needs 4 devices, 8 are available"):
    parallel.make_mesh(data=2, fsdp=2, tensor=1)
  with pytest.raises(ValueError, match="at most one -1"):
    parallel.make_mesh(data=-1, fsdp=-1)


def test_specs_follow_the_rules_and_skip_axes_that_do_not_divide():
  mesh = parallel.make_mesh(data=1, fsdp=2, tensor=4)
  assert parallel.logical_spec(("embed", "heads", "head_dim"), (32, 8, 16), mesh) == P("fsdp", "tensor", None)
  # 2 kv heads cannot be split 4 ways: kept whole on that axis.
  assert parallel.logical_spec(("embed", "kv_heads", "head_dim"), (32, 2, 16), mesh) == P("fsdp", None, None)
  assert parallel.logical_spec(("layers", "mlp", "embed"), (2, 37, 32), mesh) == P(None, None, "fsdp")
  assert parallel.logical_spec(("batch", "length"), (8, 5), parallel.make_mesh(data=2, fsdp=4)) == \
      P(("data", "fsdp"), None)
  with pytest.raises(ValueError, match="no rule"):
    parallel.logical_spec(("pixels",), (4,), mesh)


@pytest.fixture(scope="module")
def inputs():
  rng = np.random.RandomState(0)
  return dict(input_ids=jnp.asarray(rng.randint(0, 120, (4, 9))), attention_mask=jnp.ones((4, 9), jnp.int32),
              positions=jnp.broadcast_to(jnp.arange(9), (4, 9)),
              pixels=jnp.asarray(rng.randn(3, 28, 28, 3), jnp.float32),
              visual_src=jnp.asarray(np.repeat(np.arange(4)[:, None], 4, 1), jnp.int32),
              visual_weight=jnp.asarray(np.tile([1.0, 0, 0, 0], (4, 1)), jnp.float32),
              visual_dest=jnp.asarray([2, 3, 4, 5], jnp.int32))


@pytest.mark.parametrize("shape", [dict(data=2, fsdp=4, tensor=1), dict(data=2, fsdp=2, tensor=2),
                                   dict(data=1, fsdp=1, tensor=8)], ids=["fsdp4xdata2", "fsdp2xdata2xtensor2",
                                                                       "tensor8"])
def test_sharded_forward_equals_single_device(shape, inputs):
  mesh = parallel.make_mesh(**shape)
  params, _ = parallel.init_sharded(lambda r: init_params(CONFIG, r), jax.random.key(0), mesh)
  module = LlavaOnevision(CONFIG)
  single = module.apply({"params": jax.device_get(params)}, **inputs)
  with parallel.activation_rules(mesh):
    sharded = jax.jit(module.apply)({"params": params}, **inputs)
  assert np.max(np.abs(np.asarray(sharded) - np.asarray(single))) <= 1e-5 * np.max(np.abs(single))


def test_params_are_born_sharded():
  mesh = parallel.make_mesh(data=1, fsdp=4, tensor=2)
  params, shardings = parallel.init_sharded(lambda r: init_params(CONFIG, r), jax.random.key(1), mesh)
  kernel = params["language_model"]["layers"]["mlp"]["up_proj"]["kernel"]   # (layers, embed, mlp)
  assert kernel.sharding.spec == P(None, "fsdp", "tensor")
  assert kernel.addressable_shards[0].data.shape == (2, 32 // 4, 64 // 2)
  # Only norms, biases and the odd-sized pieces of this tiny model stay whole.
  assert parallel.replicated_fraction(params) < 0.02
  host = jax.device_get(params)
  placed = parallel.place(host, shardings)
  assert placed["image_newline"].sharding == shardings["image_newline"]


@pytest.mark.parametrize("parts", [("mm_language_model",), tuple(TUNABLE_PARTS)], ids=["language_model", "all"])
def test_optimizer_state_is_sharded_like_the_params(parts):
  mesh = parallel.make_mesh(data=1, fsdp=4, tensor=2)
  shardings = parallel.param_shardings(param_shapes(CONFIG, boxed=True), mesh)
  params = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), param_shapes(CONFIG),
                        shardings)
  mask = tunable_mask(params, parts)
  params, shardings = trainable.split(params, mask)[0], trainable.split(shardings, mask)[0]   # the trained part
  optimizer = make_optimizer(optim(lr=1e-3), 10, params, decay_mask=matrices)[0]
  opt_shardings = parallel.optimizer_shardings(optimizer, params, shardings, mesh)
  state = jax.jit(optimizer.init, out_shardings=opt_shardings)(parallel.place(
      jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), params), shardings))
  adam = state[1][0]   # clip, then AdamW's (ScaleByAdamState, ...)
  up = ("language_model", "layers", "mlp", "up_proj", "kernel")
  pick = lambda tree: functools.reduce(lambda t, k: t[k], up, tree)
  assert pick(adam.mu).sharding == pick(adam.nu).sharding == pick(shardings)
  # Left to XLA these zeros come out whole on every device; here only what the params leave whole stays whole.
  assert parallel.replicated_fraction(state) < 0.02


def test_activation_constraints_only_inside_the_rules_context(inputs):
  mesh = parallel.make_mesh(data=2, fsdp=4)
  params = param_shapes(CONFIG)
  module = LlavaOnevision(CONFIG)
  plain = jax.jit(module.apply).lower({"params": params}, **inputs).as_text()
  with parallel.activation_rules(mesh):
    constrained = jax.jit(module.apply).lower({"params": params}, **inputs).as_text()
  assert "sharding_constraint" not in plain and constrained.count("sharding_constraint") >= 3


def test_load_onto_a_mesh_computes_the_same(pair, tmp_path):
  """A converted checkpoint loaded sharded (fsdp 4 × tensor 2) gives the same logits and greedy tokens."""
  hf, single = pair
  convert_folder(tiny_llava.save_hf(hf, tmp_path / "hf"), tmp_path / "ours", "float32")
  sharded = ureward_jax.load(tmp_path / "ours", mesh=parallel.make_mesh(data=1, fsdp=4, tensor=2))
  kernel = sharded.params["language_model"]["layers"]["mlp"]["up_proj"]["kernel"]
  assert kernel.sharding.spec == P(None, "fsdp", "tensor")
  inputs = image_inputs(hf, [(150, 220)], seed=9)
  expected = single.forward(**inputs)
  assert np.max(np.abs(sharded.forward(**inputs) - expected)) <= 1e-5 * np.max(np.abs(expected))
  np.testing.assert_array_equal(sharded.generate(**inputs, max_new_tokens=8), single.generate(**inputs,
                                                                                               max_new_tokens=8))
