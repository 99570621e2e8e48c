"""The runner end to end on the shapes world: metrics, checkpoints, preemption and exact resumption, a new mesh."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import transformers

import ureward_jax
from configs import demo as demo_config
from tests import tiny_llava
from tests.parity import max_rel
from ureward_jax.data import shapes
from ureward_jax.errors import UserError
from ureward_jax.train import export
from ureward_jax.train.loop import Loop, LoopState, NonFiniteLoss
from ureward_jax.train.runner import train

STEPS = 6
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("shapes")
  shapes.generate(root, num_per_task=24, split="train", seed=0)
  shapes.shapes_tokenizer().save(str(root / "tokenizer.json"))
  # Short records only, so one 320-token step shape serves: generated image pairs.
  (root / "short.yaml").write_text("datasets:\n  - json_path: train/image_generation_pair.json\n"
                                   "    sampling_strategy: all\n    image_folder: .\n")
  return root


def config_for(data, workdir, mesh=None):
  c = demo_config.get_config()
  c.workdir = str(workdir)
  c.data.update(train=str(data / "short.yaml"), tokenizer=str(data / "tokenizer.json"), batch_size=8,
                max_length=320, buckets=())
  c.train.update(num_steps=STEPS, log_every=1)
  c.checkpoint.update(every=2, keep=2)
  c.mesh.update(mesh or dict(data=1, fsdp=-1, tensor=1))
  return c


def losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [r["step"] for r in rows], np.array([r["loss"] for r in rows])


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  state = train(config_for(data, workdir))
  return workdir, state


def test_run_writes_metrics_checkpoints_and_config(uninterrupted):
  workdir, state = uninterrupted
  steps, values = losses(workdir)
  assert state.step == STEPS and steps == list(range(1, STEPS + 1))
  assert values[-1] < values[0]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    row = json.loads(f.readline())
  assert {"loss", "grad_norm", "learning_rate", "tokens_per_second", "skipped_records", "truncated_samples"} <= set(row)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "6"]   # every 2, keep 2
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  assert json.load(open(os.path.join(workdir, "config.json")))["train"]["num_steps"] == STEPS


def interrupt(config, signum=signal.SIGTERM):
  """Run `config` as `python -m launch.train` and send it `signum` once it has logged a step; returns the saved step.
  SIGTERM (a preemption) ends the run with status 0, Ctrl-C (SIGINT) with 130 and one line saying so; both save
  first."""
  overrides = [("workdir", config.workdir), ("data.train", config.data.train), ("data.tokenizer", config.data.tokenizer),
               ("data.batch_size", config.data.batch_size), ("data.max_length", config.data.max_length),
               ("data.buckets", "()"), ("train.num_steps", config.train.num_steps), ("train.log_every", 1),
               ("checkpoint.every", 100), ("checkpoint.keep", 2)] + \
      [(f"mesh.{axis}", size) for axis, size in config.mesh.items()]
  command = [sys.executable, "-m", "launch.train", f"--config={demo_config.__file__}"] + [
      f"--config.{key}={value}" for key, value in overrides]
  # Output to a file, not a pipe: a pipe nobody reads fills up with progress bars and blocks the run.
  log = open(os.path.join(config.workdir, "train.log"), "w")
  process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
  metrics = os.path.join(config.workdir, "metrics.jsonl")
  deadline = time.time() + 600
  while not (os.path.exists(metrics) and open(metrics).read().count("\n") >= 2) and process.poll() is None:
    assert time.time() < deadline, "the run never logged a step"
    time.sleep(0.2)
  process.send_signal(signum)
  code = process.wait(timeout=300)
  log.close()
  output = open(log.name).read()
  assert code == (130 if signum == signal.SIGINT else 0), output[-3000:]
  assert "Traceback" not in output, output[-3000:]
  if signum == signal.SIGINT:
    assert output.rstrip().endswith("interrupted; re-run to resume"), output[-3000:]
  saved = [int(s) for s in os.listdir(os.path.join(config.workdir, "checkpoints")) if s.isdigit()]
  # Saved where the signal found it (the regular interval, 100, was never reached), before the end.
  assert len(saved) == 1 and 2 <= saved[0] < STEPS
  return saved[0]


def test_sigterm_saves_and_a_rerun_continues_exactly(data, uninterrupted, tmp_path):
  config = config_for(data, tmp_path)
  interrupt(config)
  state = train(config)   # the same command again: resumes
  assert state.step == STEPS
  steps, values = losses(tmp_path)
  reference_steps, reference = losses(uninterrupted[0])
  assert steps == reference_steps
  np.testing.assert_array_equal(values, reference)


def test_resume_on_a_different_mesh(data, uninterrupted, tmp_path):
  saved = interrupt(config_for(data, tmp_path, dict(data=1, fsdp=8, tensor=1)), signal.SIGINT)
  resumed = train(config_for(data, tmp_path, dict(data=2, fsdp=2, tensor=2)))
  assert resumed.step == STEPS
  steps, values = losses(tmp_path)
  _, reference = losses(uninterrupted[0])
  assert steps == list(range(1, STEPS + 1))
  np.testing.assert_array_equal(values[:saved], reference[:saved])
  # Another mesh sums in another order: equal to float rounding, not bit for bit.
  np.testing.assert_allclose(values[saved:], reference[saved:], rtol=1e-5)


def test_non_finite_loss_stops_with_the_step_and_record_ids(tmp_path):
  class Saver:
    def save(self, *args, **kwargs):
      return False

    def latest_step(self):
      return None

    def close(self):
      pass

  def nan_step(params, opt_state, batch):
    return params, opt_state, {"loss": np.float32(np.nan), "grad_norm": np.float32(0.0)}

  loop = Loop(step_for=lambda batch: nan_step, place=lambda batch: batch, flops=lambda batch: 0.0,
              record_ids=lambda indices: [f"id{i}" for i in indices], num_steps=5, log_every=1,
              checkpointer=Saver(), metrics=None, learning_rate=lambda step: 0.0)
  batch = dict(index=np.array([7, 3]), bad=np.zeros(2, np.int32), truncated=np.zeros(2, np.int32),
               attention_mask=np.ones((2, 4), np.int32))
  with pytest.raises(NonFiniteLoss, match=r"loss is nan at step 1; the batch held records \['id7', 'id3'\]"):
    loop.run(LoopState(0, {}, {}), [batch])


def test_export_is_the_trained_model_for_ureward_and_transformers(uninterrupted, tmp_path):
  """The latest checkpoint as a model folder: `ureward_jax.load` reads the trained params bit for bit, and as a
  transformers folder (`launch.export --format hf`) transformers computes the same logits."""
  workdir, state = uninterrupted
  assert export.export(workdir, tmp_path / "ours")["step"] == STEPS
  model = ureward_jax.load(tmp_path / "ours")
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), model.params, state.params)
  done = subprocess.run([sys.executable, "-m", "launch.export", f"--workdir={workdir}", f"--dst={tmp_path / 'hf'}",
                         "--format=hf"], capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  hf = transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
  inputs = tiny_llava.image_inputs(hf, [(90, 60)], seed=4)
  assert max_rel(model.forward(**inputs), tiny_llava.reference_logits(hf, **inputs)) <= tiny_llava.FULL


def test_export_refuses_what_is_not_there(uninterrupted, tmp_path):
  workdir, _ = uninterrupted
  with pytest.raises(UserError, match=r"no checkpoint of step 5; it has steps \[4, 6\]"):
    export.export(workdir, tmp_path / "out", step=5)
  with pytest.raises(UserError, match="config.json is missing"):
    export.export(tmp_path, tmp_path / "out")
  assert not (tmp_path / "out").exists()
