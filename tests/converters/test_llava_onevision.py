"""The LLaVA-OneVision converter: every naming, loud failures, bit-exact round trips, transformers can re-load."""

import json
import subprocess
import sys

import numpy as np
import pytest
import transformers
from safetensors.numpy import load_file, save_file

import ureward_jax
from converters import common
from converters.llava_onevision import convert_folder, export_folder
from tests import tiny_llava as T
from tests.tiny_llava import FULL, image_inputs, reference_logits


@pytest.fixture(scope="module")
def hf():
  return T.hf_model(seed=1)


@pytest.fixture(scope="module")
def folders(hf, tmp_path_factory):
  root = tmp_path_factory.mktemp("formats")
  return {"hf": T.save_hf(hf, root / "hf"), "llava_next": T.save_llava_next(hf, root / "llava_next")}


def _read(folder):
  out = {}
  for f in sorted(folder.glob("*.safetensors")):
    out.update(load_file(f))
  return out


def test_llava_next_format_matches_transformers(hf, folders, tmp_path):
  config = convert_folder(folders["llava_next"], tmp_path / "ours", "float32")
  assert (config.video_newline, config.unpad_exact_round) == ("grid", False)
  ours = ureward_jax.load(tmp_path / "ours")
  inputs = image_inputs(hf, [(150, 100)], seed=2)
  assert T.max_rel(ours.forward(**inputs), reference_logits(hf, **inputs)) <= FULL


def test_runtime_naming(hf, tmp_path):
  """The names of transformers' in-memory state_dict (`model.language_model.*`) convert to the same params."""
  state = {k: v.numpy() for k, v in hf.state_dict().items()}
  (tmp_path / "src").mkdir()
  save_file(state, str(tmp_path / "src" / "model.safetensors"))
  (tmp_path / "src" / "config.json").write_text(hf.config.to_json_string())
  convert_folder(tmp_path / "src", tmp_path / "ours", "float32")
  ids = np.array([np.arange(40) % 120])
  assert T.max_rel(ureward_jax.load(tmp_path / "ours").forward(ids), reference_logits(hf, input_ids=ids)) <= FULL


@pytest.mark.parametrize("fmt", ["hf", "llava_next"])
def test_round_trip_is_bit_exact(folders, fmt, tmp_path):
  convert_folder(folders[fmt], tmp_path / "ours")
  export_folder(tmp_path / "ours", tmp_path / "back", fmt)
  original, back = _read(folders[fmt]), _read(tmp_path / "back")
  assert sorted(original) == sorted(back)
  for name in original:
    assert original[name].dtype == back[name].dtype and np.array_equal(original[name], back[name]), name
  # The exported config.json reads back into the same model description.
  again = convert_folder(tmp_path / "back", tmp_path / "again")
  assert again == ureward_jax.load(tmp_path / "ours").config


def test_export_hf_loads_in_transformers(hf, folders, tmp_path):
  """A LLaVA-NeXT checkpoint exported as hf is a valid transformers checkpoint computing the same logits."""
  convert_folder(folders["llava_next"], tmp_path / "ours", "float32")
  export_folder(tmp_path / "ours", tmp_path / "hf", "hf")
  reloaded = transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
  inputs = image_inputs(hf, [(150, 100)], seed=3)
  assert T.max_rel(reference_logits(reloaded, **inputs), reference_logits(hf, **inputs)) <= 1e-6


def test_tied_embeddings_and_bf16(tmp_path):
  tied = T.hf_model(seed=3, tie=True)
  config = convert_folder(T.save_llava_next(tied, tmp_path / "src"), tmp_path / "ours", "bfloat16")
  assert config.text.tie_word_embeddings
  params = ureward_jax.pretrained.load_params(tmp_path / "ours")
  assert "lm_head" not in params["language_model"]
  assert params["language_model"]["embed_tokens"]["embedding"].dtype.name == "bfloat16"
  ids = np.array([np.arange(30) % 120])
  ours = ureward_jax.load(tmp_path / "ours", param_dtype=np.float32)
  assert T.max_rel(ours.forward(ids), reference_logits(tied, input_ids=ids)) <= 2e-2


