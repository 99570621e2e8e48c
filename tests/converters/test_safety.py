"""Nothing lost: converters never write over files they did not make, never into or around their source, and leave
nothing behind when they fail."""

import hashlib
import json
import shutil

import pytest
from safetensors.numpy import load_file

import ureward_jax
from converters import common, llava_onevision
from converters import sdxl as sdxl_converter
from tests import tiny_llava as T
from ureward_jax import errors, outputs


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
