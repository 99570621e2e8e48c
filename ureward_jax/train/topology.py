"""Accelerator topologies to compile for on this host, and what a compiled step needs of each device.

TPU topologies come from libtpu (the `tpu` extra) and compile under JAX_PLATFORMS=cpu; no TPU is needed.
"""

from __future__ import annotations

from typing import Sequence

import jax

from ureward_jax.errors import UserError

GiB = 2**30
# Public names → libtpu topology names. v5p and v4 names count TensorCores (2 per chip), v5e and v6e count chips.
TOPOLOGIES = {"v5p-8": "v5p:2x2x1", "v5p-16": "v5p:2x2x2", "v5p-32": "v5p:2x2x4", "v5p-64": "v5p:4x4x2",
              "v5p-128": "v5p:4x4x4", "v5p-256": "v5p:4x4x8", "v5e-4": "v5e:2x2", "v5e-8": "v5e:2x4",
              "v5e-16": "v5e:4x4", "v5e-64": "v5e:8x8", "v5e-256": "v5e:16x16", "v6e-8": "v6e:2x4",
              "v6e-64": "v6e:8x8", "v6e-256": "v6e:16x16", "v4-8": "v4:2x2x1", "v4-32": "v4:2x2x4"}
HBM_BYTES = {"TPU v5": 95 * GiB, "TPU v5 lite": 16 * GiB, "TPU v6 lite": 32 * GiB, "TPU v4": 32 * GiB}


def topology_devices(name: str) -> list:
  """The devices of a TPU topology: a public name (`v5p-64`) or a libtpu one (`v5p:4x4x2`)."""
  from jax.experimental import topologies
  topology = TOPOLOGIES.get(name, name)
  if ":" not in topology:
    raise UserError(f"unknown topology {name!r}; use one of {sorted(TOPOLOGIES)} or a libtpu name like v5p:4x4x2")
  return topologies.get_topology_desc(topology_name=topology, platform="tpu").devices


def memory_report(compiled, devices: Sequence[jax.Device], mesh) -> dict:
  """Per-device bytes of a compiled step (arguments + temporaries + outputs − aliased donations, from XLA's memory
  analysis) against the chip's HBM."""
  memory = compiled.memory_analysis()
  per_device = (memory.argument_size_in_bytes + memory.temp_size_in_bytes + memory.output_size_in_bytes
                - memory.alias_size_in_bytes)
  kind = devices[0].device_kind
  return dict(topology=str(devices[0].platform) + f" × {len(devices)} ({kind})", devices=len(devices),
              mesh=dict(mesh.shape), per_device_bytes=int(per_device), hbm_bytes=HBM_BYTES.get(kind),
              fits=per_device <= HBM_BYTES.get(kind, float("inf")))
