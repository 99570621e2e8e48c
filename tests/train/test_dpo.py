"""DPO: the loss equals an independent numpy statement of TRL's formulas; log-probabilities chunked or not agree."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ureward_jax.runners.llava import image_processor
from ureward_jax.train.losses import token_logprobs
from ureward_jax.train.tasks.vlm_dpo import completion_logps, dpo_loss


def log_sigmoid(x):
  return -np.logaddexp(0.0, -x)


def trl_reference(pc, pr, rc, rr, beta, smoothing, loss_type):
  logits = (pc - pr) - (rc - rr)
  if loss_type == "sigmoid":
    losses = -log_sigmoid(beta * logits) * (1 - smoothing) - log_sigmoid(-beta * logits) * smoothing
  elif loss_type == "hinge":
    losses = np.maximum(0.0, 1 - beta * logits)
  else:
    losses = (logits - 1 / (2 * beta)) ** 2
  return losses, beta * (pc - rc), beta * (pr - rr)


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
@pytest.mark.parametrize("beta, smoothing", [(0.1, 0.0), (0.5, 0.2), (2.0, 0.0)])
def test_dpo_loss_equals_trl(loss_type, beta, smoothing):
  rng = np.random.default_rng(0)
  logps = [rng.normal(-40, 15, 64) for _ in range(4)]
  ours = dpo_loss(*[jnp.asarray(x, jnp.float32) for x in logps], beta=beta, label_smoothing=smoothing,
                  loss_type=loss_type)
  want = trl_reference(*logps, beta, smoothing if loss_type == "sigmoid" else 0.0, loss_type)
  for got, ref in zip(ours, want):
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-5)


def test_rewards_carry_no_gradient_and_the_loss_does():
  def total(pc):
    losses, chosen, rejected = dpo_loss(pc, jnp.zeros(3), jnp.zeros(3), jnp.zeros(3), beta=0.1)
    return jnp.sum(losses), (chosen, rejected)

  grad = jax.grad(lambda pc: total(pc)[0])(jnp.ones(3))
  assert np.all(np.asarray(grad) < 0)   # raising the chosen log-probability lowers the loss
  np.testing.assert_array_equal(jax.grad(lambda pc: jnp.sum(total(pc)[1][0]))(jnp.ones(3)), 0.0)


def test_bad_settings():
  x = jnp.zeros(2)
  with pytest.raises(ValueError, match="robust"):
    dpo_loss(x, x, x, x, beta=0.1, loss_type="robust")
  with pytest.raises(ValueError, match="beta"):
    dpo_loss(x, x, x, x, beta=0.0)


def test_chunked_logprobs_equal_unchunked():
  rng = np.random.default_rng(1)
  hidden = jnp.asarray(rng.normal(size=(3, 150, 16)), jnp.float32)
  head = jnp.asarray(rng.normal(size=(16, 500)) / 4, jnp.float32)
  targets = jnp.asarray(rng.integers(-1, 500, (3, 150)), jnp.int32).at[:, :40].set(-100)
  logits_fn = lambda h: h @ head
  full = jax.nn.log_softmax(hidden @ head, axis=-1)
  valid = (targets >= 0)
  want = np.where(valid, np.take_along_axis(np.asarray(full), np.maximum(np.asarray(targets), 0)[..., None],
                                            -1)[..., 0], 0.0)
  for chunk in (7, 64, 150, 1024):
    got = token_logprobs(logits_fn, hidden, targets, chunk)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(completion_logps(got, targets)), want.sum(-1), rtol=1e-5)
  mean = completion_logps(token_logprobs(logits_fn, hidden, targets, 64), targets, average=True)
  np.testing.assert_allclose(np.asarray(mean), want.sum(-1) / valid.sum(-1), rtol=1e-5)


PAIRS = [{"id": "p1", "prompt": "What color is the circle?", "image": "a.png", "chosen": "The circle is red.",
          "rejected": "The circle is blue."},
         {"id": "p2", "prompt": "<image>\nHow many shapes are there?", "image": "c.png",
          "chosen": "There are 2 shapes.", "rejected": "There is 1 shape."}]


def preference_batch(model, tokenizer, media, records=PAIRS):
  from ureward_jax.data.examples import ExampleConfig, make_preference_example
  from ureward_jax.data.pipeline import MODEL_KEYS
  from ureward_jax.data.sources import Record
  cfg = ExampleConfig.for_model(model.config, 256, 8)
  examples = [make_preference_example(Record(r, media, "test"), i, cfg, tokenizer) for i, r in enumerate(records)]
  return {k: np.concatenate([e[k] for e in examples]) for k in MODEL_KEYS}, examples


def test_sequence_logps_equal_transformers(checkpoint):
  import torch
  from PIL import Image

  from tests.tiny_llava import FULL, max_rel
  from ureward_jax.train.tasks.vlm_dpo import sequence_logps
  hf, model, tokenizer, _, media = checkpoint
  batch, _ = preference_batch(model, tokenizer, media)
  ours, _, _ = sequence_logps(model.module, model.params, {k: jnp.asarray(v) for k, v in batch.items()})
  want = []
  for row in range(4):
    record = PAIRS[row // 2]
    pixels = image_processor(model.config)([Image.open(f"{media}/{record['image']}")])
    n = int(batch["attention_mask"][row].sum())
    ids, labels = batch["input_ids"][row, :n], batch["labels"][row, :n]
    with torch.no_grad():
      logits = hf(input_ids=torch.tensor(ids[None], dtype=torch.long),
                  pixel_values=torch.tensor(pixels["pixel_values"]),
                  image_sizes=torch.tensor(pixels["image_sizes"])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    want.append(sum(float(logp[t - 1, labels[t]]) for t in range(1, n) if labels[t] != -100))
  assert batch["labels"][0].tolist() != batch["labels"][1].tolist()
  assert max_rel(np.asarray(ours), want) <= FULL, (np.asarray(ours), want)
