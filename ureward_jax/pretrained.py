"""The checkpoint folder format: `config.json` (our config, with `model_type`), `params/` (Orbax), tokenizer files.

`load(path)` reads any converted folder and returns the model's wrapper (`.config`, `.params`, `.module`,
`.forward`); `save` writes one. Converters produce these folders; nothing here reads PyTorch formats.
"""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from ureward_jax import parallel

CONFIG = "config.json"
PARAMS = "params"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "chat_template.json", "chat_template.jinja", "generation_config.json",
                   "preprocessor_config.json", "processor_config.json")


def save(path: str | Path, config: dict[str, Any], params: Any, copy_from: str | Path | None = None,
         files: Iterable[str] = TOKENIZER_FILES) -> Path:
  """Write a checkpoint folder; tokenizer (and processor) files present in `copy_from` are copied across."""
  path = Path(path).absolute()
  path.mkdir(parents=True, exist_ok=True)
  if (path / PARAMS).exists():
    raise FileExistsError(f"{path / PARAMS} already exists; choose an empty destination or remove it")
  (path / CONFIG).write_text(json.dumps(config, indent=2))
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path / PARAMS, params)
  if copy_from is not None:
    for name in files:
      if (Path(copy_from) / name).exists():
        shutil.copy(Path(copy_from) / name, path / name)
  return path


def read_config(path: str | Path) -> dict[str, Any]:
  path = Path(path)
  if not (path / CONFIG).exists():
    raise FileNotFoundError(f"{path} is not a converted checkpoint folder: {CONFIG} is missing (convert a PyTorch "
                            "checkpoint first: `python -m converters.llava_onevision`, `converters.sdxl` or "
                            "`converters.t2v_turbo`)")
  return json.loads((path / CONFIG).read_text())


def load_params(path: str | Path, dtype=None) -> Any:
  """The parameter tree of a checkpoint folder as host numpy arrays, optionally cast to `dtype`."""
  path = Path(path).absolute()
  if not (path / PARAMS).exists():
    raise FileNotFoundError(f"{path / PARAMS} is missing: the checkpoint folder is incomplete")
  with ocp.StandardCheckpointer() as checkpointer:
    params = checkpointer.restore(path / PARAMS)
  return jax.tree.map(lambda x: np.asarray(x, dtype=dtype) if dtype is not None else np.asarray(x), params)


def load(path: str | Path, dtype=jnp.float32, param_dtype=None, mesh=None, **module_kwargs):
  """Load a converted checkpoint folder, ready to run.

  dtype: the compute dtype; param_dtype: cast the stored params (None keeps them as stored). mesh: shard the
  params over a `parallel.make_mesh(...)` mesh (a 7B in bf16 across several accelerators); without one they go to
  the first device. Either way they are placed once here, so calls never move them again.
  """
  config = read_config(path)
  model_type = config.get("model_type")
  if model_type == "llava_onevision":
    from ureward_jax.models.llava_onevision import (
      LlavaOnevisionConfig,
      LlavaOnevisionForConditionalGeneration,
      param_shapes,
    )
    config = LlavaOnevisionConfig.from_dict(config)
    params = load_params(path, param_dtype)
    if mesh is None:
      params = jax.device_put(params, jax.devices()[0])
    else:
      params = parallel.place(params, parallel.param_shardings(param_shapes(config, boxed=True), mesh))
    return LlavaOnevisionForConditionalGeneration.from_params(config, params, dtype=dtype, mesh=mesh,
                                                              **module_kwargs)
  if model_type in SINGLE_DEVICE_MODELS:
    module_name, config_name, wrapper_name = SINGLE_DEVICE_MODELS[model_type]
    if mesh is not None:
      raise ValueError(f"{path}: a {model_type} checkpoint loads onto one device; shard it in the training step")
    module = importlib.import_module(module_name)
    config = getattr(module, config_name).from_dict(config)
    params = jax.device_put(load_params(path, param_dtype), jax.devices()[0])
    return getattr(module, wrapper_name).from_params(config, params, dtype=dtype, **module_kwargs)
  if model_type == "sdxl":
    from ureward_jax.pipelines.sdxl import SDXLPipeline
    return SDXLPipeline.from_folder(path, dtype=dtype, param_dtype=param_dtype)
  if model_type == "t2v_turbo":
    from ureward_jax.pipelines.t2v_turbo import T2VTurboPipeline
    return T2VTurboPipeline.from_folder(path, dtype=dtype, param_dtype=param_dtype)
  raise ValueError(f"{path}: unknown model_type {model_type!r} in {CONFIG}")


# model_type → (module, config class, wrapper class) of the image-generation components.
SINGLE_DEVICE_MODELS = {
    "unet2d_condition": ("ureward_jax.models.unet2d", "UNet2DConditionConfig", "UNet"),
    "autoencoder_kl": ("ureward_jax.models.vae", "AutoencoderKLConfig", "VAE"),
    "clip_text": ("ureward_jax.models.clip_text", "CLIPTextConfig", "CLIPTextEncoder"),
    "unet3d_condition": ("ureward_jax.models.unet3d", "UNet3DConditionConfig", "UNet3D"),
    "videocrafter_unet": ("ureward_jax.models.unet3d", "VideoCrafterUNetConfig", "VideoCrafter"),
}
