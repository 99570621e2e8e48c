"""Ahead-of-time compilation of the real training step (`train.compile`, the path `train.train` takes) for a TPU
topology on this CPU host (libtpu), or for this host's devices; the models come from converted folders' configs."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

pytest.importorskip("libtpu", reason="the tpu extra (libtpu) is installed by `make test`")

import configs.demo as demo_config  # noqa: E402
import configs.dpo_llava_ov_7b as dpo_config  # noqa: E402
import configs.dpo_sdxl_turbo as sdxl_dpo_config  # noqa: E402
import configs.dpo_t2v_turbo as t2v_dpo_config  # noqa: E402
import configs.reward_llava_ov_7b as reward_config  # noqa: E402
from tests import tiny_sdxl  # noqa: E402
from tests.models.test_structure import CONFIG  # noqa: E402
from tests.models.test_videocrafter import TINY  # noqa: E402
from ureward_jax.models import unet2d, unet3d  # noqa: E402
from ureward_jax.models.llava_onevision import PRESETS, param_shapes  # noqa: E402
from ureward_jax.models.unet2d import UNet2DConditionConfig  # noqa: E402
from ureward_jax.models.unet2d import param_shapes as unet_param_shapes  # noqa: E402
from ureward_jax.models.unet3d import VideoCrafterUNetConfig  # noqa: E402
from ureward_jax.models.vae import AutoencoderKLConfig  # noqa: E402
from ureward_jax.pipelines import schedulers  # noqa: E402
from ureward_jax.train import trainable  # noqa: E402
from ureward_jax.train.flops import model_flops_per_step  # noqa: E402
from ureward_jax.train.optim import param_count  # noqa: E402
from ureward_jax.train.runner import compile  # noqa: E402
from ureward_jax.train.topology import topology_devices  # noqa: E402


def write_config(folder, config: dict):
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
  """A converted LLaVA-OneVision folder's config alone: compiling reads no weights."""
  folder = tmp_path_factory.mktemp("tiny_llava")
  write_config(folder, CONFIG.to_dict())
  return str(folder)


def small_run(checkpoint):
  config = reward_config.get_config()
  config.model.checkpoint = checkpoint
  config.data.update(batch_size=8, max_length=64, patches_per_sample=2)
  config.train.grad_accum = 2
  return config


@pytest.fixture(scope="module")
def small_report(tiny_llava):
  return compile(small_run(tiny_llava), "v5e-4")