def test_bf16_source_read_without_round_trip(hf, tmp_path):
  import ml_dtypes
  (tmp_path / "src").mkdir()
  state = {k: v.float().numpy().astype(ml_dtypes.bfloat16) for k, v in hf.state_dict().items()}
  from converters.common import save_safetensors
  save_safetensors(state, tmp_path / "src", max_shard_bytes=20_000)   # several shards + index
  (tmp_path / "src" / "config.json").write_text(hf.config.to_json_string())
  assert (tmp_path / "src" / "model.safetensors.index.json").exists()
  convert_folder(tmp_path / "src", tmp_path / "ours")
  params = common.flatten(ureward_jax.pretrained.load_params(tmp_path / "ours"))
  kernel = params["language_model/layers/mlp/up_proj/kernel"]
  assert kernel.dtype == ml_dtypes.bfloat16
  source = state["model.language_model.layers.1.mlp.up_proj.weight"]
  assert np.array_equal(kernel[1].view(np.uint16), source.T.view(np.uint16))


@pytest.mark.parametrize("damage,message", [
    ("drop", "missing tensor 'language_model.model.layers.1.mlp.up_proj.weight'"),
    ("extra", "unexpected tensors in the checkpoint: ['language_model.model.layers.0.mlp.extra.weight']"),
    ("shape", "tensor 'image_newline' has shape (31,), expected (32,)"),
])
def test_damaged_checkpoints_fail_loudly(folders, tmp_path, damage, message):
  state = _read(folders["hf"])
  if damage == "drop":
    del state["language_model.model.layers.1.mlp.up_proj.weight"]
  elif damage == "extra":
    state["language_model.model.layers.0.mlp.extra.weight"] = np.zeros(3, np.float32)
  else:
    state["image_newline"] = state["image_newline"][:31]
  (tmp_path / "src").mkdir()
  save_file(state, str(tmp_path / "src" / "model.safetensors"))
  (tmp_path / "src" / "config.json").write_text((folders["hf"] / "config.json").read_text())
  with pytest.raises(common.ConversionError) as err:
    convert_folder(tmp_path / "src", tmp_path / "ours")
  assert message in str(err.value)


def test_command_line(folders, tmp_path):
  run = lambda *a: subprocess.run([sys.executable, "-m", "converters.llava_onevision", *a], capture_output=True,
                                  text=True)
  ok = run("--src", str(folders["hf"]), "--dst", str(tmp_path / "ours"), "--dtype", "float32")
  assert ok.returncode == 0, ok.stderr
  assert json.loads((tmp_path / "ours" / "config.json").read_text())["model_type"] == "llava_onevision"
  missing = run("--src", str(tmp_path / "nowhere"), "--dst", str(tmp_path / "x"))
  assert missing.returncode != 0 and "does not exist" in missing.stderr


def test_vocabulary_padding_round_trip(hf, folders, tmp_path):
  """LLaVA-NeXT (128 rows here, 152064 at full size) → transformers with padded rows (192; 152128) → back."""
  convert_folder(folders["llava_next"], tmp_path / "ours")
  export_folder(tmp_path / "ours", tmp_path / "hf", "hf", vocab_size=192)
  padded = transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
  assert padded.lm_head.weight.shape[0] == 192
  inputs = image_inputs(hf, [(150, 100)], seed=4)
  # Not bit-equal: the wider head matmul blocks differently.
  assert T.max_rel(reference_logits(padded, **inputs)[..., :128], reference_logits(hf, **inputs)) <= 1e-6
  convert_folder(tmp_path / "hf", tmp_path / "ours_padded")
  export_folder(tmp_path / "ours_padded", tmp_path / "back", "llava_next", vocab_size=128)
  original, back = _read(folders["llava_next"]), _read(tmp_path / "back")
  assert all(np.array_equal(original[name], back[name]) for name in original) and sorted(original) == sorted(back)
  with pytest.raises(ValueError, match="image/video token ids need 128 rows"):
    export_folder(tmp_path / "ours", tmp_path / "bad", "hf", vocab_size=100)


def test_llava_next_config_without_vision_config_gets_so400m():
  from converters.llava_onevision import config_from_source
  source = {"hidden_size": 3584, "intermediate_size": 18944, "num_attention_heads": 28, "num_key_value_heads": 4,
            "num_hidden_layers": 28, "vocab_size": 152064, "rope_theta": 1e6, "mm_newline_position": "grid",
            "image_grid_pinpoints": "(1x1),...,(6x6)", "image_aspect_ratio": "anyres_max_9"}
  config = config_from_source(source, "llava_next", 26, 28, 152064, False)
  assert (config.vision.hidden_size, config.vision.num_attention_heads, config.vision.intermediate_size,
          config.vision.num_hidden_layers, config.vision.image_size) == (1152, 16, 4304, 26, 384)
  assert config.text.head_dim == 128 and config.image_token_id == 151646 and config.video_newline == "grid"
  assert len(config.image_grid_pinpoints) == 36 and config.image_grid_pinpoints[1] == (768, 384)   # stored (W, H)
