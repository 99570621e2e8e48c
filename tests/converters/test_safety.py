"""Nothing lost, nothing silent: converters never write over files they did not make, never into or around their
source, and leave nothing behind when they fail; every tensor's dtype is checked both ways; damaged files fail
naming the file."""

import hashlib
import io
import json
import pickle
import shutil
import struct
import zipfile

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

import ureward_jax
from converters import common, llava_onevision, torch_checkpoint
from converters import sdxl as sdxl_converter
from converters.common import ConversionError
from tests import tiny_llava as T
from ureward_jax import errors, outputs

Q_PROJ = "language_model.model.layers.1.self_attn.q_proj.weight"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  """A tiny transformers LLaVA-OneVision folder; tests copy it before changing anything."""
  return T.save_hf(T.hf_model(seed=1), tmp_path_factory.mktemp("safety") / "hf")


def digest(folder):
  """{relative name: sha256} of every file under `folder`."""
  return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(folder.rglob("*")) if p.is_file()}


def hidden(folder):
  """The hidden entries of `folder`: a staged write left behind would show here."""
  return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def with_tensors(source, folder, edit):
  """A copy of `source` at `folder` whose tensors went through `edit` (a function of the {name: array} dict)."""
  shutil.copytree(source, folder)
  tensors = load_file(folder / "model.safetensors")
  edit(tensors)
  save_file(tensors, str(folder / "model.safetensors"))
  return folder


# --- destinations --------------------------------------------------------------------------------------------


def test_a_destination_holding_a_users_files_is_refused_and_left_alone(source, sdxl, tmp_path):
  dst = tmp_path / "mine"
  dst.mkdir()
  (dst / "config.json").write_text('{"mine": true}')   # what the LLaVA converter used to overwrite
  before = digest(dst)
  _, sdxl_folder, sdxl_ours = sdxl
  writers = {"llava convert": lambda: llava_onevision.convert_folder(source, dst),
             "sdxl component": lambda: sdxl_converter.convert_folder(sdxl_folder / "vae", dst),
             "sdxl pipeline": lambda: sdxl_converter.convert_folder(sdxl_folder, dst),
             "sdxl export": lambda: sdxl_converter.export_folder(sdxl_ours / "vae", dst)}
  for name, write in writers.items():
    with pytest.raises(errors.UserError, match="already holds files this project did not write \\(config.json\\)"):
      write()
    assert digest(dst) == before and hidden(tmp_path) == [], name
  with pytest.raises(SystemExit, match="^error: the destination .* already holds files"):
    llava_onevision.main(["--src", str(source), "--dst", str(dst)])
  assert digest(dst) == before


@pytest.mark.parametrize("where", ["src", "inside", "around"])
def test_the_source_is_never_the_destination(source, tmp_path, where):
  """Refused before anything is written: the LLaVA converter once overwrote its source's config.json this way."""
  destination = {"src": lambda src: src, "inside": lambda src: src / "converted", "around": lambda src: src.parent}
  refusal = "holds the source" if where == "around" else "is inside the source"
  src = tmp_path / "models" / "hf"
  shutil.copytree(source, src)
  before = digest(src)
  with pytest.raises(errors.UserError, match=refusal):
    llava_onevision.convert_folder(src, destination[where](src))
  assert digest(src) == before and not (src / "converted").exists() and hidden(src.parent) == []
  ours = tmp_path / "models" / "ours"
  llava_onevision.convert_folder(src, ours)
  before = digest(ours)
  with pytest.raises(SystemExit, match=f"^error: the destination .* {refusal}"):
    llava_onevision.main(["--src", str(ours), "--dst", str(destination[where](ours)), "--export", "hf"])
  assert digest(ours) == before and hidden(ours.parent) == []


