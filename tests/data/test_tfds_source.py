"""A TensorFlow Datasets dataset prepared as ArrayRecord is a mixture source: read by index, without TensorFlow,
into the same examples as the JSON records it was built from."""

import json
import pickle

import numpy as np
import pytest
import tensorflow_datasets as tfds
from absl import flags

from ureward_jax.data import shapes
from ureward_jax.data.examples import ExampleConfig, make_example
from ureward_jax.data.pipeline import DataConfig, batches
from ureward_jax.data.sources import TfdsSource, _record_data, load_mixture
from ureward_jax.models.llava_onevision import PRESETS

flags.FLAGS.mark_as_parsed()   # Grain reads absl flags; pytest does not parse them
CFG = ExampleConfig.for_model(PRESETS["demo_tiny"], 576, 8, video_frames=4)


class ShapesPreferences(tfds.core.GeneratorBasedBuilder):
  """The shapes world's training records as a TFDS dataset: every visual input as a sequence of encoded images."""
  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, root=None, **kwargs):   # tfds.data_source rebuilds it from data_dir alone
    self.root = root
    super().__init__(**kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "id": tfds.features.Text(), "task": tfds.features.Text(), "conversations": tfds.features.Text(),
        "images": tfds.features.Sequence(tfds.features.Image(shape=(None, None, 3)))}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for record in json.loads((self.root / "train.json").read_text()):
      media = record.get("images") or [record["image"]] if "video" not in record else \
          sorted(str(p) for p in (self.root / record["video"]).glob("*.png"))
      yield record["id"], {"id": record["id"], "task": record["task"],
                           "conversations": json.dumps(record["conversations"]),
                           "images": [str(self.root / p) for p in media]}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """(folder with both mixtures, tokenizer): the same records as a JSON source and as a TFDS ArrayRecord source."""
  root = tmp_path_factory.mktemp("tfds")
  shapes.generate(root, num_per_task=2, split="train", seed=0)
  records = [r for name in sorted((root / "train").glob("*.json")) for r in json.loads(name.read_text())]
  (root / "train.json").write_text(json.dumps(records))
  ShapesPreferences(root, data_dir=str(root / "tfds"), file_format="array_record").download_and_prepare()
  (root / "tfds.yaml").write_text("datasets:\n  - tfds_name: shapes_preferences\n    data_dir: tfds\n"
                                  "  - tfds_name: shapes_preferences\n    data_dir: tfds\n"
                                  "    sampling_strategy: first:3\n")
  return root, shapes.shapes_tokenizer()


def test_tfds_records_make_the_examples_of_their_json_records(prepared):
  root, tokenizer = prepared
  json_records = {r.data["id"]: r for r in load_mixture(str(root / "train.json"))}
  mixture = load_mixture(str(root / "tfds.yaml"))
  assert len(mixture) == len(json_records) + 3
  assert [r.data["id"] for r in mixture[-3:]] == [r.data["id"] for r in mixture[:3]]
  assert {r.data["id"] for r in mixture} == set(json_records)
  tasks = set()
  for index, record in enumerate(mixture[:len(json_records)]):
    assert isinstance(record.data["conversations"], list) and isinstance(record.data["images"][0], np.ndarray)
    expected = make_example(json_records[record.data["id"]], index, CFG, tokenizer)
    got = make_example(record, index, CFG, tokenizer)
    for key in expected:
      np.testing.assert_array_equal(got[key], expected[key], err_msg=f"{record.data['id']}: {key}")
    tasks.add(record.data["task"])
  assert tasks == {"image_generation", "video_generation", "image_understanding", "video_understanding"}


def test_tfds_source_streams_through_loading_workers(prepared):
  root, tokenizer = prepared
  (root / "tokenizer.json").write_text(tokenizer.to_str())
  mixture = load_mixture(str(root / "tfds.yaml"))
  restored = pickle.loads(pickle.dumps(mixture))
  assert restored[5].data["id"] == mixture[5].data["id"]
  stream = [dict(batch) for batch in batches(mixture, CFG, str(root / "tokenizer.json"),
                                             DataConfig(global_batch=4, seed=1, num_epochs=1, workers=2))]
  assert len(stream) == len(mixture) // 4
  assert all(batch["bad"].sum() == 0 for batch in stream)
  seen = np.concatenate([batch["index"] for batch in stream])
  assert len(set(seen.tolist())) == len(seen)


def test_tfds_errors_name_the_problem(prepared, tmp_path):
  root, _ = prepared
  with pytest.raises(ValueError, match="'no_such_dataset'"):
    TfdsSource("no_such_dataset", data_dir=str(root / "tfds"))
  (tmp_path / "both.yaml").write_text("datasets:\n  - tfds_name: a\n    json_path: b.json\n")
  with pytest.raises(ValueError, match="entry 0 needs one of `json_path` or `tfds_name`"):
    load_mixture(str(tmp_path / "both.yaml"))


def test_sequence_conversations_and_frame_videos_decode():
  frames = np.zeros((3, 4, 4, 3), np.uint8)
  data = _record_data({"id": b"x", "conversations": {"from": np.array([b"human", b"gpt"], object),
                                                     "value": np.array([b"<image>\nq", b"a"], object)},
                       "video": frames, "score": np.float32(2.5)})
  assert data["id"] == "x" and data["score"] == 2.5
  assert data["conversations"] == [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]
  assert data["video"].shape == (3, 4, 4, 3)
