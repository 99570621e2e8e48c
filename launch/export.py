"""Turn a training run's checkpoint into a model: `ureward_jax.train.export`, then the converters' export tables.

  python -m launch.export --workdir DIR --dst DIR [--step N] [--format ours] [--dtype bfloat16]

--format ours (default) writes the folder `ureward_jax.load` and every `ureward` command read; the others write the
PyTorch checkpoint the run's model was converted from: `hf` or `llava_next` (reward SFT and VLM DPO: transformers or
LLaVA-NeXT safetensors), `diffusers` (Diffusion-DPO: the SDXL pipeline with the trained UNet), `ckpt` (video DPO:
VideoCrafter2's checkpoint file, --dst a file; needs torch). --dst must be new, empty, or a folder this command
wrote.
"""

import functools
import os
import tempfile

from absl import flags

from converters import llava_onevision, sdxl, t2v_turbo
from launch import entry
from ureward_jax import outputs
from ureward_jax.errors import UserError
from ureward_jax.train import export

# format → (the objectives it fits, what writes it from our folder (src, dst), that writer's name in a manifest).
FORMATS = {
    "ours": (("sft", "dpo", "diffusion_dpo", "video_dpo"), None, export.TOOL),
    "hf": (("sft", "dpo"), functools.partial(llava_onevision.export_folder, fmt="hf"), llava_onevision.TOOL),
    "llava_next": (("sft", "dpo"), functools.partial(llava_onevision.export_folder, fmt="llava_next"),
                   llava_onevision.TOOL),
    "diffusers": (("diffusion_dpo",), sdxl.export_folder, sdxl.TOOL),
    "ckpt": (("video_dpo",), t2v_turbo.export_checkpoint, None),   # a file
}


_WORKDIR = flags.DEFINE_string("workdir", None, "the training run's workdir")
_DST = flags.DEFINE_string("dst", None, "the model folder to write (a file for --format ckpt)")
_STEP = flags.DEFINE_integer("step", None, "the checkpoint's step (default: the latest)", lower_bound=0)
_FORMAT = flags.DEFINE_enum("format", "ours", list(FORMATS), "what to write")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "cast the params (default: as trained)")


def main(_):
  fits, write, tool = FORMATS[_FORMAT.value]
  objective = export.run_config(_WORKDIR.value).train.objective
  if objective not in fits:
    fitting = [name for name, (objectives, _, _) in FORMATS.items() if objective in objectives]
    raise UserError(f"--format {_FORMAT.value} does not fit a {objective} run; choose one of {fitting}")
  if write is None:
    done = export.export(_WORKDIR.value, _DST.value, _STEP.value, _DTYPE.value)
  else:   # our folder first, in scratch space beside --dst; the destination is checked before that costs anything
    if tool is None:
      outputs.check_file(_DST.value, [_WORKDIR.value])
    else:
      outputs.check_destination(_DST.value, tool, [_WORKDIR.value])
    parent = os.path.dirname(os.path.abspath(_DST.value))
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=".export-") as scratch:
      done = export.export(_WORKDIR.value, os.path.join(scratch, "ours"), _STEP.value, _DTYPE.value)
      write(os.path.join(scratch, "ours"), _DST.value)
  print(f"step {done['step']} of {_WORKDIR.value} ({objective}) → {_DST.value} ({_FORMAT.value})")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "dst"])
  entry.run(main)
