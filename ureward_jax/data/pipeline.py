"""The training input pipeline: records → shuffled, per-host, batched examples on the mesh, resumable by batch index.

Order: records shuffled with `seed` and reshuffled every epoch (Grain's shuffle under repeat), split across hosts
by stride, built into examples by `examples.make_example` and batched. Everything is indexed, so batch k is a pure
function of (records, seed, k): the stream is the same for any number of loading workers, and resuming needs only
the number of batches already consumed (`next_batch`), which the trainer checkpoints with the model.

A bad record (whatever it raises while becoming an example: a missing, corrupt or oversized file, a malformed
field, a tokenizer's refusal) is logged with its id and reason and replaced by an empty example (no tokens, no
labels) in its slot, so batches keep their shape and the loss is unchanged; the batch's `bad` count reaches the
metrics.

Length buckets: a batch is cut to the shortest bucket that holds its longest sample, so short data does not pay
for max_length; the step compiles once per bucket.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import grain
import jax
import numpy as np
import tokenizers

from ureward_jax.data.examples import ExampleConfig, empty_example, make_example, make_preference_example
from ureward_jax.data.sources import Record
from ureward_jax.errors import UserError, row_error

TOKEN_KEYS = ("input_ids", "labels", "attention_mask", "positions")
VISUAL_ROW_KEYS = ("visual_src", "visual_weight", "visual_dest")
MODEL_KEYS = TOKEN_KEYS + ("pixels",) + VISUAL_ROW_KEYS
# Per-row inputs of a step beyond the model's: the precomputed reference log-probabilities of DPO.
STEP_KEYS = ("reference_logps",)


class BuildExample(grain.transforms.Map):
  """index → example (a preference record: its chosen and rejected examples stacked); runs in the loading workers,
  which load the tokenizer once each."""

  def __init__(self, records: Sequence[Record], cfg: ExampleConfig, tokenizer_file: str, preference: bool = False):
    self.records, self.cfg, self.tokenizer_file, self.preference = records, cfg, tokenizer_file, preference
    self._tokenizer = None

  def __getstate__(self):
    return {**self.__dict__, "_tokenizer": None}

  def map(self, index: int):
    if self._tokenizer is None:
      self._tokenizer = tokenizers.Tokenizer.from_file(self.tokenizer_file)
    record = self.records[index]
    make = make_preference_example if self.preference else make_example
    try:
      return make(record, index, self.cfg, self._tokenizer)
    except Exception as e:   # noqa: BLE001 — whatever one record raises skips it; training goes on
      logging.warning("skipping record %s (%s of %s): %s", record.data.get("id", "?"), index, record.source,
                      row_error(e))
      empty = empty_example(index, self.cfg)
      return {k: np.stack([v, v]) for k, v in empty.items()} if self.preference else empty


@dataclasses.dataclass(frozen=True)
class DataConfig:
  global_batch: int
  grad_accum: int = 1
  seed: int = 0
  num_epochs: int | None = None     # None: repeat forever
  buckets: tuple[int, ...] = ()     # sequence lengths to cut batches to; max_length is always the last
  workers: int = 0                  # loading processes; 0 loads in the training process
  prefetch: int = 2
  preference: bool = False          # DPO records: a batch of B pairs has 2B rows, chosen then rejected per pair


def batches(records: Sequence[Record], cfg: ExampleConfig, tokenizer_file: str, data: DataConfig,
            start: int = 0, process_index: int | None = None, process_count: int | None = None) -> grain.IterDataset:
  """This host's batches from batch `start` on: dicts of numpy arrays with a leading (per-host) batch axis."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if data.global_batch % (process_count * data.grad_accum):
    raise UserError(f"global batch {data.global_batch} does not split into {process_count} hosts × "
                    f"{data.grad_accum} micro-batches")
  if not records:
    raise UserError("the training data has no records")
  buckets = tuple(sorted(b for b in set(data.buckets) if b < cfg.max_length)) + (cfg.max_length,)
  ds = grain.MapDataset.range(len(records)).seed(data.seed).shuffle().repeat(data.num_epochs)
  ds = ds[process_index::process_count]
  ds = ds.map(BuildExample(records, cfg, tokenizer_file, data.preference)).batch(
      data.global_batch // process_count, drop_remainder=True)
  if data.preference:   # (B, 2, ...) → (2B, ...): rows alternate chosen, rejected
    ds = ds.map(lambda batch: {k: v.reshape(-1, *v.shape[2:]) for k, v in batch.items()})
  ds = ds.map(lambda batch: _cut_to_bucket(batch, buckets))[start:]
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=0 if data.workers else 1, prefetch_buffer_size=data.prefetch))
  if data.workers:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.workers, per_worker_buffer_size=data.prefetch))
  return it


def _cut_to_bucket(batch: dict, buckets: tuple[int, ...]) -> dict:
  longest = int(batch["attention_mask"].sum(axis=1).max())
  length = next(b for b in buckets if b >= longest)
  for key in TOKEN_KEYS + VISUAL_ROW_KEYS:
    batch[key] = batch[key][:, :length]
  # Unused visual rows point one past the end, whatever the length.
  batch["visual_dest"] = np.minimum(batch["visual_dest"], length)
  return batch


def batch_shapes(grad_accum: int, micro: int, length: int, patches: int, side: int, sharding) -> dict:
  """The model inputs of one step as `jax.ShapeDtypeStruct`s (A, B / A, ...): what `to_device` delivers for a batch
  cut to `length`, for compiling the step ahead of the data. V = length, as `examples` lays visual rows out."""
  shaped = lambda shape, dtype: jax.ShapeDtypeStruct((grad_accum, micro) + shape, dtype, sharding=sharding)
  tokens = shaped((length,), np.int32)
  return dict(input_ids=tokens, labels=tokens, attention_mask=tokens, positions=tokens,
              pixels=shaped((patches, side, side, 3), np.float32), visual_src=shaped((length, 4), np.int32),
              visual_weight=shaped((length, 4), np.float32), visual_dest=shaped((length,), np.int32))


def to_device(batch: dict, grad_accum: int, sharding: jax.sharding.Sharding) -> dict:
  """The model inputs of a host batch as global arrays (A, B / A, ...), the micro-batch rows sharded by `sharding`
  (`parallel.data_sharding(mesh, batch_axis=1)`)."""
  def put(x):
    x = x.reshape(grad_accum, x.shape[0] // grad_accum, *x.shape[1:])
    return jax.make_array_from_process_local_data(sharding, x)
  return {key: put(batch[key]) for key in MODEL_KEYS + tuple(k for k in STEP_KEYS if k in batch)}


def batch_stats(batch: dict) -> dict:
  """Host-side counts for the metrics: bad records, truncated samples, and the bad records' source indices."""
  bad = batch["bad"].astype(bool)
  truncated = int(batch["truncated"].sum()) if "truncated" in batch else 0   # image pairs are never truncated
  return dict(bad=int(bad.sum()), truncated=truncated, bad_indices=batch["index"][bad].tolist())

