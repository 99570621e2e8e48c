"""SDXL components (diffusers UNet and VAE folders, transformers CLIP text encoders) ⇄ our checkpoint folders; also
diffusers' video UNet (`UNet3DConditionModel`, through the same derived name table).

  python -m converters.sdxl --src SDXL_PIPELINE_OR_COMPONENT_DIR --dst OUT_DIR [--dtype bfloat16|float32] [--variant fp16]
  python -m converters.sdxl --src OUR_DIR --dst OUT_DIR --export diffusers

A pipeline folder (`model_index.json`) becomes a folder of converted components plus its tokenizers and scheduler
config; a component folder is recognised from its `config.json` (`_class_name` or `architectures`). Every component
is read and checked before any is converted; every parameter must be stored in a floating dtype.

The destination (of a conversion or an export) must be a new or empty folder, or one this converter wrote (which
is then replaced whole), and neither inside nor around the source. It is written beside itself under a hidden name
and renamed into place when complete, so a failed or interrupted run leaves nothing behind and an existing
destination as it was.

Our parameter paths mirror the source names: a numbered child `down_blocks.1` is the Flax module `down_blocks_1`,
and a scanned stack `layers` holds `layers.{i}` on a leading axis. So the name table is derived from the model's
own parameter tree rather than written out by hand; a table that does not match the checkpoint still fails on every
missing, unexpected or mis-shaped tensor.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
from pathlib import Path
from typing import Mapping

import numpy as np
from tqdm import tqdm

from converters import common
from converters.common import ConversionError, Rule
from ureward_jax import errors, outputs, pretrained
from ureward_jax.models import clip_text, unet2d, unet3d, vae

TOOL = "converters.sdxl"   # what the destination's manifest records as its writer
# Source containers whose children are numbered (`resnets.0`); ours are `resnets_0`.
INDEXED = ("down_blocks", "up_blocks", "resnets", "attentions", "transformer_blocks", "downsamplers", "upsamplers",
           "to_out", "net", "temp_convs", "temp_attentions", "conv1", "conv2", "conv3", "conv4")
# Scanned stacks: one parameter per kind with a leading layer axis, `layers.{i}` in the source.
STACKED = ("layers",)
_LEAVES = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}


def _source_name(path: str, ndim: int, indexed_containers: tuple[str, ...]) -> Rule:
  *modules, leaf = path.split("/")
  names = []
  for module in modules:
    indexed = re.fullmatch(r"(.+)_(\d+)", module)
    if indexed and indexed.group(1) in indexed_containers:
      names.append(f"{indexed.group(1)}.{indexed.group(2)}")
    elif module in STACKED:
      names.append(f"{module}.{{i}}")
    else:
      names.append(module)
  if leaf not in _LEAVES:
    raise ConversionError(f"parameter {path!r}: no source naming for a {leaf!r} leaf")
  rule = Rule(path, ".".join(names + [_LEAVES[leaf]]))
  per_layer = ndim - 1 if rule.stacked else ndim
  if leaf == "kernel":
    rule = Rule(path, rule.source, "dense" if per_layer == 2 else "conv")
  return rule


def rules(shapes: Mapping[str, tuple[int, ...]], indexed: tuple[str, ...] = INDEXED) -> list[Rule]:
  """The name table for a flat {our path: shape}; `indexed`: the source containers whose children are numbered."""
  return [_source_name(path, len(shape), indexed) for path, shape in shapes.items()]


def stacks(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
  """Each scanned stack's path prefix → its layer count, read from the leading axis of its parameters."""
  out = {}
  for path, shape in shapes.items():
    parts = path.split("/")
    for i, part in enumerate(parts[:-1]):
      if part in STACKED:
        out["/".join(parts[:i + 1])] = shape[0]
  return out


def params_from_tensors(tensors: Mapping[str, np.ndarray | common.StoredTensor], shapes: Mapping, dtype=None,
                        ignore=(), indexed: tuple[str, ...] = INDEXED) -> dict:
  """Our nested params from source tensors (a state dict as numpy arrays, or `open_safetensors` of a folder).

  shapes: the model's parameter tree of `jax.ShapeDtypeStruct`s (its `param_shapes`).
  """
  flat_shapes = common.flat_shapes(shapes)
  flat = common.convert(common.as_stored(tensors), rules(flat_shapes, indexed), flat_shapes, stacks(flat_shapes),
                        dtype=dtype, ignore=ignore)
  return common.unflatten(flat)


# --- folders -----------------------------------------------------------------------------------------------------

