"""Encode Diffusion-DPO pairs once: the VAE posterior of every image and SDXL's text conditioning of every distinct
caption, written to `data.encoded` (layout: `ureward_jax.data.encoded_pairs`). Training with the same config then
reads them instead of images and loads no encoder (`python -m launch.encode_pairs`).

One host, data-parallel over its devices (`mesh`), in chunks of one training micro-batch. Progress is saved after
every chunk: run the same command again after an interruption and it continues where it stopped.
"""

from __future__ import annotations

import os

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from ureward_jax import parallel
from ureward_jax.data.encoded_pairs import EncodedFolder, distinct_captions, settings_for
from ureward_jax.data.image_pairs import BuildPair
from ureward_jax.errors import UserError
from ureward_jax.processing.clip_tokenizer import CLIPTokenizer
from ureward_jax.train import runner
from ureward_jax.train.tasks.diffusion_dpo import DiffusionDPO, FrozenEncoders


def encode(config: ml_collections.ConfigDict) -> str:
  """Write (or finish writing) `config.data.encoded` for the config's pairs and pipeline; returns the folder."""
  runner.check_config(config, runner.config_keys(config, DiffusionDPO))
  folder, checkpoint = config.data.encoded, config.model.checkpoint
  if not folder:
    raise UserError("set --config.data.encoded: the folder the encoded pairs go to")
  if jax.process_count() > 1:
    raise UserError("the encoding pass runs on one host; run it there, then train on any number")
  mesh = parallel.make_mesh(**config.mesh)
  task = DiffusionDPO(config, mesh)
  records, data, chunk = task.records, task.data_config(), task.micro
  if not records:
    raise UserError(f"{config.data.train} has no image pairs to encode")
  captions, caption_index = distinct_captions(records)
  encoders = FrozenEncoders(checkpoint, mesh, jnp.dtype(config.model.dtype))
  rows = parallel.data_sharding(mesh, batch_axis=0)
  pixels = jax.ShapeDtypeStruct((2 * chunk, data.resolution, data.resolution, 3), jnp.float32, sharding=rows)
  ids = jax.ShapeDtypeStruct((chunk, 77), jnp.int32, sharding=rows)
  encode_images, encode_captions = encoders.image_encoder(), encoders.caption_encoder()
  latent = jax.eval_shape(encode_images, pixels)[0].shape[1:]
  prompt_embeds, text_embeds = jax.eval_shape(encode_captions, ids, ids)
  n, c = len(records), len(captions)
  out = EncodedFolder(folder, settings_for(records, data, checkpoint), {
      "latent_mean": (n, 2, *latent), "latent_logvar": (n, 2, *latent), "weight": (n,), "caption_index": (n,),
      "prompt_embeds": (c, *prompt_embeds.shape[1:]), "text_embeds": (c, *text_embeds.shape[1:])})
  if out.progress["complete"]:
    logging.info("%s is already complete", folder)
    return folder
  out.arrays["caption_index"][:] = caption_index

  tokenizers = [CLIPTokenizer(os.path.join(checkpoint, name)) for name in ("tokenizer", "tokenizer_2")]
  with parallel.activation_rules(mesh), tqdm(total=c, initial=out.progress["captions_done"], unit="caption",
                                             desc="encoding captions") as bar:
    for start in range(out.progress["captions_done"], c, chunk):
      texts = _padded(captions[start:start + chunk], chunk)
      arrays = [jax.device_put(t(texts), rows) for t in tokenizers]
      count = min(chunk, c - start)
      for key, value in zip(("prompt_embeds", "text_embeds"), encode_captions(*arrays)):
        out.arrays[key][start:start + count] = np.asarray(value)[:count]
      out.save(captions_done=start + count)
      bar.update(count)

  build = BuildPair(records, data.resolution, data.random_flip, data.seed, os.path.join(checkpoint, "tokenizer"),
                    os.path.join(checkpoint, "tokenizer_2"))
  # Positions equal record indices before the slice, so every flip is epoch 0's.
  ds = grain.MapDataset.range(n).map_with_index(build)[out.progress["pairs_done"]:].batch(chunk)
  batches = ds.to_iter_dataset(grain.ReadOptions(num_threads=0 if data.workers else 1))
  if data.workers:
    batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.workers))
  with parallel.activation_rules(mesh), tqdm(total=n, initial=out.progress["pairs_done"], unit="pair",
                                             desc="encoding images") as bar:
    for batch in batches:
      start, count = int(batch["index"][0]), len(batch["index"])
      pixels = _padded_rows(batch["pixels"], chunk).reshape(2 * chunk, *batch["pixels"].shape[2:])
      mean, logvar = (np.asarray(a).reshape(chunk, 2, *latent)[:count]
                      for a in encode_images(jax.device_put(pixels, rows)))
      out.arrays["latent_mean"][start:start + count] = mean
      out.arrays["latent_logvar"][start:start + count] = logvar
      out.arrays["weight"][start:start + count] = 1 - batch["bad"]
      out.save(pairs_done=start + count)
      bar.update(count)
  out.save(complete=True)
  logging.info("encoded %d pairs and %d captions into %s", n, c, folder)
  return folder


def _padded(items: list, size: int) -> list:
  """`items` filled up to `size` with its last element: every chunk has the shape the encoders compiled for."""
  return items + items[-1:] * (size - len(items))


def _padded_rows(array: np.ndarray, size: int) -> np.ndarray:
  return np.concatenate([array, np.repeat(array[-1:], size - len(array), axis=0)])

