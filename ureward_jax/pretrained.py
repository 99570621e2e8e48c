"""The checkpoint folder format: `config.json` (our config, with `model_type`), `params/` (Orbax), tokenizer files.

`load(path)` reads any converted folder and returns the model's wrapper (`.config`, `.params`, `.module`,
`.forward`); `save` writes one. Converters produce these folders; nothing here reads PyTorch formats.

Which wrapper a `model_type` loads into is a registry: each model family calls `register` in its own module
(`runners/`, `pipelines/`), and this module imports none of them; importing `ureward_jax` imports them all.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from ureward_jax.errors import UserError

CONFIG = "config.json"
PARAMS = "params"
SCHEDULER = "scheduler/scheduler_config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "chat_template.json", "chat_template.jinja", "generation_config.json",
                   "preprocessor_config.json", "processor_config.json")

# loader(path, config, dtype=, param_dtype=, mesh=, **module_kwargs) → the loaded wrapper; `config` is the folder's
# config.json as a dict.
Loader = Callable[..., Any]
_LOADERS: dict[str, Loader] = {}


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
  """The `config.json` of a converted checkpoint folder, or a UserError saying why `path` is not one."""
  path = Path(path)
  if path.is_file():
    raise UserError(f"{path} is a file; a converted checkpoint is a folder (with {CONFIG} and {PARAMS}/)")
  if not (path / CONFIG).exists():
    raise FileNotFoundError(f"{path} is not a converted checkpoint folder: {CONFIG} is missing (convert a PyTorch "
                            "checkpoint first: `python -m converters.llava_onevision`, `converters.sdxl` or "
                            "`converters.t2v_turbo`)")
  try:
    config = json.loads((path / CONFIG).read_text())
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UserError(f"{path / CONFIG} is not valid JSON ({e}); convert the checkpoint again") from None
  if not isinstance(config, dict):
    raise UserError(f"{path / CONFIG} is not a JSON object; convert the checkpoint again")
  return config


def read_scheduler(path: str | Path) -> dict[str, Any]:
  """The noise schedule of a pipeline folder: `scheduler/scheduler_config.json`, where every pipeline folder keeps it
  (diffusers' place: SDXL's is diffusers' own file, T2V-Turbo's holds VideoCrafter2's schedule)."""
  file = Path(path) / SCHEDULER
  if not file.exists():
    raise FileNotFoundError(f"{file} is missing: the pipeline folder is incomplete (convert it again)")
  return json.loads(file.read_text())


def load_params(path: str | Path, dtype=None) -> Any:
  """The parameter tree of a checkpoint folder as host numpy arrays, optionally cast to `dtype`."""
  path = Path(path).absolute()
  if not (path / PARAMS).exists():
    raise FileNotFoundError(f"{path / PARAMS} is missing: the checkpoint folder is incomplete")
  with ocp.StandardCheckpointer() as checkpointer:
    params = checkpointer.restore(path / PARAMS)
  return jax.tree.map(lambda x: np.asarray(x, dtype=dtype) if dtype is not None else np.asarray(x), params)


def register(model_type: str, loader: Loader) -> None:
  """Have `load` read folders whose config.json says `model_type` with `loader`."""
  if model_type in _LOADERS:
    raise ValueError(f"model_type {model_type!r} already has a loader: {_LOADERS[model_type]}")
  _LOADERS[model_type] = loader


def single_device(config_class, wrapper_class) -> Loader:
  """The loader of a model that runs on one device (the diffusion components): `config_class.from_dict` of the
  folder's config, params on the first device, `wrapper_class.from_params`. A `mesh` is refused."""
  def load_on_one_device(path, config, dtype=jnp.float32, param_dtype=None, mesh=None, **module_kwargs):
    if mesh is not None:
      raise UserError(f"{path}: a {config['model_type']} checkpoint loads onto one device; shard it in the "
                      "training step")
    config = config_class.from_dict(config)
    params = jax.device_put(load_params(path, param_dtype), jax.devices()[0])
    return wrapper_class.from_params(config, params, dtype=dtype, **module_kwargs)
  return load_on_one_device


def load(path: str | Path, dtype=jnp.float32, param_dtype=None, mesh=None, **module_kwargs):
  """Load a converted checkpoint folder, ready to run.

  dtype: the compute dtype; param_dtype: cast the stored params (None keeps them as stored). mesh: shard the
  params over a `parallel.make_mesh(...)` mesh (a 7B in bf16 across several accelerators); without one they go to
  the first device. Either way they are placed once here, so calls never move them again.
  """
  config = read_config(path)
  model_type = config.get("model_type")
  if model_type not in _LOADERS:
    raise UserError(f"{path}: unknown model_type {model_type!r} in {CONFIG}; known: {sorted(_LOADERS)}")
  return _LOADERS[model_type](path, config, dtype=dtype, param_dtype=param_dtype, mesh=mesh, **module_kwargs)