def test_tiny_model_step_compiles_for_a_v5e_slice_and_fits(small_report):
  report = small_report
  assert report["devices"] == 4 and report["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
  assert 0 < report["per_device_bytes"] < report["hbm_bytes"] == 16 * 2**30 and report["fits"]
  assert report["replicated_param_fraction"] < 0.02


def test_demo_config_compiles_for_a_v5e_slice_and_fits():
  report = compile(demo_config.get_config(), "v5e-4")
  assert report["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1} and report["fits"]
  assert report["parameters"] == param_count(param_shapes(PRESETS["demo_tiny"]))


def test_dpo_config_compiles_with_its_reference(small_report, tiny_llava):
  """The DPO step: twice the sequences (chosen and rejected) and a bf16 reference as one more sharded argument."""
  config = dpo_config.get_config()
  config.model.checkpoint = tiny_llava
  config.data.update(batch_size=8, max_length=64, patches_per_sample=2)
  config.train.update(grad_accum=2, num_steps=10)
  report = compile(config, "v5e-4")
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


@pytest.fixture(scope="module")
def tiny_sdxl_folder(tmp_path_factory):
  """A converted SDXL pipeline folder's configs alone: a tiny UNet, a VAE of 2 pixels per latent, the scheduler."""
  folder = tmp_path_factory.mktemp("tiny_sdxl")
  write_config(folder, {"model_type": "sdxl"})
  write_config(folder / "unet", UNet2DConditionConfig.from_dict(tiny_sdxl.UNET).to_dict())
  write_config(folder / "vae", AutoencoderKLConfig.from_dict(tiny_sdxl.VAE).to_dict())
  (folder / "scheduler").mkdir()
  (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(tiny_sdxl.SCHEDULER))
  return str(folder)


def sdxl_run(folder, accum=2):
  config = sdxl_dpo_config.get_config()
  config.model.checkpoint = folder
  config.data.update(batch_size=4 * accum, resolution=16)
  config.train.update(grad_accum=accum)
  config.remat = "none"   # half the program to compile; remat itself: tests/models/test_unet2d.py
  return config


def test_diffusion_dpo_step_compiles_with_its_reference(tiny_sdxl_folder):
  """The Diffusion-DPO step of configs/dpo_sdxl_turbo.py with a tiny UNet: policy, Adafactor state and a bf16
  reference UNet as sharded arguments, micro-batches of encoded pairs. On two of this host's devices: the TPU
  compiler takes minutes over a UNet, and the TPU path itself is the one the tests above run."""
  unet_config = UNet2DConditionConfig.from_dict(tiny_sdxl.UNET)
  report = compile(sdxl_run(tiny_sdxl_folder), jax.devices()[:2])
  assert report["mesh"] == {"data": 1, "fsdp": 2, "tensor": 1} and report["micro_batch"] == 4
  assert report["per_device_bytes"] > 0 and report["parameters"] == param_count(unet_param_shapes(unet_config))
  assert report["trained_parameters"] == report["parameters"] and report["replicated_param_fraction"] < 0.1
  assert report["model_flops_per_step"] > 0


def test_video_dpo_step_compiles_with_its_reference(tmp_path):
  """The video DPO step of configs/dpo_t2v_turbo.py with a tiny VideoCrafter UNet: policy, AdamW state of the Linear
  layers alone, a bf16 reference UNet, micro-batches of encoded 2-frame clip pairs; on two of this host's devices."""
  unet_config = VideoCrafterUNetConfig.from_dict(TINY)
  write_config(tmp_path, {"model_type": "t2v_turbo"})
  (tmp_path / "scheduler").mkdir()
  (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(schedulers.VIDEOCRAFTER_SCHEDULER))
  write_config(tmp_path / "unet", unet_config.to_dict())
  write_config(tmp_path / "vae", AutoencoderKLConfig.from_dict(tiny_sdxl.VAE).to_dict())
  config = t2v_dpo_config.get_config()
  config.model.checkpoint = str(tmp_path)
  config.data.update(batch_size=8, height=16, width=16)
  config.train.update(grad_accum=2)
  config.remat = "none"   # remat itself: tests/models/test_videocrafter.py
  report = compile(config, jax.devices()[:2])
  assert report["mesh"] == {"data": 1, "fsdp": 2, "tensor": 1} and report["micro_batch"] == 4
  shapes = unet3d.param_shapes(unet_config)
  assert report["parameters"] == param_count(shapes)
  linear = param_count(trainable.split(shapes, trainable.linear_layers(shapes))[0])
  # The Linear layers but the guidance embedding's projection, which this config never applies.
  assert report["trained_parameters"] == linear - param_count(shapes["time_cond_proj"])
  assert 0 < report["trained_parameters"] < report["parameters"] and report["per_device_bytes"] > 0


def test_diffusion_flops_count_four_unet_forwards_per_micro_batch(tiny_sdxl_folder):
  """Model FLOPs of the pair steps (what the diffusion runs' MFU divides): four UNet forwards per micro-batch (the
  policy's forward and backward, the reference's forward), so doubling the micro-batches doubles them."""
  one, two = (compile(sdxl_run(tiny_sdxl_folder, accum), jax.devices()[:1])["model_flops_per_step"] for accum in (1, 2))
  assert two == pytest.approx(2 * one, rel=1e-6)
  config = UNet2DConditionConfig.from_dict(tiny_sdxl.UNET)
  module, params = unet2d.UNet2DConditionModel(config), unet_param_shapes(config)
  pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
  shaped = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
  forward = jax.jit(module.apply).lower({"params": params}, shaped(8, 8, 8, 4), shaped(8), shaped(8, 77, 64),
                                        shaped(8, pooled), shaped(8, 6)).cost_analysis()["flops"]
  assert one == pytest.approx(4 * forward, rel=0.05)   # the loss's own arithmetic is the rest
