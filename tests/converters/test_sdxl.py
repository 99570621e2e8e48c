"""The SDXL converter: pipeline and component folders, loud failures, variants, and a bit-exact round trip that
diffusers and transformers load again."""

import copy
import json
import shutil
import subprocess
import sys

import diffusers
import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

import ureward_jax
from converters import sdxl as converter
from converters.common import ConversionError

COMPONENTS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model",
              "text_encoder_2": "model"}


def test_pipeline_folder_becomes_loadable_components(sdxl):
  pipe, folder, ours = sdxl
  config = json.loads((ours / "config.json").read_text())
  assert config["model_type"] == "sdxl" and config["components"] == list(converter.PIPELINE_MODELS)
  for name in ("tokenizer", "tokenizer_2", "scheduler"):
    assert (ours / name).is_dir()
  text_encoder = ureward_jax.load(ours / "text_encoder_2")
  ids = np.random.default_rng(0).integers(0, 500, (2, 77))
  with torch.no_grad():
    want = pipe.text_encoder_2(torch.from_numpy(ids)).text_embeds.numpy()
  np.testing.assert_allclose(text_encoder.forward(ids)["text_embeds"], want, rtol=1e-5, atol=1e-6)


def test_component_folder_is_detected_and_converted(sdxl, tmp_path):
  pipe, folder, _ = sdxl
  config = converter.convert_folder(folder / "vae", tmp_path / "vae")
  assert config["model_type"] == "autoencoder_kl"
  vae = ureward_jax.load(tmp_path / "vae")
  x = np.random.default_rng(1).uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32)
  with torch.no_grad():
    want = pipe.vae.encode(torch.from_numpy(x)).latent_dist.mean.numpy()
  np.testing.assert_allclose(vae.encode(x), want, rtol=1e-5, atol=1e-5)


def test_legacy_vae_attention_names_convert(sdxl, tmp_path):
  folder = sdxl[1]
  shutil.copytree(folder / "vae", tmp_path / "vae")
  path = tmp_path / "vae" / "diffusion_pytorch_model.safetensors"
  legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
  tensors = {}
  for name, array in load_file(path).items():
    for new, old in legacy.items():
      name = name.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
    tensors[name] = array
  assert "encoder.mid_block.attentions.0.query.weight" in tensors
  save_file(tensors, path)
  converter.convert_folder(tmp_path / "vae", tmp_path / "ours")
  converted = ureward_jax.load(tmp_path / "ours")
  reference = ureward_jax.load(sdxl[2] / "vae")
  for a, b in zip(jax.tree.leaves(converted.params), jax.tree.leaves(reference.params)):
    np.testing.assert_array_equal(a, b)


def _broken_copy(folder, tmp_path, edit):
  shutil.copytree(folder / "unet", tmp_path / "unet")
  path = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
  tensors = load_file(path)
  edit(tensors)
  save_file(tensors, path)
  return tmp_path / "unet"


@pytest.mark.parametrize("edit,message", [
    (lambda t: t.pop("mid_block.attentions.0.proj_out.weight"), "missing tensor 'mid_block.attentions.0.proj_out"),
    (lambda t: t.update({"extra.weight": np.zeros(3, np.float32)}), "unexpected tensors in the checkpoint: \\['extra"),
    (lambda t: t.update({"conv_in.bias": np.zeros(7, np.float32)}), "'conv_in.bias' has shape \\(7,\\)"),
])
def test_mismatched_checkpoints_fail_naming_the_tensor(sdxl, tmp_path, edit, message):
  broken = _broken_copy(sdxl[1], tmp_path, edit)
  with pytest.raises(ConversionError, match=message):
    converter.convert_folder(broken, tmp_path / "out")


def test_variant_weights_are_chosen_never_mixed(sdxl, tmp_path):
  pipe, folder, _ = sdxl
  shutil.copytree(folder / "unet", tmp_path / "unet")
  copy.deepcopy(pipe.unet).half().save_pretrained(tmp_path / "unet", variant="fp16")   # the fixture stays fp32
  plain = converter.open_weights(tmp_path / "unet")
  half = converter.open_weights(tmp_path / "unet", "fp16")
  assert set(plain) == set(half)
  assert {t.dtype for t in plain.values()} == {np.dtype("float32")}
  assert {t.dtype for t in half.values()} == {np.dtype("float16")}
  with pytest.raises(ConversionError, match="no 'bf16' safetensors weights"):
    converter.open_weights(tmp_path / "unet", "bf16")


def test_export_is_bit_exact_and_loads_in_diffusers(sdxl, tmp_path):
  pipe, folder, ours = sdxl
  converter.export_folder(ours, tmp_path / "back")
  for name, stem in COMPONENTS.items():
    original = load_file(folder / name / f"{stem}.safetensors")
    exported = load_file(tmp_path / "back" / name / f"{stem}.safetensors")
    if name == "text_encoder":   # written with the `text_model.` prefix every transformers version reads
      exported = {k.removeprefix("text_model."): v for k, v in exported.items()}
    assert set(exported) == set(original)
    assert all(np.array_equal(exported[k], original[k]) for k in original)
  reloaded = diffusers.StableDiffusionXLPipeline.from_pretrained(tmp_path / "back")
  ids = torch.from_numpy(np.random.default_rng(2).integers(0, 500, (1, 77)))
  with torch.no_grad():   # the same weights; transformers picks its own attention kernel on reload
    torch.testing.assert_close(reloaded.text_encoder(ids).last_hidden_state, pipe.text_encoder(ids).last_hidden_state,
                               rtol=1e-5, atol=1e-6)
  assert isinstance(reloaded.text_encoder, transformers.CLIPTextModel)


def test_command_line_reports_errors(tmp_path):
  (tmp_path / "src").mkdir()
  (tmp_path / "src" / "config.json").write_text(json.dumps({"_class_name": "UNetSpatioTemporalConditionModel"}))
  result = subprocess.run([sys.executable, "-m", "converters.sdxl", "--src", str(tmp_path / "src"),
                           "--dst", str(tmp_path / "dst")], capture_output=True, text=True)
  assert result.returncode != 0 and "unsupported component class 'UNetSpatioTemporalConditionModel'" in result.stderr
