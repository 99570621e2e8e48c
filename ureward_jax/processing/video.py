"""Video frames from a file (PyAV, the `video` extra) or a folder of frame images, and videos written back.

`read_frames` samples as LLaVA-NeXT does: `np.linspace(0, n - 1, k, dtype=int)` over the n frames (decoded frames
of a file, sorted files of a folder), so the first and last frames are always taken; `read_clip` takes whichever
frames a rule chooses (VideoDPO's strided clips).
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from ureward_jax.errors import UserError
from ureward_jax.processing.image import open_image

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def frame_indices(total: int, num_frames: int) -> np.ndarray:
  return np.linspace(0, total - 1, num_frames, dtype=int)


def read_frames(path: str, num_frames: int = 8, max_pixels: int | None = None) -> np.ndarray:
  """(num_frames, H, W, 3) uint8 RGB frames of a video file or a folder of frame images, sampled uniformly.

  Raises FileNotFoundError for a missing path and ValueError for a video without frames or an unreadable one.
  max_pixels: the limit of a frame image (`image.open_image`; None: Pillow's own).
  """
  return read_clip(path, lambda total: frame_indices(total, num_frames), max_pixels)


def read_clip(path: str, choose: Callable[[int], Sequence[int]], max_pixels: int | None = None) -> np.ndarray:
  """(K, H, W, 3) uint8 RGB frames `choose(total)` of a video file or a folder of frame images (sorted by name);
  `total` is the number of frames (decoded frames of a file, images of a folder). Errors and max_pixels as
  `read_frames`."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"video not found: {path}")
  if os.path.isdir(path):
    files = sorted(f for f in os.listdir(path) if f.lower().endswith(FRAME_EXTENSIONS))
    if not files:
      raise UserError(f"video folder {path} holds no frame images ({', '.join(FRAME_EXTENSIONS)})")
    frames = [np.asarray(open_image(os.path.join(path, files[i]), max_pixels).convert("RGB"))
              for i in choose(len(files))]
    if len({f.shape for f in frames}) > 1:
      raise UserError(f"video folder {path} mixes frame sizes {sorted({f.shape for f in frames})}")
    return np.stack(frames)
  try:
    import av
  except ImportError:
    raise ImportError("reading video files needs PyAV: pip install 'ureward_jax[video]'") from None
  try:
    with av.open(path) as container:
      decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
  except (av.error.FFmpegError, IndexError) as e:
    raise UserError(f"cannot decode video {path}: {e}") from None
  if not decoded:
    raise UserError(f"video {path} has no frames")
  return np.stack([decoded[i] for i in choose(len(decoded))])


def write_video(frames: np.ndarray, path: str, fps: float = 8, crf: int = 10) -> None:
  """Write (T, H, W, 3) uint8 RGB frames as an H.264 mp4 (yuv420p, constant quality `crf`: 10, as VideoCrafter's
  `save_videos` asks of torchvision), under a temporary name then renamed, so `path` is never a partial file.
  H and W must be even (4:2:0 chroma)."""
  try:
    import av
  except ImportError:
    raise ImportError("writing video files needs PyAV: pip install 'ureward_jax[video]'") from None
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise UserError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
  if frames.shape[1] % 2 or frames.shape[2] % 2:
    raise UserError(f"H.264 in yuv420p needs an even height and width, got {frames.shape[1]}×{frames.shape[2]}")
  temporary = path + ".tmp"
  with av.open(temporary, mode="w", format="mp4") as container:
    stream = container.add_stream("libx264", rate=int(round(fps)))
    stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    stream.options = {"crf": str(crf)}
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())
  os.replace(temporary, path)


def write_frame_folder(frames: np.ndarray, folder: str) -> None:
  """Write (T, H, W, 3) uint8 frames as `folder/00000.png`, … (lossless; `read_frames` reads such folders), built
  under a temporary name and renamed, so `folder` never holds a partial video."""
  temporary = folder + ".tmp"
  if os.path.isdir(temporary):
    for name in os.listdir(temporary):
      os.remove(os.path.join(temporary, name))
  os.makedirs(temporary, exist_ok=True)
  for index, frame in enumerate(np.asarray(frames)):
    Image.fromarray(frame).save(os.path.join(temporary, f"{index:05d}.png"), format="PNG")
  os.replace(temporary, folder)
