"""Test-wide settings: CPU with 8 host devices (for the sharding tests; single-device code runs on the first),
fp32 matmuls at full precision (parity tests compare against PyTorch in fp32)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"])
# The AOT tests load libtpu in this process and in a subprocess; its lock file would refuse the second.
os.environ["ALLOW_MULTIPLE_LIBTPU_LOAD"] = "1"

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def pair(tmp_path_factory):
  """(tiny transformers LLaVA-OneVision, our model converted from its `save_pretrained` folder), fp32."""
  import ureward_jax
  from converters.llava_onevision import convert_folder
  from tests import tiny_llava
  hf = tiny_llava.hf_model(seed=0)
  root = tmp_path_factory.mktemp("llava")
  convert_folder(tiny_llava.save_hf(hf, root / "hf"), root / "ours", "float32")
  return hf, ureward_jax.load(root / "ours")
