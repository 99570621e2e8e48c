"""launch.train with train.objective = "diffusion_dpo" on the tiny SDXL pipeline: a sharded run writes metrics and
checkpoints, counts an unreadable pair, and resumes."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from configs import dpo_sdxl_turbo
from launch.train import train


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
  root = tmp_path_factory.mktemp("pairs")
  rng = np.random.default_rng(0)
  rows = []
  for i in range(6):
    for side in "ab":
      Image.fromarray(rng.integers(0, 256, (40, 48, 3), np.uint8)).save(root / f"{i}{side}.png")
    rows.append({"id": f"pair{i}", "caption": "the cat and the dog", "jpg_0": f"{i}a.png", "jpg_1": f"{i}b.png",
                 "label_0": i % 2})
  rows[5]["jpg_1"] = "missing.png"
  (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  return root / "pairs.jsonl"


def config_for(sdxl, pairs, workdir, steps):
  c = dpo_sdxl_turbo.get_config()
  c.workdir = str(workdir)
  c.model.update(checkpoint=str(sdxl[2]), dtype="float32")
  c.data.update(train=str(pairs), batch_size=16, resolution=32, workers=0)
  c.train.update(num_steps=steps, grad_accum=1)
  c.diffusion_dpo.update(reference_dtype="float32")
  c.optim.update(lr=1e-4, scale_lr=False, warmup_ratio=0.0)
  c.checkpoint.update(every=2, keep=2)
  c.mesh.update(data=8, fsdp=1, tensor=1)   # the cheapest program to compile here; UNet sharding: launch.aot
  c.remat = "none"
  return c


def test_sharded_run_logs_checkpoints_and_resumes(sdxl, pairs, tmp_path):
  state = train(config_for(sdxl, pairs, tmp_path, steps=2))
  assert state.step == 2 and sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [1, 2]
  assert {"loss", "implicit_acc", "model_mse", "ref_mse", "samples_per_second", "learning_rate"} <= set(rows[0])
  assert all(np.isfinite(r["loss"]) for r in rows)
  # 32 pairs drawn from 6: the unreadable one is counted each time it comes up, by its id.
  skipped = [i for r in rows for i in r.get("skipped_ids", [])]
  assert skipped and set(skipped) == {"pair5"} and sum(r["skipped_records"] for r in rows) == len(skipped)
  resumed = train(config_for(sdxl, pairs, tmp_path, steps=3))
  assert resumed.step == 3
  assert [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")] == [1, 2, 3]


def test_a_non_sdxl_checkpoint_is_refused(checkpoint, pairs, tmp_path):
  c = config_for(("", "", checkpoint[3]), pairs, tmp_path, steps=1)
  with pytest.raises(ValueError, match="not a converted SDXL pipeline folder"):
    train(c)
