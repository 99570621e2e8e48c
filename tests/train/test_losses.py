"""Chunked token log-probabilities and the SFT loss against plain formulas and PyTorch's cross-entropy."""

import jax
import jax.numpy as jnp
import numpy as np
import torch

from ureward_jax.train.losses import IGNORE, sft_loss, shift_labels, token_logprobs


def test_chunked_logprobs_equal_full_log_softmax_and_their_gradients():
  rng = np.random.RandomState(0)
  hidden = jnp.asarray(rng.randn(2, 37, 16), jnp.float32)
  kernel = jnp.asarray(rng.randn(16, 50) / 4, jnp.float32)
  targets = jnp.asarray(rng.randint(0, 50, (2, 37))).at[0, :5].set(IGNORE)

  def full(h, k):
    logp = jax.nn.log_softmax(h @ k, axis=-1)
    picked = jnp.take_along_axis(logp, jnp.maximum(targets, 0)[..., None], axis=-1)[..., 0]
    return jnp.where(targets >= 0, picked, 0.0)

  def chunked(h, k):
    return token_logprobs(lambda x: x @ k, h, targets, chunk=8)   # 5 chunks, the last one padded

  np.testing.assert_allclose(chunked(hidden, kernel), full(hidden, kernel), rtol=1e-5, atol=1e-6)
  g_full = jax.grad(lambda h, k: full(h, k).sum(), argnums=(0, 1))(hidden, kernel)
  g_chunk = jax.grad(lambda h, k: chunked(h, k).sum(), argnums=(0, 1))(hidden, kernel)
  for a, b in zip(g_chunk, g_full):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_sft_loss_equals_torch_cross_entropy_with_shifted_labels():
  rng = np.random.RandomState(1)
  logits = rng.randn(2, 12, 30).astype(np.float32)
  labels = rng.randint(0, 30, (2, 12))
  labels[:, :4] = IGNORE
  labels[1, 9:] = IGNORE
  targets = shift_labels(jnp.asarray(labels))
  logprobs = token_logprobs(lambda x: x, jnp.asarray(logits), targets, chunk=5)
  loss, count = sft_loss(logprobs, targets)
  ref = torch.nn.functional.cross_entropy(torch.tensor(logits[:, :-1]).reshape(-1, 30),
                                          torch.tensor(labels[:, 1:]).reshape(-1), ignore_index=IGNORE)
  np.testing.assert_allclose(float(loss), float(ref), rtol=1e-6)
  assert int(count) == int((labels[:, 1:] != IGNORE).sum())
