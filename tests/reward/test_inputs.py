"""Rows → prompts and visual inputs: markers, chat format and token ids as the official scripts build them, media
from every source, and the layouts."""

import warnings

import numpy as np
import pytest
import transformers
from PIL import Image

from ureward_jax.data import shapes
from ureward_jax.processing.chat import prompt_ids
from ureward_jax.processing.feature_layout import IMAGE_MARKER
from ureward_jax.processing.image import ImageProcessor
from ureward_jax.reward import inputs, prompts

ALL = [(task, mode, variant) for task in prompts.TASKS for mode in prompts.MODES
       for variant in prompts.variants(task, mode)]
PROCESSOR = ImageProcessor(size=28, patch_size=14, grid_pinpoints=[(28, 28), (28, 56), (56, 28), (56, 56)])


@pytest.fixture(scope="module")
def media(tmp_path_factory):
  root = tmp_path_factory.mktemp("media")
  rng = np.random.default_rng(0)
  for name, size in {"a.png": (40, 60), "b.webp": (50, 30)}.items():
    Image.fromarray(rng.integers(0, 256, (*size, 3), np.uint8)).save(root / name)
  (root / "frames").mkdir()
  (root / "empty").mkdir()
  for j in range(10):
    Image.fromarray(np.full((32, 48, 3), 20 * j, np.uint8)).save(root / "frames" / f"{j:02d}.jpg")
  return str(root)


def row(task, mode):
  video = task.startswith("video")
  if task.endswith("generation"):
    if mode == "pair":
      return {"prompt": "a red circle", ("videos" if video else "images"): ["frames", "frames"] if video
              else ["a.png", "b.webp"]}
    return {"prompt": "a red circle", ("video" if video else "image"): "frames" if video else "a.png"}
  out = {"question": "What color is the circle?", ("video" if video else "image"): "frames" if video else "a.png"}
  return out | ({"responses": ["The circle is red.", "The circle is blue."]} if mode == "pair"
                else {"response": "The circle is red."})


def chat_reference(tokenizer, user_text):
  """LLaVA-NeXT's qwen_1_5 prompt through transformers' own chat templating, `<image>` read as -200."""
  hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer)
  hf.chat_template = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] "
                      "+ '<|im_end|>' + '\n'}}{% endfor %}{{'<|im_start|>assistant\n'}}")
  ids = hf.apply_chat_template([{"role": "system", "content": "You are a helpful assistant."},
                                {"role": "user", "content": user_text}], tokenize=True, return_dict=False)
  image = hf.convert_tokens_to_ids("<image>")
  return [IMAGE_MARKER if i == image else i for i in ids]


@pytest.mark.parametrize("task,mode,variant", ALL)
def test_every_template_becomes_the_scripts_prompt(media, task, mode, variant):
  tokenizer = shapes.shapes_tokenizer()
  text, visuals = inputs.prepare(row(task, mode), task, mode, PROCESSOR, inputs.InputOptions(), variant, media)
  template = prompts.template(task, mode, variant)
  markers = prompts.image_markers(task, mode, num_frames=8)
  assert len(visuals) == markers and text.count("<image>\n") == markers
  assert text.endswith(prompts.render(task, mode, variant, **inputs.fields(row(task, mode), task, mode)))
  if template.space_between_inputs and mode == "pair" and task.endswith("generation"):
    assert "<image>\n <image>\n" in text
  ids = prompt_ids(tokenizer, text)
  assert ids.tolist() == chat_reference(tokenizer, text)
  assert int(np.sum(ids == IMAGE_MARKER)) == markers
  assert 0 not in ids.tolist(), "a word of the wording is missing from the shapes tokenizer"


def test_video_layouts_and_frame_sampling(media):
  frames_layout = inputs.visual_inputs(row("video_generation", "pair"), "video_generation", "pair", PROCESSOR,
                                       inputs.InputOptions(num_frames=4), media)
  assert [item.kind for item, _ in frames_layout] == ["plain"] * 8
  # linspace(0, 9, 4) -> frames 0, 3, 6, 9, whose grey levels are 0, 60, 120, 180
  levels = [float(p[0, 0, 0, 0]) for _, p in frames_layout[:4]]
  np.testing.assert_allclose(levels, [(g / 255 - 0.5) / 0.5 for g in (0, 60, 120, 180)], atol=1e-6)
  pooled = inputs.visual_inputs(row("video_understanding", "point"), "video_understanding", "point", PROCESSOR,
                                inputs.InputOptions(num_frames=4, video_layout="pooled"), media)
  assert [(item.kind, item.num_patches) for item, _ in pooled] == [("video", 4)]
  text, visuals = inputs.prepare(row("video_understanding", "point"), "video_understanding", "point", PROCESSOR,
                                 inputs.InputOptions(video_layout="pooled"), root=media)
  assert text.count("<image>") == 1 and len(visuals) == 1


