"""The runner with train.objective = "diffusion_dpo" on the tiny SDXL pipeline: a sharded run writes metrics and
checkpoints, counts an unreadable pair, and resumes; pairs encoded once by train.encode_pairs (an interrupted pass
resumed) train exactly as pairs encoded at each step."""

import json
import os
import subprocess
import sys

import diffusers
import jax
import numpy as np
import pytest
import torch
from PIL import Image

from configs import dpo_sdxl_turbo
from tests.parity import max_rel
from ureward_jax.data.encoded_pairs import EncodedFolder
from ureward_jax.models import unet2d
from ureward_jax.runners.unet import UNet
from ureward_jax.train import encode_pairs, export
from ureward_jax.train.runner import train
from ureward_jax.train.tasks.diffusion_dpo import FrozenEncoders


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
  """16 pairs, one per slot of a 16-pair batch: the first step sees epoch 0 only (its flips). Three captions."""
  root = tmp_path_factory.mktemp("pairs")
  rng = np.random.default_rng(0)
  rows = []
  for i in range(16):
    for side in "ab":
      Image.fromarray(rng.integers(0, 256, (40, 48, 3), np.uint8)).save(root / f"{i}{side}.png")
    rows.append({"id": f"pair{i}", "caption": ["the cat and the dog", "a red fox", "two owls"][i % 3],
                 "jpg_0": f"{i}a.png", "jpg_1": f"{i}b.png", "label_0": i % 2})
  rows[5]["jpg_1"] = "missing.png"
  (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  return root / "pairs.jsonl"


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def config_for(sdxl, pairs, workdir, steps):
  c = dpo_sdxl_turbo.get_config()
  c.workdir = str(workdir)
  c.model.update(checkpoint=str(sdxl[2]))   # bfloat16, as the paper config
  c.data.update(train=str(pairs), batch_size=16, resolution=32, workers=0)
  c.train.update(num_steps=steps, grad_accum=1)
  c.optim.update(lr=1e-4, scale_lr=False, warmup_ratio=0.0)
  c.checkpoint.update(every=2, keep=2)
  c.mesh.update(data=8, fsdp=1, tensor=1)   # the cheapest program to compile here; UNet sharding: tests/train/test_compile.py
  c.remat = "none"
  return c


@pytest.fixture(scope="module")
def online_run(sdxl, pairs, tmp_path_factory):
  """A 2-step run encoding its pairs at each step: its workdir."""
  workdir = tmp_path_factory.mktemp("online")
  state = train(config_for(sdxl, pairs, workdir, steps=2))
  assert state.step == 2
  return workdir


def metrics(workdir):
  return [json.loads(line) for line in open(workdir / "metrics.jsonl")]


def test_sharded_run_logs_checkpoints_and_resumes(sdxl, pairs, online_run):
  assert sorted(os.listdir(online_run / "checkpoints")) == ["2"]
  rows = metrics(online_run)
  assert [r["step"] for r in rows] == [1, 2]
  assert {"loss", "implicit_acc", "model_mse", "ref_mse", "samples_per_second", "learning_rate"} <= set(rows[0])
  assert all(np.isfinite(r["loss"]) for r in rows)
  # The unreadable pair is counted each time it comes up (once per epoch), by its id.
  skipped = [i for r in rows for i in r.get("skipped_ids", [])]
  assert skipped == ["pair5", "pair5"] and sum(r["skipped_records"] for r in rows) == 2
  resumed = train(config_for(sdxl, pairs, online_run, steps=3))
  assert resumed.step == 3
  assert [r["step"] for r in metrics(online_run)] == [1, 2, 3]


def test_pairs_encoded_once_train_as_pairs_encoded_each_step(sdxl, pairs, online_run, tmp_path, monkeypatch):
  c = config_for(sdxl, pairs, tmp_path / "run", steps=1)
  c.data.encoded = str(tmp_path / "encoded")
  c.train.grad_accum = 2   # the pass encodes one micro-batch of 8 pairs at a time: two chunks

  chunks, save = [], EncodedFolder.save
  def interrupting_save(self, **progress):
    save(self, **progress)
    if progress.get("pairs_done") == 8:
      raise KeyboardInterrupt
  image_encoder = FrozenEncoders.image_encoder
  def counting_image_encoder(self):
    encode = image_encoder(self)
    def counted(pixels):
      if not isinstance(pixels, jax.core.Tracer):   # not the pass's shape inference
        chunks.append(pixels.shape)
      return encode(pixels)
    return counted

  monkeypatch.setattr(FrozenEncoders, "image_encoder", counting_image_encoder)
  monkeypatch.setattr(EncodedFolder, "save", interrupting_save)
  with pytest.raises(KeyboardInterrupt):
    encode_pairs.encode(c)
  progress = json.loads((tmp_path / "encoded" / "encoded.json").read_text())["progress"]
  assert progress == {"captions_done": 3, "pairs_done": 8, "complete": False}
  with pytest.raises(ValueError, match="did not finish"):
    train(c)
  monkeypatch.setattr(EncodedFolder, "save", save)
  encode_pairs.encode(c)   # resumes: the second chunk only
  assert len(chunks) == 2
  assert np.load(tmp_path / "encoded" / "weight.npy").tolist() == [0.0 if i == 5 else 1.0 for i in range(16)]

  c.train.grad_accum = 1
  train(c)
  (ours,), theirs = metrics(tmp_path / "run"), metrics(online_run)[0]
  assert ours["skipped_ids"] == ["pair5"]
  for key in ("model_mse", "ref_mse", "loss", "implicit_acc", "grad_norm"):
    np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-5, err_msg=key)


