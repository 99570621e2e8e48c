"""`ureward_jax.load` of a folder whose model_type no family registered."""

import json

import pytest

import ureward_jax


def test_unknown_model_type_names_the_known_ones(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
  with pytest.raises(ValueError, match=r"unknown model_type 'gpt2' in config.json; known: \[.*'llava_onevision'.*'sdxl'"):
    ureward_jax.load(tmp_path)
