"""The LLaVA-OneVision runner: a loaded checkpoint with transformers' numpy interface, what `ureward_jax.load` returns
for a `llava_onevision` folder.

`LlavaOnevisionForConditionalGeneration` holds config and params and takes the same numpy arguments as transformers'
`LlavaOnevisionForConditionalGeneration.forward` (NCHW pixels, (H, W) image sizes), building the visual layout on
the host (`processing/feature_layout.py`) for the jittable `models.llava_onevision.LlavaOnevision`; `generate`
decodes with the KV cache of `runners/decode.py`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from ureward_jax import parallel, pretrained
from ureward_jax.models.llava_onevision import LlavaOnevision, LlavaOnevisionConfig, param_shapes
from ureward_jax.models.qwen2 import Qwen2ForCausalLM
from ureward_jax.processing import anyres
from ureward_jax.processing.feature_layout import LayoutConfig, VisualItem, build_layout, num_tokens
from ureward_jax.processing.image import ImageProcessor
from ureward_jax.runners.decode import decode, sampling_config


def layout_config(config: LlavaOnevisionConfig) -> LayoutConfig:
  """Where the visual features of `config`'s checkpoint go among its tokens (`processing/feature_layout.py`)."""
  return LayoutConfig(tokens_per_side=config.vision.tokens_per_side, tile=config.vision.image_size,
                      grid_pinpoints=config.image_grid_pinpoints, aspect_ratio=config.vision_aspect_ratio,
                      video_newline=config.video_newline, video_pool=config.video_pool,
                      exact_round=config.unpad_exact_round)


def image_processor(config: LlavaOnevisionConfig) -> ImageProcessor:
  """The pixel preprocessing the tower and tiling of `config`'s checkpoint take."""
  return ImageProcessor(size=config.vision.image_size, patch_size=config.vision.patch_size,
                        grid_pinpoints=config.image_grid_pinpoints, aspect_ratio=config.vision_aspect_ratio)


# One image, video or frame as the model receives it: its layout item and its pixels (n_patches, C, H, W), NCHW.
Visual = tuple[VisualItem, np.ndarray]


def hf_visuals(config: LlavaOnevisionConfig, pixel_values=None, image_sizes=None, pixel_values_videos=None,
               batch_num_images=None) -> list[Visual]:
  """The visuals of transformers-style arguments: tiled images (untiled when `batch_num_images` says several per
  sample), then videos; padding patches beyond each image's count are dropped as transformers does."""
  visuals = []
  if pixel_values is not None:
    pixel_values = np.asarray(pixel_values)
    if pixel_values.ndim == 4:
      pixel_values = pixel_values[:, None]
    if image_sizes is None:
      raise ValueError("pixel_values needs image_sizes ((H, W) per image)")
    image_sizes = np.asarray(image_sizes).reshape(-1, 2)
    if len(image_sizes) != len(pixel_values):
      raise ValueError(f"{len(pixel_values)} images in pixel_values but {len(image_sizes)} image_sizes")
    tiled = [True] * len(image_sizes) if batch_num_images is None else \
        [n == 1 for n in np.asarray(batch_num_images).tolist() for _ in range(n)]
    if len(tiled) != len(image_sizes):
      raise ValueError(f"batch_num_images sums to {len(tiled)} but {len(image_sizes)} images were given")
    for pixels, size, tile in zip(pixel_values, image_sizes, tiled):
      size = (int(size[0]), int(size[1]))
      n = anyres.num_patches(size, config.image_grid_pinpoints, config.vision.image_size) if tile else 1
      if n > pixels.shape[0]:
        raise ValueError(f"an image of size {size} needs {n} patches but pixel_values holds {pixels.shape[0]}")
      visuals.append((VisualItem("tiled", n, size) if tile else VisualItem("single"), pixels[:n]))
  if pixel_values_videos is not None:
    visuals += [(VisualItem("video", len(frames)), frames) for frames in np.asarray(pixel_values_videos)]
  return visuals


def layout_arrays(config: LlavaOnevisionConfig, input_ids: np.ndarray, visuals: list[Visual]):
  """Patches (P, H, W, C) and the layout arrays (src, weight, dest) for `LlavaOnevision.embed`.

  Videos fill the `video_token_id` placeholders and everything else the `image_token_id` ones, each group in
  order, as transformers scatters them.
  """
  if not visuals:
    return None, None, None, None
  groups = {False: [], True: []}
  for item, pixels in visuals:
    if len(pixels) != item.num_patches:
      raise ValueError(f"a {item.kind} item takes {item.num_patches} patches, got pixels for {len(pixels)}")
    groups[item.kind == "video"].append((item, pixels))
  ordered = groups[False] + groups[True]
  layout = layout_config(config)
  src, weight = build_layout([item for item, _ in ordered], layout)
  flat_ids = np.asarray(input_ids).reshape(-1)
  dest = []
  for is_video, token_id in ((False, config.image_token_id), (True, config.video_token_id)):
    expected = sum(num_tokens(item, layout) for item, _ in groups[is_video])
    positions = np.flatnonzero(flat_ids == token_id)
    if len(positions) != expected:
      what = "video" if is_video else "image"
      raise ValueError(f"{what} features and {what} tokens do not match: {len(positions)} placeholder tokens "
                       f"(id {token_id}) in input_ids, {expected} features")
    dest.append(positions)
  pixels = np.concatenate([p for _, p in ordered]).transpose(0, 2, 3, 1)
  return pixels, src, weight, np.concatenate(dest).astype(np.int32)