def test_a_folder_the_converter_wrote_is_replaced_whole(source, sdxl, tmp_path):
  dst = tmp_path / "ours"
  llava_onevision.convert_folder(source, dst)
  assert json.loads((dst / outputs.MANIFEST).read_text())["tool"] == llava_onevision.TOOL
  llava_onevision.convert_folder(source, dst, "bfloat16")
  embedding = ureward_jax.pretrained.load_params(dst)["language_model"]["embed_tokens"]["embedding"]
  assert embedding.dtype.name == "bfloat16" and hidden(tmp_path) == []
  llava_onevision.export_folder(dst, tmp_path / "back", "hf")
  llava_onevision.export_folder(dst, tmp_path / "back", "llava_next")   # its own export, written again
  assert "model.mm_projector.0.weight" in load_file(tmp_path / "back" / "model.safetensors")
  with pytest.raises(errors.UserError, match="was written by converters.llava_onevision, not converters.sdxl"):
    sdxl_converter.convert_folder(sdxl[1] / "vae", dst)
  (dst / "notes.txt").write_text("mine")
  with pytest.raises(errors.UserError, match=r"also holds files converters.llava_onevision did not write \(notes"):
    llava_onevision.convert_folder(source, dst)


def test_a_failure_midway_leaves_nothing(source, tmp_path, monkeypatch):
  real_save = ureward_jax.pretrained.save

  def save_then_fail(path, *args, **kwargs):
    real_save(path, *args, **kwargs)
    raise RuntimeError("disk pulled out")

  dst = tmp_path / "ours"
  monkeypatch.setattr(ureward_jax.pretrained, "save", save_then_fail)
  with pytest.raises(RuntimeError, match="disk pulled out"):
    llava_onevision.convert_folder(source, dst)
  assert not dst.exists() and hidden(tmp_path) == []
  monkeypatch.setattr(ureward_jax.pretrained, "save", real_save)
  llava_onevision.convert_folder(source, dst)
  before = digest(dst)

  def interrupt(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(common, "convert", interrupt)   # Ctrl-C while converting into an existing folder
  with pytest.raises(SystemExit) as exit_:
    llava_onevision.main(["--src", str(source), "--dst", str(dst)])
  assert exit_.value.code == errors.INTERRUPT and digest(dst) == before and hidden(tmp_path) == []
  monkeypatch.setattr(common, "save_safetensors", interrupt)
  with pytest.raises(KeyboardInterrupt):
    llava_onevision.export_folder(dst, tmp_path / "back", "hf")
  assert not (tmp_path / "back").exists() and hidden(tmp_path) == []


# --- dtypes --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [None, "float32"])
def test_an_integer_tensor_is_refused_not_cast(source, tmp_path, dtype):
  def integer(tensors):
    tensors[Q_PROJ] = tensors[Q_PROJ].astype(np.int64)
    tensors["image_newline"] = tensors["image_newline"] > 0
  src = with_tensors(source, tmp_path / "src", integer)
  with pytest.raises(ConversionError) as failure:
    llava_onevision.convert_folder(src, tmp_path / "ours", dtype)
  message = str(failure.value)
  assert f"tensor {Q_PROJ!r} has dtype int64; 'language_model/layers/self_attn/q_proj/kernel' takes a floating " \
      "dtype (float16, bfloat16, float32, float64)" in message
  assert "tensor 'image_newline' has dtype bool; 'image_newline' takes a floating dtype" in message
  assert not (tmp_path / "ours").exists() and hidden(tmp_path) == []


def test_the_layers_of_a_stack_share_one_dtype_unless_cast(source, tmp_path):
  def mixed(tensors):
    tensors[Q_PROJ] = tensors[Q_PROJ].astype(np.float16)
  src = with_tensors(source, tmp_path / "src", mixed)
  with pytest.raises(ConversionError, match="the layers of 'language_model/layers/self_attn/q_proj/kernel' are "
                     f"stored in different dtypes: '{Q_PROJ.replace('1', '0', 1)}' is float32, '{Q_PROJ}' is "
                     "float16; give a dtype"):
    llava_onevision.convert_folder(src, tmp_path / "ours")
  llava_onevision.convert_folder(src, tmp_path / "ours", "float32")
  kernel = ureward_jax.pretrained.load_params(tmp_path / "ours")["language_model"]["layers"]["self_attn"]["q_proj"]
  assert kernel["kernel"].dtype == np.float32


def test_export_refuses_a_parameter_that_is_not_floating(source, tmp_path):
  llava_onevision.convert_folder(source, tmp_path / "ours")
  params = ureward_jax.pretrained.load_params(tmp_path / "ours")
  params["image_newline"] = params["image_newline"].astype(np.int32)
  config = ureward_jax.pretrained.read_config(tmp_path / "ours")
  ureward_jax.pretrained.save(tmp_path / "int", config, params)
  with pytest.raises(ConversionError, match="parameter 'image_newline' has dtype int32; only floating parameters"):
    llava_onevision.export_folder(tmp_path / "int", tmp_path / "back", "hf")
  assert not (tmp_path / "back").exists() and hidden(tmp_path) == []
  flat = {"a/kernel": np.zeros((2, 3), np.float32), "b/bias": np.zeros(3, np.float32)}
  with pytest.raises(ConversionError, match="parameter 'b/bias' has no place in the exported format"):
    common.export(flat, [common.Rule("a/kernel", "a.weight", "dense")])


# --- damaged files -------------------------------------------------------------------------------------------


def _header_length(path):
  return struct.unpack("<Q", path.read_bytes()[:8])[0]


@pytest.mark.parametrize("damage,message", [
    (lambda f: f.write_bytes(f.read_bytes()[:5]), "not a safetensors file \\(5 bytes"),
    (lambda f: f.write_bytes(f.read_bytes()[:100]), "the header is \\d+ bytes long, but only 92 follow"),
    (lambda f: f.write_bytes(f.read_bytes()[:-10]), "damaged safetensors file: tensor '.*': data_offsets .* run past the end of the data"),
    (lambda f: f.write_bytes(struct.pack("<Q", 2) + b"[]" + f.read_bytes()[8:]), "the header is a JSON list"),
    (lambda f: f.write_bytes(struct.pack("<Q", 2) + b"{[" + f.read_bytes()[8:]), "the header is not JSON"),
])
def test_a_damaged_safetensors_file_names_itself(source, tmp_path, damage, message):
  src = tmp_path / "src"
  shutil.copytree(source, src)
  damage(src / "model.safetensors")
  with pytest.raises(ConversionError, match=f"^{src / 'model.safetensors'}: {message}"):
    llava_onevision.convert_folder(src, tmp_path / "ours")
  assert not (tmp_path / "ours").exists()


def test_a_safetensors_entry_that_does_not_match_its_data_is_named(tmp_path):
  path = tmp_path / "model.safetensors"
  save_file({"a": np.zeros((2, 2), np.float32), "b": np.zeros(3, np.float32)}, str(path))
  length, blob = _header_length(path), path.read_bytes()
  header = json.loads(blob[8:8 + length])
  for edit, message in [
      (lambda h: h["a"].update(shape=[2, 3]), "tensor 'a': data_offsets \\[0, 16\\] span 16 bytes, but shape \\[2, 3\\]"),
      (lambda h: h["b"].pop("dtype"), "tensor 'b': the header entry lacks dtype"),
      (lambda h: h["b"].update(data_offsets=[16, 10**6]), "tensor 'b': data_offsets .* run past the end"),
      (lambda h: h["a"].update(dtype="F8_E4M3"), "tensor 'a': unsupported dtype 'F8_E4M3'")]:
    changed = json.loads(json.dumps(header))
    edit(changed)
    text = json.dumps(changed).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + blob[8 + length:])
    with pytest.raises(ConversionError, match=f"^{path}: damaged safetensors file: {message}"):
      common.read_safetensors_header(path)