# A component's class (diffusers `_class_name`, transformers `architectures[0]`) → our model_type.
COMPONENTS = {"UNet2DConditionModel": "unet2d_condition", "AutoencoderKL": "autoencoder_kl",
              "CLIPTextModel": "clip_text", "CLIPTextModelWithProjection": "clip_text",
              "UNet3DConditionModel": "unet3d_condition"}
# Our model_type → (its model module, which gives `param_shapes`, and its config class).
MODELS = {"unet2d_condition": (unet2d, unet2d.UNet2DConditionConfig),
          "autoencoder_kl": (vae, vae.AutoencoderKLConfig),
          "clip_text": (clip_text, clip_text.CLIPTextConfig),
          "unet3d_condition": (unet3d, unet3d.UNet3DConditionConfig)}
# The sub-folders of a diffusers SDXL pipeline that hold weights, and those copied as they are.
PIPELINE_MODELS = ("unet", "vae", "text_encoder", "text_encoder_2")
PIPELINE_FILES = ("tokenizer", "tokenizer_2", "scheduler")
# transformers keeps a CLIP text model's position ids as a buffer in older files.
IGNORED = (r"position_ids$",)
# VAE files written before diffusers 0.14 name the mid-block attention's projections differently.
LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
WEIGHTS = {"diffusers": "diffusion_pytorch_model.safetensors", "transformers": "model.safetensors"}


def component_class(config: dict, where) -> str:
  name = config.get("_class_name") or (config.get("architectures") or [None])[0]
  if name not in COMPONENTS:
    raise ConversionError(f"{where}: unsupported component class {name!r}; expected one of {sorted(COMPONENTS)}")
  return name


def _module(class_name: str):
  """(our model_type, its model module, its config class) for a component class."""
  model_type = COMPONENTS[class_name]
  return (model_type, *MODELS[model_type])


def open_weights(folder: Path, variant: str | None = None) -> dict[str, common.StoredTensor]:
  """The tensors of a component folder's safetensors files: the plain ones, or those of `variant` (e.g. "fp16").

  diffusers folders often hold both `diffusion_pytorch_model.safetensors` and `….fp16.safetensors`; mixing them
  would silently take each tensor from whichever file came last.
  """
  def variant_of(path: Path) -> str | None:
    parts = path.name[: -len(".safetensors")].split(".")
    return parts[1].split("-")[0] if len(parts) > 1 else None
  files = sorted(p for p in folder.glob("*.safetensors") if variant_of(p) == variant)
  if not files:
    found = sorted(p.name for p in folder.glob("*.safetensors"))
    raise ConversionError(f"{folder}: no {'plain' if variant is None else variant!r} safetensors weights "
                          f"(found {found or 'none'}); .bin checkpoints must be re-saved as safetensors")
  return common.read_safetensors_files(files)


@dataclasses.dataclass(frozen=True)
class Component:
  """A component folder read as far as it can be without converting: its config and its weights' headers."""
  source_config: dict
  class_name: str
  config: object
  tensors: dict

  @property
  def model_type(self) -> str:
    return COMPONENTS[self.class_name]


def read_component(src: Path, variant: str | None = None) -> Component:
  """A diffusers / transformers component folder's config and weights, checked; its tensors under our names."""
  source_config = common.read_json(src / "config.json")
  class_name = component_class(source_config, src)
  model_type, _, config_cls = _module(class_name)
  try:
    config = config_cls.from_dict(source_config)
  except KeyError as e:   # a setting the model needs and the file lacks
    raise ConversionError(f"{src / 'config.json'}: no {e} entry") from None
  tensors = open_weights(src, variant)
  if model_type == "clip_text" and not any(n.startswith("text_model.") for n in tensors):
    # transformers 5 saves a plain CLIPTextModel without the `text_model.` prefix that every earlier file has.
    tensors = {n if n.startswith("text_projection.") else "text_model." + n: t for n, t in tensors.items()}
  if model_type == "autoencoder_kl":
    tensors = {_modern_attention_name(n): t for n, t in tensors.items()}
  return Component(source_config, class_name, config, tensors)


def write_component(component: Component, dst: Path, dtype: str | None = None) -> dict:
  """Convert a read component into our checkpoint folder `dst` (new or empty); returns the config written there."""
  module = MODELS[component.model_type][0]
  params = params_from_tensors(component.tensors, module.param_shapes(component.config), dtype=dtype, ignore=IGNORED)
  fmt = "diffusers" if "_class_name" in component.source_config else "transformers"
  ours = {"model_type": component.model_type, **component.config.to_dict(),
          "source": {"format": fmt, "class_name": component.class_name, "config": component.source_config}}
  pretrained.save(dst, ours, params)
  return ours


