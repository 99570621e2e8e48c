"""The runner with train.objective = "video_dpo" on the tiny T2V-Turbo pipeline: an FSDP-sharded run over mp4 and
frame-folder pairs trains the Linear layers alone at the config's constant rate, writes metrics and checkpoints,
counts an unreadable pair, and resumes; the one-cycle schedule on request."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import dpo_t2v_turbo
from converters import t2v_turbo
from tests import tiny_t2v
from tests.models.test_videocrafter import TINY
from ureward_jax import pretrained
from ureward_jax.models import unet3d
from ureward_jax.processing.video import write_frame_folder, write_video
from ureward_jax.train import trainable
from ureward_jax.train.optim import make_optimizer, one_cycle
from ureward_jax.train.runner import train
from ureward_jax.train.tasks.video_dpo import train_mask

PAIRS, FRAMES = 8, 6
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def t2v(tmp_path_factory):
  return tiny_t2v.build(tmp_path_factory.mktemp("t2v"))["folder"]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
  """8 pairs of 6-frame videos, mp4 files and frame folders; one pair names a missing video."""
  root = tmp_path_factory.mktemp("video_pairs")
  rng = np.random.default_rng(0)
  rows = []
  for i in range(PAIRS):
    names = []
    for side in "ab":
      frames = rng.integers(0, 256, (FRAMES, 32, 48, 3), np.uint8)
      if i % 2:
        write_video(frames, str(root / f"{i}{side}.mp4"))
        names.append(f"{i}{side}.mp4")
      else:
        write_frame_folder(frames, str(root / f"{i}{side}"))
        names.append(f"{i}{side}")
    rows.append({"id": f"pair{i}", "caption": ["a red fox", "two owls"][i % 2], "chosen": names[0],
                 "rejected": names[1]})
  rows[3]["rejected"] = "missing.mp4"
  (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  return root / "pairs.jsonl"


def config_for(t2v, pairs, workdir, steps):
  c = dpo_t2v_turbo.get_config()
  c.workdir = str(workdir)
  c.model.update(checkpoint=str(t2v), dtype="float32")
  c.data.update(train=str(pairs), batch_size=PAIRS, height=32, width=48, workers=0)
  c.train.update(num_steps=steps, num_epochs=0, grad_accum=1)
  c.optim.update(lr=1e-3)
  c.checkpoint.update(every=2, keep=2)
  c.mesh.update(data=1, fsdp=8, tensor=1)
  c.remat = "none"
  return c


def metrics(workdir):
  return [json.loads(line) for line in open(workdir / "metrics.jsonl")]


def test_run_trains_linear_layers_logs_checkpoints_and_resumes(t2v, pairs, tmp_path, tmp_path_factory):
  state = train(config_for(t2v, pairs, tmp_path, steps=3))
  assert state.step == 3 and sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "3"]
  rows = metrics(tmp_path)
  assert [r["step"] for r in rows] == [1, 2, 3]
  assert {"loss", "implicit_acc", "model_mse", "ref_mse", "grad_norm", "learning_rate"} <= set(rows[0])
  assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in rows)
  np.testing.assert_allclose([r["learning_rate"] for r in rows], 1e-3, rtol=1e-6)
  # The missing video makes its pair weightless, reported by id each time it comes up.
  assert [i for r in rows for i in r.get("skipped_ids", [])] == ["pair3"] * 3

  start = pretrained.load_params(t2v / "unet")
  moved = jax.tree.map(lambda a, b: not np.array_equal(np.asarray(a), b), state.params, start)
  trained, frozen = trainable.split(moved, trainable.linear_layers(start))
  # A Linear layer, but unused without the guidance embedding: it gets no gradient and stays as it was.
  assert not any(jax.tree.leaves(trained.pop("time_cond_proj")))
  assert all(jax.tree.leaves(trained)) and not any(jax.tree.leaves(frozen))

  resumed = train(config_for(t2v, pairs, tmp_path, steps=4))
  assert resumed.step == 4 and [r["step"] for r in metrics(tmp_path)] == [1, 2, 3, 4]

  # Exported as VideoCrafter2's checkpoint file (`launch.export --format ckpt`), converted back: the trained UNet.
  out = tmp_path_factory.mktemp("export")
  done = subprocess.run([sys.executable, "-m", "launch.export", f"--workdir={tmp_path}", f"--dst={out / 'model.ckpt'}",
                         "--format=ckpt"], capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  t2v_turbo.convert_checkpoint(out / "model.ckpt", out / "back", tokenizer=t2v / "tokenizer",
                               config=t2v.parent / "config.yaml")   # the UNet layout tiny_t2v converted with
  back = pretrained.load_params(out / "back" / "unet")
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), resumed.params, back)


def test_one_cycle_on_request_and_unknown_schedules_refused(t2v, pairs, tmp_path):
  c = config_for(t2v, pairs, tmp_path, steps=3)
  c.optim.update(schedule="onecycle", pct_start=0.5)
  _, lr = make_optimizer(c.optim, 3, {})
  want, _ = one_cycle(1e-3, 3, 0.5, 25.0, 10.0)
  np.testing.assert_allclose([float(lr(s)) for s in range(3)], [float(want(s)) for s in range(3)], rtol=1e-6)
  c.optim.schedule = "onecycles"
  with pytest.raises(ValueError, match="optim.schedule 'onecycles' is not one of"):
    make_optimizer(c.optim, 3, {})


def test_the_unused_guidance_projection_stays_frozen():
  """torch's AdamW skips a parameter without a gradient, weight decay included: `time_cond_proj` must not train
  while the guidance embedding is off (VideoDPO's UNet), whether the Linear layers or all parameters train."""
  shapes = unet3d.param_shapes(unet3d.VideoCrafterUNetConfig.from_dict(TINY))
  flat = lambda tree: jax.tree_util.tree_leaves_with_path(tree)  # noqa: E731
  c = dpo_t2v_turbo.get_config()
  linear, mask = trainable.linear_layers(shapes), train_mask(c.video_dpo, shapes)
  assert all(jax.tree.leaves(linear["time_cond_proj"])) and not any(jax.tree.leaves(mask["time_cond_proj"]))
  assert [v for k, v in flat(mask) if "time_cond_proj" not in str(k)] == \
      [v for k, v in flat(linear) if "time_cond_proj" not in str(k)]
  c.video_dpo.trainable = "all"
  mask = train_mask(c.video_dpo, shapes)
  assert all(v != ("time_cond_proj" in str(k)) for k, v in flat(mask))   # all but the projection
  c.video_dpo.w_embedding = True
  assert all(jax.tree.leaves(train_mask(c.video_dpo, shapes)))


def test_a_non_t2v_checkpoint_is_refused(t2v, pairs, tmp_path):
  c = config_for(t2v, pairs, tmp_path, steps=3)
  c.model.checkpoint = str(t2v / "unet")
  with pytest.raises(ValueError, match="not a converted T2V-Turbo pipeline folder"):
    train(c)
