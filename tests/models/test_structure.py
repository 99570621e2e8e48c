"""Structural promises of the model code: logical axes on every parameter, remat that changes nothing numerically
and frees activations, attention backends chosen by name."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ureward_jax.models.llava_onevision import LlavaOnevision, LlavaOnevisionConfig, init_params
from ureward_jax.models.qwen2 import Qwen2Config
from ureward_jax.models.siglip import SiglipVisionConfig
from ureward_jax.nn.attention import dot_product_attention
from ureward_jax.nn.spatial_transformer import Transformer2DModel

CONFIG = LlavaOnevisionConfig(vision=SiglipVisionConfig(24, 37, 2, 4, 28, 14),
                              text=Qwen2Config(128, 32, 64, 2, 4, 2, 8), image_token_id=126, video_token_id=127,
                              image_grid_pinpoints=((28, 28), (28, 56)))


def test_every_parameter_has_logical_axes():
  boxed = jax.eval_shape(lambda rng: init_params(CONFIG, rng), jax.random.key(0))
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  assert all(len(x.names) == x.value.ndim for x in leaves)
  stacked = [x for x in leaves if x.names[0] == "layers"]
  assert len(stacked) == 16 + 12   # every SigLIP and Qwen2 per-layer parameter is scanned


@pytest.mark.parametrize("policy", ["full", "save_qkv_proj"])
def test_remat_policies_give_identical_gradients(policy):
  params = nn.unbox(init_params(CONFIG, jax.random.key(1)))
  rng = np.random.RandomState(0)
  ids = jnp.asarray(rng.randint(0, 120, (2, 9)))
  pixels = jnp.asarray(rng.randn(1, 28, 28, 3), jnp.float32)
  src = jnp.asarray(np.repeat(np.arange(4)[:, None], 4, 1), jnp.int32)
  weight = jnp.asarray(np.tile([1.0, 0, 0, 0], (4, 1)), jnp.float32)
  dest = jnp.asarray([2, 3, 4, 5], jnp.int32)
  ones, positions = jnp.ones((2, 9), jnp.int32), jnp.broadcast_to(jnp.arange(9), (2, 9))

  def loss(p, module):
    logits = module.apply({"params": p}, ids, ones, positions, pixels, src, weight, dest)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

  grad = jax.jit(jax.grad(loss), static_argnums=1)
  plain = grad(params, LlavaOnevision(CONFIG))
  remat = grad(params, LlavaOnevision(CONFIG, remat=policy))
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_full_remat_frees_the_activations_of_unrolled_blocks():
  """The gradient through four unrolled transformer blocks, compiled for one TPU chip on this host (libtpu): with
  remat "full" the backward recomputes each block instead of keeping its activations. Were XLA free to merge the
  recomputation with the forward (no optimisation barrier, see `nn.remat.remat`), both would hold the same memory."""
  pytest.importorskip("libtpu", reason="the tpu extra (libtpu) is installed by `make test`")
  from ureward_jax.train.topology import topology_devices
  chip = jax.sharding.SingleDeviceSharding(topology_devices("v5e-4")[0])
  placed = lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=chip)  # noqa: E731
  x, context = placed((4, 32, 32, 64)), placed((4, 77, 32))

  def temporaries(policy):
    module = Transformer2DModel(heads=2, depth=4, groups=8, remat=policy, dtype=jnp.bfloat16)
    params = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 64)),
                                                jnp.zeros((1, 77, 32)))["params"])
    params = jax.tree.map(lambda p: placed(p.shape), params)
    grad = jax.grad(lambda p, x, c: module.apply({"params": p}, x, c).astype(jnp.float32).sum())
    return jax.jit(grad).lower(params, x, context).compile().memory_analysis().temp_size_in_bytes

  assert temporaries("full") < temporaries("none") / 4


def test_unknown_names_are_refused():
  q = jnp.zeros((1, 2, 4, 8))
  with pytest.raises(ValueError, match="unknown attention backend"):
    dot_product_attention(q, q, q, backend="flash9")
  with pytest.raises(ValueError, match="unknown remat policy"):
    init_params_with = LlavaOnevision(CONFIG, remat="sometimes")
    jax.eval_shape(lambda: init_params_with.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32),
                                                 jnp.ones((1, 2), jnp.int32), jnp.zeros((1, 2), jnp.int32)))


def test_grouped_query_attention_equals_repeated_kv():
  rng = np.random.RandomState(0)
  q = jnp.asarray(rng.randn(2, 5, 6, 4), jnp.float32)
  k, v = (jnp.asarray(rng.randn(2, 7, 2, 4), jnp.float32) for _ in range(2))
  mask = jnp.asarray(rng.rand(2, 1, 5, 7) > 0.3).at[..., 0].set(True)   # no fully masked row
  grouped = dot_product_attention(q, k, v, mask)
  repeated = dot_product_attention(q, jnp.repeat(k, 3, axis=2), jnp.repeat(v, 3, axis=2), mask)
  np.testing.assert_allclose(grouped, repeated, rtol=1e-6, atol=1e-6)
  logits = jnp.einsum("bthd,bshd->bhts", q, jnp.repeat(k, 3, axis=2)) / 2.0
  probs = jax.nn.softmax(jnp.where(mask, logits, -jnp.inf), axis=-1)
  np.testing.assert_allclose(grouped, jnp.einsum("bhts,bshd->bthd", probs, jnp.repeat(v, 3, axis=2)), rtol=1e-5,
                             atol=1e-6)


@pytest.mark.parametrize("with_mask", [True, False])
def test_long_queries_are_chunked_without_changing_the_result_or_its_gradient(with_mask):
  rng = np.random.RandomState(1)
  q = jnp.asarray(rng.randn(2, 301, 4, 8), jnp.float32)
  k, v = (jnp.asarray(rng.randn(2, 301, 2, 8), jnp.float32) for _ in range(2))
  from ureward_jax.nn.attention import causal_mask
  mask = causal_mask(jnp.arange(301), jnp.asarray(rng.rand(2, 301) > 0.2).at[:, 0].set(True)) if with_mask else None
  whole = dot_product_attention(q, k, v, mask, query_chunk=1024)
  chunked = dot_product_attention(q, k, v, mask, query_chunk=64)   # 5 chunks, the last one padded
  np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-6)
  grads = [jax.grad(lambda *a, c=c: jnp.sum(jnp.sin(dot_product_attention(*a, mask, query_chunk=c))),
                    argnums=(0, 1, 2))(q, k, v) for c in (1024, 64)]
  for whole_grad, chunked_grad in zip(*grads):
    np.testing.assert_allclose(chunked_grad, whole_grad, rtol=1e-5, atol=1e-6)