@dataclasses.dataclass
class LlavaOnevisionForConditionalGeneration:
  """A loaded checkpoint: `config`, `params`, the Flax `module`, and transformers-compatible `forward`.

  With a `mesh`, the params are sharded on it (see `parallel.py`) and every call shards activations too.
  """
  config: LlavaOnevisionConfig
  params: Any
  module: LlavaOnevision
  mesh: Mesh | None = None

  @classmethod
  def from_params(cls, config: LlavaOnevisionConfig, params, dtype=jnp.float32, mesh: Mesh | None = None,
                  **module_kwargs):
    return cls(config, params, LlavaOnevision(config, dtype=dtype, **module_kwargs), mesh)

  def rules(self):
    """The activation sharding rules of this model's mesh (nothing without one): wrap calls into `module` in it."""
    return parallel.activation_rules(self.mesh) if self.mesh is not None else contextlib.nullcontext()

  @functools.cached_property
  def _jitted(self):
    return jax.jit(self.module.apply)

  @functools.cached_property
  def _embed(self):
    return jax.jit(functools.partial(self.module.apply, method="embed"))

  def forward(self, input_ids, pixel_values=None, image_sizes=None, pixel_values_videos=None,
              image_sizes_videos=None, attention_mask=None, position_ids=None, batch_num_images=None) -> np.ndarray:
    """Logits (B, T, V) as numpy, for the arguments of transformers' `LlavaOnevisionForConditionalGeneration`.

    pixel_values (n_images, max_patches, 3, H, W) NCHW as the processor pads them; image_sizes (n_images, 2) as
    (H, W); pixel_values_videos (n_videos, frames, 3, H, W). Without `position_ids`, positions are 0..T-1 in every
    row as in transformers (pass them for left-padded batches). `image_sizes_videos` is accepted and unused, as there.
    """
    del image_sizes_videos
    visuals = hf_visuals(self.config, pixel_values, image_sizes, pixel_values_videos, batch_num_images)
    return self.logits(input_ids, attention_mask, position_ids, visuals)

  def logits(self, input_ids, attention_mask=None, position_ids=None, visuals: list[Visual] = ()) -> np.ndarray:
    """Logits (B, T, V) for placeholder-expanded `input_ids` and any visuals (e.g. from `splice_markers`)."""
    input_ids = np.asarray(input_ids)
    batch, length = input_ids.shape
    attention_mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask)
    if position_ids is None:
      position_ids = np.broadcast_to(np.arange(length), (batch, length))
    pixels, src, weight, dest = layout_arrays(self.config, input_ids, list(visuals))
    with self.rules():
      logits = self._jitted({"params": self.params}, input_ids, attention_mask, np.asarray(position_ids), pixels,
                            src, weight, dest)
    return np.asarray(logits)

  def generate(self, input_ids, attention_mask=None, pixel_values=None, image_sizes=None, pixel_values_videos=None,
               batch_num_images=None, *, visuals: list[Visual] | None = None, max_new_tokens: int = 64,
               eos_token_id=None, pad_token_id: int = 0, temperature: float = 0.0, top_k: int = 0,
               top_p: float = 1.0, seed: int = 0) -> np.ndarray:
    """New tokens (B, max_new_tokens) for a left-padded batch, padded with `pad_token_id` after each row's end.

    Visual inputs as in `forward`, or as `visuals`; greedy when temperature is 0, else sampled with `seed`.
    """
    input_ids = np.asarray(input_ids)
    attention_mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask)
    if visuals is None:
      visuals = hf_visuals(self.config, pixel_values, image_sizes, pixel_values_videos, batch_num_images)
    pixels, src, weight, dest = layout_arrays(self.config, input_ids, list(visuals))
    cfg = sampling_config(max_new_tokens, eos_token_id, pad_token_id=pad_token_id, temperature=temperature,
                          top_k=top_k, top_p=top_p)
    language_model = Qwen2ForCausalLM(self.config.text, dtype=self.module.dtype, param_dtype=self.module.param_dtype,
                                      attention_backend=self.module.attention_backend)
    with self.rules():
      embeds = self._embed({"params": self.params}, input_ids, pixels, src, weight, dest)
      tokens, _ = decode(language_model, self.params["language_model"], embeds, attention_mask,
                         jax.random.key(seed), cfg)
    return np.asarray(tokens)


def load(path, config: dict[str, Any], dtype=jnp.float32, param_dtype=None, mesh: Mesh | None = None,
         **module_kwargs) -> LlavaOnevisionForConditionalGeneration:
  """The `pretrained` loader of `llava_onevision` folders: params on the first device, or sharded over `mesh`."""
  config = LlavaOnevisionConfig.from_dict(config)
  params = pretrained.load_params(path, param_dtype)
  if mesh is None:
    params = jax.device_put(params, jax.devices()[0])
  else:
    params = parallel.place(params, parallel.param_shardings(param_shapes(config, boxed=True), mesh))
  return LlavaOnevisionForConditionalGeneration.from_params(config, params, dtype=dtype, mesh=mesh, **module_kwargs)


pretrained.register("llava_onevision", load)