def test_a_sharded_folder_with_a_bad_index_names_it(source, tmp_path):
  src = tmp_path / "src"
  shutil.copytree(source, src)
  tensors = load_file(src / "model.safetensors")
  (src / "model.safetensors").unlink()
  common.save_safetensors(tensors, src, max_shard_bytes=20_000)
  index = src / "model.safetensors.index.json"
  weight_map = json.loads(index.read_text())["weight_map"]
  first = min(weight_map.values())
  for text, message in [("{", "not valid JSON"), ("[]", "holds a JSON list"),
                        (json.dumps({"weight_map": [1]}), "no 'weight_map' object"),
                        (json.dumps({"weight_map": {**weight_map, "extra.weight": first}}),
                         "tensors its shards do not hold where it says: extra.weight")]:
    index.write_text(text)
    with pytest.raises(ConversionError, match=f"^{index}: {message}"):
      llava_onevision.convert_folder(src, tmp_path / "ours")
  index.unlink()   # without the index every shard is read: a tensor in two of them is refused
  shutil.copy(src / first, src / "copy.safetensors")
  with pytest.raises(ConversionError, match="tensors stored in more than one file: '.*' \\(copy.safetensors, "):
    common.open_safetensors(src)


def test_a_source_that_is_not_a_checkpoint_folder_says_what_it_is(source, tmp_path):
  file = tmp_path / "model.safetensors"
  shutil.copy(source / "model.safetensors", file)
  for convert in (llava_onevision.convert_folder, sdxl_converter.convert_folder):
    with pytest.raises(ConversionError, match=f"^{file} is a file; a checkpoint folder was expected"):
      convert(file, tmp_path / "ours")
  src = tmp_path / "src"
  shutil.copytree(source, src)
  (src / "config.json").unlink()
  with pytest.raises(ConversionError, match=f"^{src} has no config.json"):
    llava_onevision.convert_folder(src, tmp_path / "ours")
  (src / "config.json").write_text('{"text_config": ')
  for convert in (llava_onevision.convert_folder, sdxl_converter.convert_folder):
    with pytest.raises(ConversionError, match=f"^{src / 'config.json'}: not valid JSON"):
      convert(src, tmp_path / "ours")
  with pytest.raises(SystemExit) as usage:
    llava_onevision.main(["--src", str(src)])
  assert usage.value.code == errors.USAGE


