"""The entry points in launch/ are thin: each parses its flags and calls the library. Run as programs (never
imported by the tests), each shows its flags."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = {"launch.train": "--config", "launch.aot": "--topology", "launch.encode_pairs": "--config",
         "launch.shapes_demo": "--workdir", "launch.dpo_shapes": "--workdir", "launch.export": "--format"}


@pytest.mark.parametrize("module", sorted(FLAGS))
def test_entry_point_shows_its_flags(module):
  out = subprocess.run([sys.executable, "-m", module, "--helpshort"], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
  # absl prints the help and exits 1; what matters is that the module imports and defines its flags.
  assert "Traceback" not in out.stderr, out.stderr[-2000:]
  assert FLAGS[module] in out.stdout and "--helpfull" in out.stdout


def test_launch_holds_no_library_code():
  lines = sum(len(open(os.path.join(ROOT, "launch", name)).readlines())
              for name in os.listdir(os.path.join(ROOT, "launch")) if name.endswith(".py"))
  assert lines <= 400, f"launch/ has {lines} lines of Python; training code belongs in ureward_jax/train"