def test_a_non_sdxl_checkpoint_is_refused(checkpoint, pairs, tmp_path):
  c = config_for(("", "", checkpoint[3]), pairs, tmp_path, steps=1)
  with pytest.raises(ValueError, match="not a converted SDXL pipeline folder"):
    train(c)


def test_export_is_the_trained_unet_for_diffusers(online_run, tmp_path):
  """The run exported as a diffusers pipeline (`launch.export --format diffusers`): diffusers' UNet computes what
  ours computes with the checkpoint's params, and the rest of the pipeline is the one the run started from."""
  done = subprocess.run([sys.executable, "-m", "launch.export", f"--workdir={online_run}",
                         f"--dst={tmp_path / 'pipeline'}", "--format=diffusers"], capture_output=True, text=True,
                        cwd=ROOT, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  step, params = export.restore_params(online_run)
  config = unet2d.UNet2DConditionConfig.from_dict(json.loads((tmp_path / "pipeline" / "unet" / "config.json").read_text()))
  ours = UNet.from_params(config, params)
  theirs = diffusers.UNet2DConditionModel.from_pretrained(tmp_path / "pipeline" / "unet").eval()
  g = torch.Generator().manual_seed(0)
  args = dict(sample=torch.randn(2, 4, 16, 16, generator=g), timestep=torch.tensor([999, 249]),
              encoder_hidden_states=torch.randn(2, 7, config.cross_attention_dim, generator=g),
              added_cond_kwargs={"text_embeds": torch.randn(2, theirs.config.projection_class_embeddings_input_dim
                                                            - 6 * theirs.config.addition_time_embed_dim, generator=g),
                                 "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 2)})
  with torch.no_grad():
    want = theirs(**args).sample.numpy()
  got = ours.forward(**{k: ({n: t.numpy() for n, t in v.items()} if isinstance(v, dict) else v.numpy())
                        for k, v in args.items()})
  assert max_rel(got, want) <= 1e-4
  assert (tmp_path / "pipeline" / "vae" / "diffusion_pytorch_model.safetensors").exists()
  assert (tmp_path / "pipeline" / "model_index.json").exists()
