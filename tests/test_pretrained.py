"""`ureward_jax.load` of a folder whose model_type no family registered, or whose schedule is missing."""

import json

import pytest

import ureward_jax
from ureward_jax import pretrained


def test_unknown_model_type_names_the_known_ones(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
  with pytest.raises(ValueError, match=r"unknown model_type 'gpt2' in config.json; known: \[.*'llava_onevision'.*'sdxl'"):
    ureward_jax.load(tmp_path)


def test_every_pipeline_folder_keeps_its_schedule_in_one_place(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "t2v_turbo"}))
  with pytest.raises(FileNotFoundError, match=r"scheduler/scheduler_config.json is missing.*convert it again"):
    ureward_jax.load(tmp_path)
  (tmp_path / "scheduler").mkdir()
  (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps({"num_train_timesteps": 1000}))
  assert pretrained.read_scheduler(tmp_path) == {"num_train_timesteps": 1000}