def test_images_from_arrays_and_pil_and_resizing(media):
  array = np.asarray(Image.open(f"{media}/a.png").convert("RGB"))
  by_path = inputs.visual_inputs({"prompt": "x", "image": "a.png"}, "image_generation", "point", PROCESSOR,
                                 inputs.InputOptions(), media)
  by_array = inputs.visual_inputs({"prompt": "x", "image": array}, "image_generation", "point", PROCESSOR,
                                  inputs.InputOptions())
  by_pil = inputs.visual_inputs({"prompt": "x", "image": Image.fromarray(array)}, "image_generation", "point",
                                PROCESSOR, inputs.InputOptions())
  for other in (by_array, by_pil):
    assert other[0][0] == by_path[0][0]
    np.testing.assert_array_equal(other[0][1], by_path[0][1])
  resized = inputs.visual_inputs({"prompt": "x", "image": "a.png"}, "image_generation", "point", PROCESSOR,
                                 inputs.InputOptions(resize=512), media)
  assert resized[0][0].size == (512, 512)
  padded = inputs.visual_inputs(row("image_generation", "pair"), "image_generation", "pair", PROCESSOR,
                                inputs.InputOptions(pair_layout="pad"), media)
  assert [(item.kind, len(p)) for item, p in padded] == [("single", 1), ("single", 1)]
  video = inputs.visual_inputs({"prompt": "x", "video": np.zeros((5, 20, 20, 3), np.uint8)}, "video_generation",
                               "point", PROCESSOR, inputs.InputOptions(num_frames=3))
  assert len(video) == 3


def test_video_file_through_pyav(tmp_path):
  av = pytest.importorskip("av")
  path = str(tmp_path / "clip.mp4")
  with av.open(path, "w") as container:
    stream = container.add_stream("mpeg4", rate=8)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    for j in range(16):
      frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 15 * j, np.uint8), format="rgb24")
      container.mux(stream.encode(frame))
    container.mux(stream.encode())
  frames = inputs.load_frames("clip.mp4", str(tmp_path), inputs.InputOptions())
  assert frames.shape == (8, 48, 64, 3)
  # linspace(0, 15, 8) as ints -> frames 0, 2, 4, 6, 8, 10, 12, 15: grey levels rise with them (lossy codec)
  want = [15 * j for j in np.linspace(0, 15, 8, dtype=int)]
  np.testing.assert_allclose(frames.mean(axis=(1, 2, 3)), want, atol=6)


@pytest.mark.parametrize("bad, message", [
    ({"prompt": "x"}, "needs 'images'"),
    ({"prompt": "x", "images": "a.png"}, "exactly two"),
    ({"prompt": None, "images": ["a.png", "a.png"]}, "'prompt'"),
    ({"prompt": "x", "images": ["a.png", "nope.png"]}, "not found"),
    ({"prompt": "x", "images": ["a.png", 7]}, "must be a PIL image or a numpy array"),
    (["a.png"], "JSON object"),
])
def test_bad_rows_name_the_problem(media, bad, message):
  with pytest.raises(inputs.BadInput, match=message):
    inputs.prepare(bad, "image_generation", "pair", PROCESSOR, inputs.InputOptions(), root=media)


def test_bad_understanding_and_video_rows(media):
  with pytest.raises(inputs.BadInput, match="response 2"):
    inputs.prepare({"question": "q", "image": "a.png", "responses": ["r", " "]}, "image_understanding", "pair",
                   PROCESSOR, inputs.InputOptions(), root=media)
  with pytest.raises(inputs.BadInput, match="no frame images"):
    inputs.prepare({"question": "q", "video": "empty", "response": "r"}, "video_understanding", "point", PROCESSOR,
                   inputs.InputOptions(), root=media)
  with pytest.raises(inputs.BadInput, match="mixes frame sizes"):   # the media folder: two pictures, two sizes
    inputs.prepare({"question": "q", "video": ".", "response": "r"}, "video_understanding", "point", PROCESSOR,
                   inputs.InputOptions(), root=media)
  with pytest.raises(inputs.BadInput, match="uint8"):
    inputs.prepare({"prompt": "x", "video": np.zeros((2, 4, 4))}, "video_generation", "point", PROCESSOR,
                   inputs.InputOptions())


def test_the_pixel_limit_is_checked_before_decoding_either_side_of_pillows(media, huge_png, monkeypatch):
  """a.png is 60×40 (2,400 pixels), the frames 48×32 (1,536). With Pillow's own limit set to 100, Pillow alone would
  refuse every file: a limit of ours below a file's size refuses it naming its size, one above it is honoured without
  Pillow's warning, and Pillow's limit is back afterwards."""
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
  with warnings.catch_warnings():
    warnings.simplefilter("error")   # a DecompressionBombWarning fails the test
    assert inputs.load_image("a.png", media, max_pixels=2400).shape == (40, 60, 3)
    frames = inputs.load_frames("frames", media, inputs.InputOptions(num_frames=2, max_pixels=1536))
    assert frames.shape == (2, 32, 48, 3)
  with pytest.raises(inputs.BadInput, match=r"a.png is 60×40 \(2,400 pixels\), over the limit of 2,399 pixels; "
                                            "--max-pixels raises it"):
    inputs.load_image("a.png", media, max_pixels=2399)
  with pytest.raises(inputs.BadInput, match=r"00.jpg is 48×32 \(1,536 pixels\)"):
    inputs.prepare({"prompt": "x", "video": "frames"}, "video_generation", "point", PROCESSOR,
                   inputs.InputOptions(max_pixels=1000), root=media)
  assert Image.MAX_IMAGE_PIXELS == 100
  with pytest.raises(Image.DecompressionBombError):
    Image.open(f"{media}/a.png")
  monkeypatch.undo()
  # Past Pillow's own error threshold (twice its limit), refused by the default limit before decoding.
  with pytest.raises(inputs.BadInput, match=r"huge.png is 20000×20000 \(400,000,000 pixels\), over the limit of "
                                            f"{Image.MAX_IMAGE_PIXELS:,}"):
    inputs.load_image(huge_png, None)
  with pytest.raises(ValueError, match="max_pixels must be at least 1"):
    inputs.InputOptions(max_pixels=0)
