"""Ahead-of-time compilation of the real training step for a TPU topology, on this CPU host (libtpu)."""

import json
import subprocess
import sys

import jax
import pytest

pytest.importorskip("libtpu", reason="the tpu extra (libtpu) is installed by `make test`")

import configs.demo as demo_config  # noqa: E402
import configs.dpo_llava_ov_7b as dpo_config  # noqa: E402
import configs.dpo_sdxl_turbo as sdxl_dpo_config  # noqa: E402
import configs.dpo_t2v_turbo as t2v_dpo_config  # noqa: E402
import configs.reward_llava_ov_7b as reward_config  # noqa: E402
from launch.aot import compile_diffusion_step, compile_train_step, compile_video_step, topology_devices  # noqa: E402
from tests import tiny_sdxl  # noqa: E402
from tests.models.test_structure import CONFIG  # noqa: E402
from tests.models.test_videocrafter import TINY  # noqa: E402
from ureward_jax.models import unet3d  # noqa: E402
from ureward_jax.models.llava_onevision import PRESETS, param_shapes  # noqa: E402
from ureward_jax.models.unet2d import UNet2DConditionConfig  # noqa: E402
from ureward_jax.models.unet2d import param_shapes as unet_param_shapes  # noqa: E402
from ureward_jax.models.unet3d import VideoCrafterUNetConfig  # noqa: E402
from ureward_jax.train import trainable  # noqa: E402
from ureward_jax.train.flops import model_flops_per_step  # noqa: E402
from ureward_jax.train.optim import param_count  # noqa: E402


def small_run():
  config = reward_config.get_config()
  config.data.update(batch_size=8, max_length=64, patches_per_sample=2)
  config.train.grad_accum = 2
  return config


@pytest.fixture(scope="module")
def small_report():
  return compile_train_step(small_run(), topology_devices("v5e-4"), model=CONFIG)


def test_tiny_model_step_compiles_for_a_v5e_slice_and_fits(small_report):
  report = small_report
  assert report["devices"] == 4 and report["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
  assert 0 < report["per_device_bytes"] < report["hbm_bytes"] == 16 * 2**30 and report["fits"]
  assert report["replicated_param_fraction"] < 0.02


def test_demo_config_compiles_for_a_v5e_slice_and_fits():
  report = compile_train_step(demo_config.get_config(), topology_devices("v5e-4"))
  assert report["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1} and report["fits"]
  assert report["parameters"] == param_count(param_shapes(PRESETS["demo_tiny"]))


def test_dpo_config_compiles_with_its_reference(small_report):
  """The DPO step: twice the sequences (chosen and rejected) and a bf16 reference as one more sharded argument."""
  config = dpo_config.get_config()
  config.data.update(batch_size=8, max_length=64, patches_per_sample=2)
  config.train.update(grad_accum=2, num_steps=10)
  report = compile_train_step(config, topology_devices("v5e-4"), model=CONFIG)
  sft = small_report
  assert report["fits"] and report["model_flops_per_step"] == pytest.approx(2 * 4 / 3 * sft["model_flops_per_step"])
  assert report["per_device_bytes"] > sft["per_device_bytes"]


def test_command_line_reports_json(tmp_path):
  # A 2-chip v5p slice and the tiny config through the real command: the 7B preset is swapped by an override.
  out = subprocess.run([sys.executable, "-m", "launch.aot", "--config=configs/reward_llava_ov_7b.py",
                        "--topology=v5p-8", "--json", "--config.model.preset=llava_onevision_0.5b",
                        "--config.data.batch_size=4", "--config.train.grad_accum=1", "--config.data.max_length=128",
                        "--config.data.patches_per_sample=1", "--config.remat=full"],
                       capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads(out.stdout.strip().splitlines()[-1])
  assert set(report) >= {"per_device_bytes", "hbm_bytes", "model_flops_per_step", "compile_seconds"}
  assert report["devices"] == 4 and report["fits"]


def test_unknown_topology_is_named():
  with pytest.raises(ValueError, match="unknown topology 'v9x-1'"):
    topology_devices("v9x-1")


def test_model_flops_scale_with_tokens():
  seven_b = PRESETS["llava_onevision_7b"]
  one = model_flops_per_step(seven_b, tokens=1000, patches=0, length=1000)
  assert model_flops_per_step(seven_b, tokens=2000, patches=0, length=1000) == pytest.approx(2 * one)
  # ≈ 6 × 7.07 B matmul parameters per token (models.md §2), plus attention.
  assert 6 * 7.0e9 * 1000 < one < 6 * 7.3e9 * 1000


def test_diffusion_dpo_step_compiles_with_its_reference():
  """The Diffusion-DPO step of configs/dpo_sdxl_turbo.py with a tiny UNet: policy, Adafactor state and a bf16
  reference UNet as sharded arguments, micro-batches of encoded pairs. On two of this host's devices: the TPU
  compiler takes minutes over a UNet, and the TPU path itself is the one the tests above run."""
  config = sdxl_dpo_config.get_config()
  config.data.update(batch_size=8, resolution=16)
  config.train.update(grad_accum=2)
  config.remat = "none"   # half the program to compile; remat itself: tests/models/test_unet2d.py
  unet_config = UNet2DConditionConfig.from_dict(tiny_sdxl.UNET)
  report = compile_diffusion_step(config, jax.devices()[:2], unet_config, downsample=2)
  assert report["mesh"] == {"data": 1, "fsdp": 2, "tensor": 1} and report["pairs_per_micro_batch"] == 4
  assert report["per_device_bytes"] > 0 and report["parameters"] == param_count(unet_param_shapes(unet_config))
  assert report["replicated_param_fraction"] < 0.1


def test_video_dpo_step_compiles_with_its_reference():
  """The video DPO step of configs/dpo_t2v_turbo.py with a tiny VideoCrafter UNet: policy, AdamW state of the Linear
  layers alone, a bf16 reference UNet, micro-batches of encoded 2-frame clip pairs; on two of this host's devices."""
  config = t2v_dpo_config.get_config()
  config.data.update(batch_size=8, height=16, width=16)
  config.train.update(grad_accum=2)
  config.remat = "none"   # remat itself: tests/models/test_videocrafter.py
  unet_config = VideoCrafterUNetConfig.from_dict(TINY)
  report = compile_video_step(config, jax.devices()[:2], unet_config, downsample=2)
  assert report["mesh"] == {"data": 1, "fsdp": 2, "tensor": 1} and report["pairs_per_micro_batch"] == 4
  shapes = unet3d.param_shapes(unet_config)
  assert report["parameters"] == param_count(shapes)
  linear = param_count(trainable.split(shapes, trainable.linear_layers(shapes))[0])
  # The Linear layers but the guidance embedding's projection, which this config never applies.
  assert report["trained_parameters"] == linear - param_count(shapes["time_cond_proj"])
  assert 0 < report["trained_parameters"] < report["parameters"] and report["per_device_bytes"] > 0
