"""`processing.image` against transformers' LLaVA-OneVision processors, and `anyres`' geometry against transformers.

References: `LlavaOnevisionImageProcessorPil` (pixels), `LlavaOnevisionProcessor` (token counts), `unpad_image` and
`select_best_resolution` (geometry). The transformers video processor needs torchvision, which the test environment
lacks, so video pixels are checked against a torch restatement of its CPU path (and against the real processor when
torchvision is importable).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ureward_jax.models.llava_onevision import DEFAULT_PINPOINTS
from ureward_jax.processing import anyres
from ureward_jax.processing.image import ImageProcessor, resize_bicubic_aa_uint8

MEAN = STD = (0.5, 0.5, 0.5)
# OpenAI CLIP's statistics (transformers' class defaults): unequal per channel, so channel mix-ups would show.
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
PINPOINTS = [list(p) for p in DEFAULT_PINPOINTS]
# The reference must match "to float32 rounding"; in practice the outputs are bit-identical (max diff 0.0).
ATOL = 1e-6


def random_image(height: int, width: int, seed: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def processor() -> ImageProcessor:
  return ImageProcessor(grid_pinpoints=PINPOINTS)


@pytest.fixture(scope="module")
def hf_image_processor():
  pytest.importorskip("torch")
  module = pytest.importorskip("transformers.models.llava_onevision.image_processing_pil_llava_onevision")
  return module.LlavaOnevisionImageProcessorPil(image_mean=list(MEAN), image_std=list(STD))


@pytest.fixture(scope="module")
def hf_processor(hf_image_processor):
  """`LlavaOnevisionProcessor` without a tokenizer: its token-count methods only read the attributes set here."""
  module = pytest.importorskip("transformers.models.llava_onevision.processing_llava_onevision")
  proc = module.LlavaOnevisionProcessor.__new__(module.LlavaOnevisionProcessor)
  proc.image_processor = hf_image_processor
  proc.num_image_tokens = 729
  proc.vision_aspect_ratio = "anyres_max_9"
  proc.vision_feature_select_strategy = "full"
  proc.image_token, proc.video_token = "<image>", "<video>"
  return proc


def hf_image_token_counts(hf_processor, hf_out) -> list[int]:
  """How many `<image>` tokens the transformers processor writes for each image of a processed batch."""
  n_images = len(hf_out["image_sizes"])
  return [len(hf_processor.replace_image_token(hf_out, i)) // len("<image>") for i in range(n_images)]


def assert_same_batch(ours: dict, theirs) -> None:
  assert ours["pixel_values"].dtype == np.float32
  assert ours["pixel_values"].shape == theirs["pixel_values"].shape
  np.testing.assert_allclose(ours["pixel_values"], theirs["pixel_values"], rtol=0, atol=ATOL)
  np.testing.assert_array_equal(ours["image_sizes"], theirs["image_sizes"])
  assert ours["image_sizes"].dtype == np.int64
  np.testing.assert_array_equal(ours["batch_num_images"], theirs["batch_num_images"])


# --- pixels: images ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size_hw, seed", [
    ((899, 1024), 0),   # the transformers test vector: 3×3 tiles
    ((300, 1500), 1),   # odd aspect: 1×4 tiles, vertical padding
    ((50, 70), 2),      # tiny: up-scaled into one tile
    ((1500, 2000), 3),  # 4×6 tiles; its token map hits the anyres_max_9 cap
])
def test_single_image_matches_transformers(processor, hf_image_processor, hf_processor, size_hw, seed):
  image = random_image(*size_hw, seed)
  ours = processor([image])
  theirs = hf_image_processor([Image.fromarray(image)], return_tensors="np")
  assert_same_batch(ours, theirs)
  assert ours["pixel_values"].shape[1] == anyres.num_patches(size_hw, PINPOINTS, 384)
  assert hf_image_token_counts(hf_processor, theirs) == [processor.num_image_tokens(size_hw)]


def test_pil_and_array_inputs_agree(processor):
  image = random_image(120, 333, seed=4)
  np.testing.assert_array_equal(processor([image])["pixel_values"],
                                processor([Image.fromarray(image)])["pixel_values"])


def test_batch_of_single_images_pads_patch_axis(processor, hf_image_processor, hf_processor):
  images = [random_image(899, 1024, seed=5), random_image(50, 70, seed=6)]
  ours = processor(images)
  theirs = hf_image_processor([Image.fromarray(a) for a in images], return_tensors="np")
  assert_same_batch(ours, theirs)
  assert ours["pixel_values"].shape[:2] == (2, 10)
  assert not ours["pixel_values"][1, 2:].any()  # 2 real patches, then zero padding
  assert hf_image_token_counts(hf_processor, theirs) == [processor.num_image_tokens(a.shape[:2]) for a in images]


def test_multi_image_sample_matches_transformers(processor, hf_image_processor, hf_processor):
  tall, wide, square = random_image(300, 120, seed=7), random_image(90, 410, seed=8), random_image(200, 200, seed=9)
  ours = processor([tall, wide, square], batch_num_images=[3])
  theirs = hf_image_processor([[Image.fromarray(a) for a in (tall, wide, square)]], return_tensors="np")
  assert_same_batch(ours, theirs)
  assert ours["pixel_values"].shape[:2] == (3, 1)
  assert processor.num_image_tokens((300, 120), tiled=False) == 730
  assert hf_image_token_counts(hf_processor, theirs) == [730] * 3


def test_mixed_single_and_multi_image_samples(processor, hf_image_processor, hf_processor):
  a, b, c = random_image(899, 1024, seed=10), random_image(64, 96, seed=11), random_image(96, 64, seed=12)
  ours = processor([a, b, c], batch_num_images=[1, 2])
  theirs = hf_image_processor([[Image.fromarray(a)], [Image.fromarray(b), Image.fromarray(c)]], return_tensors="np")
  assert_same_batch(ours, theirs)
  assert hf_image_token_counts(hf_processor, theirs) == [6551, 730, 730]


def non_rgb_images() -> dict[str, Image.Image]:
  rgb = random_image(40, 60, seed=13)
  alpha = np.random.default_rng(14).integers(0, 256, (40, 60), dtype=np.uint8)
  palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
  palette.info["transparency"] = 3
  return {
      "RGBA": Image.fromarray(np.dstack([rgb, alpha])),
      "LA": Image.fromarray(np.dstack([rgb[..., 0], alpha])),
      "L": Image.fromarray(rgb[..., 1]),
      "P+transparency": palette,
      "CMYK": Image.fromarray(rgb).convert("CMYK"),
  }


@pytest.mark.parametrize("mode", list(non_rgb_images()))
def test_non_rgb_pil_images_are_converted_like_transformers(processor, hf_image_processor, mode):
  image = non_rgb_images()[mode]
  assert_same_batch(processor([image]), hf_image_processor([image], return_tensors="np"))
  assert_same_batch(processor([image, image], batch_num_images=[2]),
                    hf_image_processor([[image, image]], return_tensors="np"))


def test_other_mean_and_std_match_transformers():
  # The multi-image padding colour is int(255·mean) per channel: (122, 116, 104) here.
  hf_module = pytest.importorskip("transformers.models.llava_onevision.image_processing_pil_llava_onevision")
  theirs_processor = hf_module.LlavaOnevisionImageProcessorPil(image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
  a, b, c = random_image(200, 300, seed=30), random_image(64, 96, seed=31), random_image(96, 64, seed=32)
  ours = ImageProcessor(grid_pinpoints=PINPOINTS, image_mean=CLIP_MEAN, image_std=CLIP_STD)([a, b, c], batch_num_images=[1, 2])
  theirs = theirs_processor([[Image.fromarray(a)], [Image.fromarray(b), Image.fromarray(c)]], return_tensors="np")
  assert_same_batch(ours, theirs)


def test_default_fields_match_transformers(processor, hf_image_processor):
  assert [list(p) for p in processor.grid_pinpoints] == hf_image_processor.image_grid_pinpoints
  assert processor.size == hf_image_processor.size["height"] == hf_image_processor.size["width"]
  assert processor.tokens_per_side == 27


# --- pixels: video frames ---------------------------------------------------------------------------------------

def torch_video_reference(frames: np.ndarray, size: int, mean=MEAN, std=STD) -> np.ndarray:
  """The transformers video processor's CPU path, restated with torch (its own class needs torchvision).

  torchvision's `resize` hands uint8 bicubic input straight to `interpolate(antialias=True, align_corners=False)`
  on CPU, and the processor fuses the 1/255 rescale into mean and std: (x − 255·mean) / (255·std) in float32.
  """
  import torch
  x = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()
  x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
  mean = (torch.tensor(mean) * 255.0)[:, None, None]
  std = (torch.tensor(std) * 255.0)[:, None, None]
  return ((x.to(torch.float32) - mean) / std).numpy()


@pytest.mark.parametrize("size_hw", [(240, 320), (480, 854), (1000, 300), (384, 384)])
def test_video_frames_match_torch_restatement(processor, size_hw):
  pytest.importorskip("torch")
  frames = np.random.default_rng(15).integers(0, 256, (3, *size_hw, 3), dtype=np.uint8)
  ours = processor.preprocess_video(frames)
  assert ours.dtype == np.float32 and ours.shape == (3, 3, 384, 384)
  np.testing.assert_allclose(ours, torch_video_reference(frames, 384), rtol=0, atol=ATOL)


def test_video_frames_with_other_mean_and_std():
  pytest.importorskip("torch")
  frames = np.random.default_rng(33).integers(0, 256, (2, 200, 300, 3), dtype=np.uint8)
  ours = ImageProcessor(grid_pinpoints=PINPOINTS, image_mean=CLIP_MEAN, image_std=CLIP_STD).preprocess_video(frames)
  np.testing.assert_allclose(ours, torch_video_reference(frames, 384, CLIP_MEAN, CLIP_STD), rtol=0, atol=ATOL)


def test_video_accepts_a_list_of_frames(processor):
  frames = np.random.default_rng(17).integers(0, 256, (2, 50, 80, 3), dtype=np.uint8)
  as_list = processor.preprocess_video([Image.fromarray(f) for f in frames])
  np.testing.assert_array_equal(as_list, processor.preprocess_video(frames))

def test_plain_views_match_siglip_image_processor():
  """UnifiedReward's video scripts pass each frame through SigLIP's own processor: squash to a square tile."""
  pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  frames = [random_image(60, 80, seed=1), random_image(512, 512, seed=2)]
  want = transformers.SiglipImageProcessor(size={"height": 384, "width": 384})(
      [Image.fromarray(f) for f in frames], return_tensors="np")["pixel_values"]
  np.testing.assert_allclose(ImageProcessor(grid_pinpoints=PINPOINTS).plain_views(frames), want, atol=ATOL)
  np.testing.assert_allclose(ImageProcessor(grid_pinpoints=PINPOINTS).plain_views(np.stack([frames[1]] * 2)), want[[1, 1]], atol=ATOL)


@pytest.mark.parametrize("in_hw, out_hw", [((1, 1), (384, 384)), ((7, 3000), (33, 384)), ((997, 613), (384, 100)),
                                           ((50, 70), (50, 70))])
def test_uint8_antialiased_bicubic_matches_torch(in_hw, out_hw):
  torch = pytest.importorskip("torch")
  pixels = np.random.default_rng(18).integers(0, 256, (2, 3, *in_hw), dtype=np.uint8)
  theirs = torch.nn.functional.interpolate(torch.from_numpy(pixels), size=out_hw, mode="bicubic", antialias=True,
                                           align_corners=False).numpy()
  np.testing.assert_array_equal(resize_bicubic_aa_uint8(pixels, out_hw), theirs)


# --- token counts -----------------------------------------------------------------------------------------------

def test_documented_token_counts(processor):
  assert processor.num_image_tokens((899, 1024)) == 6551
  assert processor.num_image_tokens((2304, 2304)) == 7371
  assert processor.num_image_tokens((899, 1024), tiled=False) == 730
  assert processor.num_video_tokens(8) == 8 * 196 + 1


def test_image_token_counts_match_transformers(processor, hf_processor):
  rng = np.random.default_rng(19)
  sizes = [(899, 1024), (2304, 2304), (1500, 2000), (300, 1500), (50, 70), (1, 1), (1, 4000), (4000, 1),
           (369, 820)]  # (369, 820): rounding to 7 decimals and flooring disagree here
  sizes += [tuple(int(v) for v in rng.integers(1, 4000, 2)) for _ in range(300)]
  for height, width in sizes:
    assert processor.num_image_tokens((height, width)) == hf_processor._get_number_of_features(
        height, width, 384, 384), (height, width)


def test_floor_rounding_is_llava_next_only(processor, hf_processor):
  # transformers (processor and model) rounds the unpadded size to 7 decimals; LLaVA-NeXT floors it.
  assert hf_processor._get_number_of_features(369, 820, 384, 384) == processor.num_image_tokens((369, 820)) == 2403
  assert processor.num_image_tokens((369, 820), exact_round=False) == 2349


def test_video_token_counts_match_transformers(processor, hf_processor):
  for num_frames in (1, 8, 32):
    video = {"pixel_values_videos": [np.zeros((num_frames, 3, 384, 384), np.float32)]}
    assert len(hf_processor.replace_video_token(video, 0)) // len("<video>") == processor.num_video_tokens(num_frames)


# --- anyres geometry --------------------------------------------------------------------------------------------

def test_select_best_resolution_matches_transformers():
  hf_utils = pytest.importorskip("transformers.image_processing_utils")
  rng = np.random.default_rng(20)
  # Exact pinpoint sizes and their halves produce ties between candidates; random sizes cover the rest.
  sizes = [tuple(p) for p in PINPOINTS] + [(h // 2, w // 2) for h, w in PINPOINTS]
  sizes += [tuple(int(v) for v in rng.integers(1, 5000, 2)) for _ in range(2000)]
  small = [[28 * i, 28 * j] for i in range(1, 5) for j in range(1, 5)]
  for size in sizes:
    assert anyres.select_best_resolution(size, PINPOINTS) == tuple(hf_utils.select_best_resolution(size, PINPOINTS))
    assert anyres.select_best_resolution(size, small) == tuple(hf_utils.select_best_resolution(size, small))


def test_unpad_box_matches_transformers_unpad_image():
  torch = pytest.importorskip("torch")
  modeling = pytest.importorskip("transformers.models.llava_onevision.modeling_llava_onevision")
  rng = np.random.default_rng(21)
  cases = [((5, 5), (899, 1024)), ((3, 3), (369, 820))]
  cases += [(tuple(int(v) for v in rng.integers(1, 7, 2)), tuple(int(v) for v in rng.integers(1, 4000, 2)))
            for _ in range(500)]
  for (rows, cols), size in cases:
    current = (rows * 27, cols * 27)
    # Each element holds its flat index, so the kept block's first element gives its top-left corner.
    grid = torch.arange(current[0] * current[1]).reshape(1, *current)
    kept = modeling.unpad_image(grid, list(size))
    top, bottom, left, right = anyres.unpad_box(current, size, exact_round=True)
    assert (bottom - top, right - left) == tuple(kept.shape[1:]), (current, size)
    # Extreme aspects against a mismatched grid can keep nothing; there is no corner to compare then.
    if kept.numel():
      assert (top, left) == divmod(int(kept[0, 0, 0]), current[1]), (current, size)


# --- errors -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("images, batch_num_images, error, match", [
    ([], None, ValueError, "images is empty"),
    (np.zeros((8, 8, 3), np.uint8), None, TypeError, "wrap a single image in a list"),
    ([np.zeros((8, 8, 4), np.uint8)], None, ValueError, r"images\[0\] array must be \(H, W, 3\)"),
    ([np.zeros((8, 8), np.uint8)], None, ValueError, r"must be \(H, W, 3\)"),
    ([np.zeros((8, 8, 3), np.float32)], None, ValueError, "must be uint8"),
    ([np.zeros((0, 8, 3), np.uint8)], None, ValueError, "images\\[0\\] is empty"),
    (["cat.png"], None, TypeError, "PIL image or a numpy array, got str"),
    ([np.zeros((8, 8, 3), np.uint8)] * 3, [2], ValueError, r"sums to 2 but 3 images"),
    ([np.zeros((8, 8, 3), np.uint8)] * 2, [2, 0], ValueError, "must be >= 1"),
])
def test_bad_image_input_errors(processor, images, batch_num_images, error, match):
  with pytest.raises(error, match=match):
    processor(images, batch_num_images)


@pytest.mark.parametrize("frames, match", [
    (np.zeros((2, 8, 8, 4), np.uint8), r"\(F, H, W, 3\)"),
    (np.zeros((8, 8, 3), np.uint8), r"\(F, H, W, 3\)"),
    (np.zeros((2, 8, 8, 3), np.float32), "must be uint8"),
    (np.zeros((0, 8, 8, 3), np.uint8), "video is empty"),
    ([], "frames is empty"),
    ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8)], "one size"),
])
def test_bad_video_input_errors(processor, frames, match):
  with pytest.raises(ValueError, match=match):
    processor.preprocess_video(frames)


@pytest.mark.parametrize("kwargs, match", [
    ({"aspect_ratio": "pad"}, "unsupported vision_aspect_ratio"),
    ({"grid_pinpoints": [[384, 500]]}, "multiples of size=384"),
    ({"grid_pinpoints": []}, "grid_pinpoints is empty"),
    ({"image_mean": (0.5, 0.5)}, "need 3 values"),
    ({"image_std": (0.5, 0.0, 0.5)}, "non-zero"),
    ({"patch_size": 500}, "patch_size <= size"),
])
def test_bad_configuration_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    ImageProcessor(**{"grid_pinpoints": PINPOINTS} | kwargs)


def test_bad_count_arguments(processor):
  with pytest.raises(ValueError, match="image size must be positive"):
    processor.num_image_tokens((0, 10))
  with pytest.raises(ValueError, match="num_frames must be >= 1"):
    processor.num_video_tokens(0)
