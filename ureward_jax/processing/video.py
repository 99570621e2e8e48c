"""Video frames from a file (PyAV, the `video` extra) or a folder of frame images, sampled uniformly.

Frame choice follows LLaVA-NeXT: `np.linspace(0, n - 1, k, dtype=int)` over the n frames (decoded frames of a
file, sorted files of a folder), so the first and last frames are always taken.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def frame_indices(total: int, num_frames: int) -> np.ndarray:
  return np.linspace(0, total - 1, num_frames, dtype=int)


def read_frames(path: str, num_frames: int = 8) -> np.ndarray:
  """(num_frames, H, W, 3) uint8 RGB frames of a video file or a folder of frame images.

  Raises FileNotFoundError for a missing path and ValueError for a video without frames or an unreadable one.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"video not found: {path}")
  if os.path.isdir(path):
    files = sorted(f for f in os.listdir(path) if f.lower().endswith(FRAME_EXTENSIONS))
    if not files:
      raise ValueError(f"video folder {path} holds no frame images ({', '.join(FRAME_EXTENSIONS)})")
    frames = []
    for i in frame_indices(len(files), num_frames):
      with Image.open(os.path.join(path, files[i])) as image:
        frames.append(np.asarray(image.convert("RGB")))
    if len({f.shape for f in frames}) > 1:
      raise ValueError(f"video folder {path} mixes frame sizes {sorted({f.shape for f in frames})}")
    return np.stack(frames)
  try:
    import av
  except ImportError:
    raise ImportError("reading video files needs PyAV: pip install 'ureward_jax[video]'") from None
  try:
    with av.open(path) as container:
      decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
  except (av.error.FFmpegError, IndexError) as e:
    raise ValueError(f"cannot decode video {path}: {e}") from None
  if not decoded:
    raise ValueError(f"video {path} has no frames")
  return np.stack([decoded[i] for i in frame_indices(len(decoded), num_frames)])