def _member(path, suffix):
  """The bytes of the member of the zip at `path` whose name ends with `suffix`."""
  with zipfile.ZipFile(path) as archive:
    return archive.read(next(n for n in archive.namelist() if n.endswith(suffix)))


def _rezipped(path, replace):
  """The bytes of the zip at `path` written again with the members of `replace` ({name: bytes}) swapped in."""
  buffer = io.BytesIO()
  with zipfile.ZipFile(path) as old, zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as new:
    for name in old.namelist():
      new.writestr(name, replace.get(name.split("/", 1)[1], old.read(name)))
  return buffer.getvalue()


def _flipped_pickle(path):
  """The bytes of the torch zip at `path` with a byte inside its pickle changed (the archive's CRC catches it)."""
  blob = bytearray(path.read_bytes())
  with zipfile.ZipFile(path) as archive:
    info = next(i for i in archive.infolist() if i.filename.endswith("/data.pkl"))
  name_length, extra_length = struct.unpack("<HH", blob[info.header_offset + 26:info.header_offset + 30])
  blob[info.header_offset + 30 + name_length + extra_length + 5] ^= 0xFF
  return bytes(blob)


class _Storage:
  """Pickled as a persistent id, as torch pickles its storages."""


def _pair_persistent_id():
  """A pickle whose persistent id is a pair, not torch's five-tuple."""
  buffer = io.BytesIO()
  pickler = pickle.Pickler(buffer, protocol=2)
  pickler.persistent_id = lambda obj: ("storage", "0") if isinstance(obj, _Storage) else None
  pickler.dump({"w": _Storage()})
  return buffer.getvalue()


@pytest.mark.parametrize("damage,message", [
    (lambda p: p.read_bytes()[:len(p.read_bytes()) // 2], "not a torch zip checkpoint, or a truncated one"),
    (lambda p: b"\x80\x02}q\x00." * 10, "not a torch zip checkpoint"),
    (_flipped_pickle, "a damaged torch checkpoint \\(BadZipFile: Bad CRC-32"),
    (lambda p: _rezipped(p, {"data.pkl": _member(p, "/data.pkl")[:-4]}), "a damaged torch checkpoint \\(Unpickling"),
    (lambda p: _rezipped(p, {"data.pkl": _pair_persistent_id()}), "unsupported persistent object \\('storage', '0'"),
    (lambda p: _rezipped(p, {"data/0": b"\x00" * 8}), "a tensor of shape \\(10,\\) .* does not fit its storage"),
])
def test_a_damaged_torch_file_names_itself(tmp_path, damage, message):
  good = tmp_path / "good.ckpt"
  torch.save({"state_dict": {"w": torch.ones(10)}}, good)
  assert torch_checkpoint.state_dict(good)["w"].load().sum() == 10
  bad = tmp_path / "bad.ckpt"
  bad.write_bytes(damage(good))
  with pytest.raises(ConversionError, match=f"^{bad}: {message}"):
    torch_checkpoint.state_dict(bad)
  with pytest.raises(ConversionError, match=f"^{tmp_path} is a folder; a checkpoint file"):
    torch_checkpoint.load(tmp_path)
