"""The LLaVA-NeXT token layouts that transformers cannot express, against references built from its modules.

UnifiedReward's pairwise video inference feeds every frame as a plain image (no pooling, no newline); its
training layout pools video frames and adds a newline after every row ("grid"). The references assemble
`inputs_embeds` from transformers' own tower, projector, pooling and newline and run its language model.
"""

import math

import numpy as np
import pytest
import torch

import ureward_jax
from converters.llava_onevision import convert_folder
from tests import tiny_llava as T
from tests.tiny_llava import FULL, reference_logits
from ureward_jax.processing.feature_layout import IMAGE_MARKER, VisualItem, num_tokens, splice_markers
from ureward_jax.runners.llava import layout_config


@pytest.fixture(scope="module")
def next_pair(tmp_path_factory):
  hf = T.hf_model(seed=4)
  root = tmp_path_factory.mktemp("llava_next")
  convert_folder(T.save_llava_next(hf, root / "src"), root / "ours", "float32")
  return hf, ureward_jax.load(root / "ours")


def reference_from_features(hf, ids, mask, positions, features):
  """Logits of transformers' language model with `features` (N, D) written over the placeholder positions."""
  ids_t = torch.tensor(ids)
  with torch.no_grad():
    embeds = hf.model.get_input_embeddings()(torch.where(ids_t < 0, 0, ids_t)).clone()
    placeholder = (ids_t == T.IMAGE_TOKEN) | (ids_t == T.VIDEO_TOKEN)
    embeds[placeholder] = features
    hidden = hf.model.language_model(inputs_embeds=embeds, attention_mask=torch.tensor(mask),
                                     position_ids=torch.tensor(positions)).last_hidden_state
    return hf.lm_head(hidden).numpy()


def projected(hf, frames):
  with torch.no_grad():
    hidden = hf.model.vision_tower(torch.tensor(frames), output_hidden_states=True).hidden_states[-1]
    return hf.model.multi_modal_projector(hidden)


def test_unifiedreward_frames_as_plain_images(next_pair):
  """Two 3-frame videos per prompt, each frame one marker → 25 plain tokens; a left-padded batch of two prompts."""
  hf, ours = next_pair
  rng = np.random.RandomState(0)
  frames = rng.randn(12, 3, T.TILE, T.TILE).astype(np.float32)
  prefix = lambda n: rng.randint(1, T.IMAGE_TOKEN, n).tolist()
  rows = [prefix(5) + [IMAGE_MARKER] * 6 + prefix(9), prefix(2) + [IMAGE_MARKER] * 6 + prefix(4)]
  items = [VisualItem("plain")] * 12
  layout = layout_config(ours.config)
  ids, mask, positions = splice_markers(rows, items, layout, T.IMAGE_TOKEN, T.VIDEO_TOKEN)
  assert ids.shape[1] == 5 + 6 * 25 + 9
  logits = ours.logits(ids, mask, positions, [(item, f[None]) for item, f in zip(items, frames)])
  ref = reference_from_features(hf, ids, mask, positions, projected(hf, frames).reshape(-1, hf.config.text_config.hidden_size))
  real = mask.astype(bool)
  assert T.max_rel(logits[real], ref[real]) <= FULL


def test_grid_video_layout(next_pair):
  """Pooled frames with a newline after each pooled row, the layout UnifiedReward's training config sets."""
  hf, ours = next_pair
  assert ours.config.video_newline == "grid"
  rng = np.random.RandomState(1)
  frames = rng.randn(4, 3, T.TILE, T.TILE).astype(np.float32)
  item = VisualItem("video", 4)
  ids, mask, positions = splice_markers([[3, 4, IMAGE_MARKER, 5, 6]], [item], layout_config(ours.config), T.IMAGE_TOKEN,
                                        T.VIDEO_TOKEN)
  side = math.ceil(5 / 2)
  assert num_tokens(item, layout_config(ours.config)) == 4 * side * (side + 1)
  with torch.no_grad():
    pooled = hf.model.apply_pooling(projected(hf, frames)).reshape(4, side, side, -1)
    newline = hf.model.image_newline.expand(4, side, 1, -1)
    features = torch.cat([pooled, newline], dim=2).reshape(-1, pooled.shape[-1])
  ref = reference_from_features(hf, ids, mask, positions, features)
  assert T.max_rel(ours.logits(ids, mask, positions, [(item, frames)]), ref) <= FULL


def test_pairwise_images_each_tiled(next_pair):
  """LLaVA-NeXT's pairwise image prompt: two markers, each image with full anyres tiling (sizes where LLaVA-NeXT's
  floor and transformers' rounding agree), equal to transformers' single-image path on the same expansion."""
  hf, ours = next_pair
  rng = np.random.RandomState(2)
  sizes = [(150, 100), (90, 260)]
  layout = layout_config(ours.config)
  from ureward_jax.processing import anyres
  items = [VisualItem("tiled", anyres.num_patches(s, ours.config.image_grid_pinpoints, T.TILE), s) for s in sizes]
  pixels = [rng.randn(i.num_patches, 3, T.TILE, T.TILE).astype(np.float32) for i in items]
  ids, mask, positions = splice_markers([[7, IMAGE_MARKER, 8, IMAGE_MARKER, 9]], items, layout, T.IMAGE_TOKEN,
                                        T.VIDEO_TOKEN)
  padded = np.zeros((2, max(i.num_patches for i in items), 3, T.TILE, T.TILE), np.float32)
  for k, p in enumerate(pixels):
    padded[k, :len(p)] = p
  ref = reference_logits(hf, input_ids=ids, pixel_values=padded, image_sizes=np.array(sizes))
  assert T.max_rel(ours.logits(ids, mask, positions, list(zip(items, pixels))), ref) <= FULL


def test_marker_count_must_match(next_pair):
  _, ours = next_pair
  with pytest.raises(ValueError, match="2 image markers"):
    splice_markers([[IMAGE_MARKER, 1, IMAGE_MARKER]], [VisualItem("plain")], layout_config(ours.config), T.IMAGE_TOKEN,
                   T.VIDEO_TOKEN)
