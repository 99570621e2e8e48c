"""A new objective is one task class: a toy regression task, defined here and nowhere else, trains, resumes and
compiles through the same runner as the four real ones. And the runner's config schema: every key a task reads is
declared, nothing else is."""

import importlib
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import demo as demo_config
from ureward_jax import parallel
from ureward_jax.train import optim, runner, tasks
from ureward_jax.train.task import Task

FEATURES, RECORDS = 6, 64


class Linear(nn.Module):
  @nn.compact
  def __call__(self, x):
    kernel_init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", None))
    return nn.Dense(1, kernel_init=kernel_init)(x)[..., 0]


class ToyRegression(Task):
  """y = x · w for a fixed w: each record is one (x, y), batch n holds records drawn from n alone."""

  @classmethod
  def config_keys(cls, config):
    return {"data": ("batch_size",), "model": ("noise",), "optim": optim.config_keys(config.optim)}

  def __init__(self, config, mesh, abstract=False):
    super().__init__(config, mesh, abstract)
    self.module, self.rows = Linear(), parallel.data_sharding(mesh, batch_axis=1)
    self.micro = config.data.batch_size // config.train.grad_accum

  def _init(self, rng):
    return self.module.init(rng, jnp.zeros((1, FEATURES)))["params"]

  def param_shapes(self):
    return jax.eval_shape(self._init, jax.random.key(0))

  def load_params(self, shardings):
    return parallel.init_sharded(self._init, jax.random.key(self.config.seed), self.mesh)[0]

  def optimizer(self, num_steps, trained):
    return optim.make_optimizer(self.config.optim, num_steps, trained)

  def loss_fn(self):
    def loss_fn(params, reference, mb, rng):
      noise = self.config.model.noise * jax.random.normal(rng, mb["y"].shape)
      error = self.module.apply({"params": params}, mb["x"]) - mb["y"] - noise
      return jnp.mean(error**2), {"max_error": jnp.max(jnp.abs(error))}
    return loss_fn

  def num_records(self):
    return RECORDS

  def step_inputs(self):
    shaped = lambda *shape: jax.ShapeDtypeStruct((self.config.train.grad_accum, self.micro) + shape,  # noqa: E731
                                                 jnp.float32, sharding=self.rows)
    return {None: {"x": shaped(FEATURES), "y": shaped()}}

  def stream(self, start):
    w = np.arange(FEATURES, dtype=np.float32) / FEATURES
    for n in range(start, 10**6):
      index = np.random.default_rng(n).integers(0, RECORDS, self.config.data.batch_size)
      x = np.stack([np.random.default_rng(int(i)).normal(size=FEATURES) for i in index]).astype(np.float32)
      yield {"x": x, "y": x @ w, "index": index, "bad": np.zeros(len(index), np.int32)}

  def place(self, batch):
    accum = self.config.train.grad_accum
    return {k: jax.make_array_from_process_local_data(self.rows, batch[k].reshape(accum, -1, *batch[k].shape[1:]))
            for k in ("x", "y")}

  def flops(self, inputs):
    return 6.0 * FEATURES * inputs["x"].shape[0] * inputs["x"].shape[1]

  def record_id(self, index):
    return f"#{index}"


def toy_config(workdir, steps=8):
  c = ml_collections.ConfigDict(dict(workdir=str(workdir), seed=0, remat="none"))
  c.model = dict(noise=0.01)
  c.data = dict(batch_size=32)
  c.mesh = dict(data=1, fsdp=-1, tensor=1)
  c.train = dict(objective="toy", num_steps=steps, num_epochs=0, log_every=1, grad_accum=2)
  c.optim = dict(name="adamw", lr=0.1, schedule="constant", warmup_ratio=0.0, weight_decay=0.0, clip_norm=1.0)
  c.checkpoint = dict(every=4, keep=2)
  return c


@pytest.fixture
def toy(monkeypatch):
  monkeypatch.setitem(tasks.TASKS, "toy", ToyRegression)


def rows(workdir):
  return [json.loads(line) for line in open(workdir / "metrics.jsonl")]


def test_a_task_class_is_all_a_new_objective_needs(toy, tmp_path):
  whole = runner.train(toy_config(tmp_path / "whole"))
  assert whole.step == 8
  losses = [r["loss"] for r in rows(tmp_path / "whole")]
  assert losses[-1] < 0.5 * losses[0] and "max_error" in rows(tmp_path / "whole")[0]
  runner.train(toy_config(tmp_path / "split", steps=4))
  runner.train(toy_config(tmp_path / "split"))   # resumes at step 4: its data and its keys continue
  assert [r["loss"] for r in rows(tmp_path / "split")] == losses
  report = runner.compile(toy_config(tmp_path / "aot"), jax.devices()[:2])
  assert report["parameters"] == report["trained_parameters"] == FEATURES + 1
  assert report["model_flops_per_step"] == 6.0 * FEATURES * 32 and report["mesh"]["fsdp"] == 2


def test_an_unknown_or_missing_key_is_named(toy, tmp_path):
  c = toy_config(tmp_path)
  c.optim.beta3 = 0.5
  with pytest.raises(ValueError, match=r"unknown keys \['optim.beta3'\]"):
    runner.train(c)
  c = toy_config(tmp_path)
  del c.model["noise"]
  with pytest.raises(ValueError, match=r"missing keys \['model.noise'\]"):
    runner.compile(c, jax.devices()[:1])
  c = toy_config(tmp_path)
  c.optim.update(name="adafactor")   # Adafactor reads a key this config does not declare
  with pytest.raises(ValueError, match=r"missing keys \['optim.clip_threshold'\]"):
    runner.compile(c, jax.devices()[:1])


def test_every_shipped_config_declares_exactly_what_its_task_reads():
  for name in ("demo_base", "demo", "dpo_demo", "dpo_llava_ov_7b", "dpo_llava_video_7b", "dpo_sdxl_turbo",
               "dpo_t2v_turbo", "reward_llava_ov_7b"):
    module = importlib.import_module(f"configs.{name}")
    config = module.get_config()
    runner.check_config(config, runner.config_keys(config, tasks.task_class(config)))
  config = demo_config.get_config()
  config.train.objective = "dop"
  with pytest.raises(ValueError, match="train.objective 'dop' is not one of"):
    tasks.task_class(config)