def _modern_attention_name(name: str) -> str:
  parts = name.split(".")
  if len(parts) >= 2 and ".attentions." in name and parts[-2] in LEGACY_ATTENTION:
    parts[-2] = LEGACY_ATTENTION[parts[-2]]
  return ".".join(parts)


def convert_folder(src: str | Path, dst: str | Path, dtype: str | None = None, variant: str | None = None) -> dict:
  """Convert a diffusers SDXL pipeline folder (with `model_index.json`) or a single component folder into our folder
  at `dst` (written as the module docstring says); returns the config written at its top."""
  src = common.source_folder(src)
  if not (src / "model_index.json").exists():
    component = read_component(src, variant)
    with outputs.staged_folder(dst, TOOL, [src]) as staging:
      ours = write_component(component, staging, dtype)
    return ours
  index = common.read_json(src / "model_index.json")
  missing = [name for name in PIPELINE_MODELS if not (src / name).is_dir()]
  if missing:
    raise ConversionError(f"{src}: the pipeline folder lacks {missing}")
  components = {name: read_component(src / name, variant) for name in PIPELINE_MODELS}
  with outputs.staged_folder(dst, TOOL, [src]) as staging:
    for name in tqdm(PIPELINE_MODELS, desc="components", unit="model"):
      write_component(components[name], staging / name, dtype)
    for name in PIPELINE_FILES:
      if (src / name).is_dir():
        shutil.copytree(src / name, staging / name)
    ours = {"model_type": "sdxl", "components": list(PIPELINE_MODELS),
            "source": {"format": "diffusers", "config": index}}
    (staging / pretrained.CONFIG).write_text(json.dumps(ours, indent=2))
  return ours


def export_folder(src: str | Path, dst: str | Path) -> None:
  """Write our folder `src` (a pipeline or one component) back in its source library's layout at `dst` (written as
  the module docstring says)."""
  with outputs.staged_folder(dst, TOOL, [src]) as staging:
    _export(Path(src), staging)


def _export(src: Path, dst: Path) -> None:
  """`export_folder` into `dst`, a new or empty folder."""
  ours = pretrained.read_config(src)
  if ours.get("model_type") == "sdxl":
    for name in ours["components"]:
      _export(src / name, dst / name)
    for name in PIPELINE_FILES:
      if (src / name).is_dir():
        shutil.copytree(src / name, dst / name)
    (dst / "model_index.json").write_text(json.dumps(ours["source"]["config"], indent=2))
    return
  source = ours.get("source") or {}
  if source.get("class_name") not in COMPONENTS:
    raise ConversionError(f"{src}: not a diffusers or transformers component folder "
                          f"(model_type {ours.get('model_type')!r})")
  _, module, config_cls = _module(source["class_name"])
  config = config_cls.from_dict(ours)
  flat = common.flatten(pretrained.load_params(src))
  expected = common.flat_shapes(module.param_shapes(config))
  wrong = sorted(set(flat) ^ set(expected))
  if wrong:
    raise ConversionError(f"{src}: parameters do not match the model: {wrong[:10]}")
  tensors = common.export(flat, rules(expected))
  dst.mkdir(parents=True, exist_ok=True)
  common.save_safetensors(tensors, dst)
  if source["format"] == "diffusers":   # diffusers looks for its own file name
    (dst / "model.safetensors").rename(dst / WEIGHTS["diffusers"])
  (dst / "config.json").write_text(json.dumps(source["config"], indent=2))


def main(argv=None) -> int:
  """The command line; its work runs under `errors.guard` (a user's error: one line, status 1; usage: 2)."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--src", required=True, help="a diffusers SDXL pipeline folder, or one of its component "
                      "folders (unet/, vae/, text_encoder/, text_encoder_2/); with --export, our folder")
  parser.add_argument("--dst", required=True, help="destination folder: new, empty, or one this converter wrote "
                      "(then replaced); not inside or around --src")
  parser.add_argument("--dtype", choices=["bfloat16", "float32"], default=None,
                      help="cast every tensor to this dtype (default: keep each tensor's stored dtype)")
  parser.add_argument("--variant", default=None, help="read the weights of this variant, e.g. fp16")
  parser.add_argument("--export", choices=["diffusers"], default=None,
                      help="write our folder at --src back as diffusers/transformers folders")
  args = parser.parse_args(argv)

  def run():
    if args.export:
      export_folder(args.src, args.dst)
      print(f"exported {args.src} to {args.dst}")
    else:
      ours = convert_folder(args.src, args.dst, args.dtype, args.variant)
      print(f"converted {args.src} → {args.dst} ({ours['model_type']})")
  return errors.guard(run)


if __name__ == "__main__":
  raise SystemExit(main())
