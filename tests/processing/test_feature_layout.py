"""The visual-token layout: gathers with 4-tap weights reproduce PyTorch's resampling and the newline layouts."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ureward_jax.processing.feature_layout import LayoutConfig, VisualItem, build_layout, item_layout, num_tokens

PINPOINTS = tuple((70 * i, 70 * j) for i in range(1, 5) for j in range(1, 5))


def layout(**kw):
  return LayoutConfig(tokens_per_side=5, tile=70, grid_pinpoints=PINPOINTS, **kw)


def apply(src, weight, table):
  return np.einsum("vk,vkd->vd", weight, table[src])


@pytest.mark.parametrize("in_hw,out_hw", [((27, 27), (14, 14)), ((81, 71), (60, 53)), ((20, 20), (15, 15)),
                                          ((7, 30), (3, 29)), ((5, 5), (3, 3))])
def test_resize_equals_torch_bilinear(in_hw, out_hw):
  from ureward_jax.processing.feature_layout import _resize
  rng = np.random.RandomState(0)
  features = rng.randn(in_hw[0] * in_hw[1], 6).astype(np.float32)
  src, weight = _resize(np.arange(features.shape[0]).reshape(in_hw), *out_hw)
  ours = apply(src, weight, features)
  ref = F.interpolate(torch.tensor(features.T.reshape(1, 6, *in_hw)), size=out_hw, mode="bilinear")
  np.testing.assert_allclose(ours, ref[0].reshape(6, -1).T.numpy(), atol=1e-6)


def test_average_pool_equals_avg_pool2d():
  cfg = layout(video_newline="no_token", video_pool="average")
  rng = np.random.RandomState(1)
  features = rng.randn(2 * 25 + 1, 3).astype(np.float32)
  src, weight = build_layout([VisualItem("video", 2)], cfg)
  ref = F.avg_pool2d(torch.tensor(features[:50].reshape(2, 5, 5, 3)).permute(0, 3, 1, 2), 2)
  np.testing.assert_allclose(apply(src, weight, features), ref.permute(0, 2, 3, 1).reshape(-1, 3).numpy(),
                             atol=1e-6)


@pytest.mark.parametrize("newline,count", [("one_token", 3 * 9 + 1), ("grid", 3 * 3 * 4), ("frame", 3 * 10),
                                           ("no_token", 3 * 9)])
def test_video_newline_layouts(newline, count):
  cfg = layout(video_newline=newline)
  src, _ = item_layout(VisualItem("video", 3), cfg)
  assert src.shape[0] == count
  newline_at = np.flatnonzero(src[:, 0] == -1)
  expected = {"one_token": [count - 1], "grid": np.arange(3, count, 4), "frame": np.arange(9, count, 10),
              "no_token": []}[newline]
  np.testing.assert_array_equal(newline_at, expected)


def test_items_index_their_own_patches_and_the_shared_newline():
  cfg = layout()
  items = [VisualItem("plain"), VisualItem("single"), VisualItem("tiled", 3, (70, 140))]
  src, weight = build_layout(items, cfg)
  assert src.shape[0] == sum(num_tokens(i, cfg) for i in items)
  newline = 5 * 25
  assert src[:25, 0].tolist() == list(range(25))
  assert src[25:50, 0].tolist() == list(range(25, 50)) and src[50, 0] == newline
  assert src.max() == newline and src[51:76, 0].tolist() == list(range(50, 75))
  np.testing.assert_allclose(weight.sum(axis=1), 1.0, rtol=1e-6)


def test_bad_items_are_named():
  with pytest.raises(ValueError, match="needs 3 patches"):
    item_layout(VisualItem("tiled", 2, (70, 140)), layout())
  with pytest.raises(ValueError, match="unknown visual item kind"):
    item_layout(VisualItem("panorama"), layout())
  with pytest.raises(ValueError, match="unknown video newline"):
    item_layout(VisualItem("video", 1), layout(video_newline="sometimes"))
