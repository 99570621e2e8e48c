"""Compile the exact training step of a config for a TPU topology on this host, and report whether it fits:
`ureward_jax.train.runner.compile`, the path `launch.train` trains through.

  python -m launch.aot --config=configs/reward_llava_ov_7b.py --topology=v5p-64 [--json]
  python -m launch.aot --config=configs/dpo_sdxl_turbo.py --topology=v5p-8   # SDXL's UNet without a checkpoint
  python -m launch.aot --config=configs/dpo_t2v_turbo.py --topology=v5p-8    # VideoCrafter2's UNet likewise

TPU topologies come from libtpu (the `tpu` extra) and compile under JAX_PLATFORMS=cpu; no TPU is needed. The
report: `per_device_bytes` (arguments + temporaries + outputs − aliased donations, from XLA's memory analysis),
`hbm_bytes` of the chip, `model_flops_per_step` and `compile_seconds`, among others.
"""

import json
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from launch import entry  # noqa: E402
from ureward_jax.train import runner  # noqa: E402
from ureward_jax.train.topology import GiB  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "training config file, e.g. configs/reward_llava_ov_7b.py")
_TOPOLOGY = flags.DEFINE_string("topology", "v5p-64", "TPU topology, e.g. v5p-64, v5e-256 or v5p:4x4x2")
_JSON = flags.DEFINE_bool("json", False, "print the report as one JSON object")


def main(_):
  report = runner.compile(_CONFIG.value, _TOPOLOGY.value)
  if _JSON.value:
    print(json.dumps(report))
    return
  for key, value in report.items():
    if key in ("per_device_bytes", "hbm_bytes") and value is not None:
      value = f"{value / GiB:.2f} GiB"
    print(f"{key:>26}: {value}")


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  entry.run(main)
