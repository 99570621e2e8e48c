"""Encode Diffusion-DPO pairs once (`ureward_jax.train.encode_pairs`): the VAE posterior of every image and SDXL's
text conditioning of every caption, written to `data.encoded`; training with the same config then reads them.

  python -m launch.encode_pairs --config=configs/dpo_sdxl_turbo.py --config.model.checkpoint=/ckpt/sdxl-turbo-jax \\
      --config.data.train=/data/pairs.jsonl --config.data.encoded=/data/pairs-encoded
  python -m launch.train --config=configs/dpo_sdxl_turbo.py --config.workdir=/runs/sdxl-dpo ...the same flags...

Run the same command again after an interruption and it continues where it stopped.
"""

from absl import flags
from ml_collections import config_flags

from launch import entry
from ureward_jax.train.encode_pairs import encode

_CONFIG = config_flags.DEFINE_config_file("config", None, "a Diffusion-DPO config, e.g. configs/dpo_sdxl_turbo.py")


def main(_):
  encode(_CONFIG.value)   # a returned value would be the exit status


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  entry.run(main)
