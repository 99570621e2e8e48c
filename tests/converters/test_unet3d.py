"""diffusers' video UNet (`UNet3DConditionModel`) through the component converter: detected from its folder, loaded
by `ureward_jax.load` with the PyTorch module's forward, exported back bit for bit."""

import diffusers
import numpy as np
import torch
from safetensors.numpy import load_file

import ureward_jax
from converters import sdxl as converter
from tests.models.test_unet3d import TINY, perturbed
from tests.parity import max_rel


def test_unet3d_folder_converts_loads_and_exports_bit_exact(tmp_path):
  ref = perturbed(diffusers.UNet3DConditionModel(**TINY), seed=7)
  ref.save_pretrained(tmp_path / "unet")
  config = converter.convert_folder(tmp_path / "unet", tmp_path / "ours")
  assert config["model_type"] == "unet3d_condition" and config["attention_head_dim"] == 8

  unet = ureward_jax.load(tmp_path / "ours")
  g = torch.Generator().manual_seed(8)
  args = dict(sample=torch.randn(1, 4, 3, 8, 8, generator=g), timestep=torch.tensor([519]),
              encoder_hidden_states=torch.randn(1, 5, 16, generator=g), timestep_cond=torch.randn(1, 12, generator=g))
  with torch.no_grad():
    want = ref(**args).sample.numpy()
  assert max_rel(unet.forward(**{k: v.numpy() for k, v in args.items()}), want) <= 1e-4

  converter.export_folder(tmp_path / "ours", tmp_path / "back")
  original = load_file(tmp_path / "unet" / "diffusion_pytorch_model.safetensors")
  exported = load_file(tmp_path / "back" / "diffusion_pytorch_model.safetensors")
  assert set(exported) == set(original) and all(np.array_equal(exported[k], original[k]) for k in original)
  reloaded = diffusers.UNet3DConditionModel.from_pretrained(tmp_path / "back")
  with torch.no_grad():
    torch.testing.assert_close(reloaded(**args).sample, ref(**args).sample, rtol=0, atol=0)
