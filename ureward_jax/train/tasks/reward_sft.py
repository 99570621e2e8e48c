"""Reward-model SFT of LLaVA-OneVision (UnifiedReward's `train.sh`): next-token cross-entropy on the labelled positions.

A batch is a dict of arrays with a leading micro-batch axis A: `input_ids`, `labels` (IGNORE where nothing is
learned), `attention_mask`, `positions` of shape (A, B, T) and each sample's own patches and layout
(`LlavaOnevision.embed`, per-sample form): `pixels` (A, B, P, H, W, C), `visual_src`/`visual_weight` (A, B, V, 4),
`visual_dest` (A, B, V) with padding rows at destination T. Each micro-batch's loss is the mean over its labelled
tokens; `train.tunable_parts` freezes parts as LLaVA-NeXT's `mm_tunable_parts` does, and `optim.projector_lr` /
`optim.vision_tower_lr` (its `mm_projector_lr` / `mm_vision_tower_lr`) give those parts their own peak rates.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import tokenizers

from ureward_jax import parallel, pretrained
from ureward_jax.data.examples import ExampleConfig
from ureward_jax.data.pipeline import DataConfig, batch_shapes, batches, to_device
from ureward_jax.data.sources import load_mixture
from ureward_jax.errors import UserError
from ureward_jax.models.llava_onevision import PRESETS, LlavaOnevision, LlavaOnevisionConfig, init_params, param_shapes
from ureward_jax.train import optim, params
from ureward_jax.train.flops import model_flops_per_step
from ureward_jax.train.losses import sft_loss, shift_labels, token_logprobs
from ureward_jax.train.task import Task

VISUAL_KEYS = ("pixels", "visual_src", "visual_weight", "visual_dest")
# LLaVA-NeXT's tunable parts → our top-level parameter groups. `image_newline` trains with the language model there
# (its rule is "everything outside the vision tower and projector").
TUNABLE_PARTS = {
    "mm_language_model": ("language_model", "image_newline"),
    "mm_mlp_adapter": ("multi_modal_projector",),
    "mm_vision_tower": ("vision_tower",),
}


def target_logprobs(module: LlavaOnevision, params: Any, batch: dict, logits_chunk: int = 1024):
  """(log p of each position's next token (B, T) fp32, those targets (B, T)) for one micro-batch (no A axis)."""
  visual = [batch.get(k) for k in VISUAL_KEYS]
  hidden = module.apply({"params": params}, batch["input_ids"], batch["attention_mask"], batch["positions"], *visual,
                        return_hidden=True)
  targets = shift_labels(batch["labels"])

  def logits(h):
    return module.apply({"params": params}, h, method=lambda m, x: m.language_model.logits(x))
  return token_logprobs(logits, hidden, targets, logits_chunk), targets


def completion_logprobs(module: LlavaOnevision, params: Any, batch: dict, logits_chunk: int = 1024) -> jax.Array:
  """Summed fp32 log-probability of each sample's labelled tokens (B,), for one micro-batch (leaves without A).

  With `assistant_only` examples this is log p(answer | prompt): what ranks candidate verdicts and what DPO compares.
  Unlabelled positions contribute 0 (`token_logprobs` of IGNORE).
  """
  return jnp.sum(target_logprobs(module, params, batch, logits_chunk)[0], axis=1)


def sft_loss_fn(module: LlavaOnevision, logits_chunk: int = 1024):
  """loss_fn(params, reference, micro_batch, rng) → (mean NLL over labelled tokens, {"tokens": their number})."""
  def loss_fn(params, reference, mb, rng):
    loss, count = sft_loss(*target_logprobs(module, params, mb, logits_chunk))
    return loss, {"tokens": count}
  return loss_fn


def tunable_mask(params: dict, parts) -> dict:
  """True for the leaves of the top-level groups that LLaVA-NeXT's `mm_tunable_parts` names."""
  unknown = set(parts) - set(TUNABLE_PARTS)
  if unknown:
    raise UserError(f"unknown train.tunable_parts {sorted(unknown)}; expected some of {list(TUNABLE_PARTS)}")
  groups = {group for part in parts for group in TUNABLE_PARTS[part]}
  return {name: jax.tree.map(lambda _, n=name: n in groups, tree) for name, tree in params.items()}


def tokenizer_file(config) -> str:
  """`data.tokenizer`, else the checkpoint folder's tokenizer.json."""
  path = config.data.tokenizer or (os.path.join(config.model.checkpoint, "tokenizer.json")
                                   if config.model.checkpoint else "")
  if not path or not os.path.exists(path):
    raise FileNotFoundError(f"no tokenizer at {path!r}: set data.tokenizer or model.checkpoint (a folder with "
                            "tokenizer.json)")
  return path


def model_config(config, tokenizer: tokenizers.Tokenizer | None) -> LlavaOnevisionConfig:
  """The checkpoint's architecture, or a preset whose vocabulary and special-token ids come from the tokenizer (as
  the preset stands when there is none: compiling ahead of time)."""
  if config.model.checkpoint:
    return LlavaOnevisionConfig.from_dict(pretrained.read_config(config.model.checkpoint))
  if config.model.preset not in PRESETS:
    raise UserError(f"unknown model.preset {config.model.preset!r}; choose one of {sorted(PRESETS)}")
  model = PRESETS[config.model.preset]
  if tokenizer is None:
    return model
  image, video = tokenizer.token_to_id("<image>"), tokenizer.token_to_id("<video>")
  if image is None or video is None:
    raise UserError("a model trained from scratch takes its <image> and <video> ids from the tokenizer, which "
                    "lacks one of them")
  text = dataclasses.replace(model.text, vocab_size=tokenizer.get_vocab_size())
  return dataclasses.replace(model, text=text, image_token_id=image, video_token_id=video)


class RewardSFT(Task):
  summed_metrics = ("tokens",)
  rows_per_sample = 1          # sequences per sample in a batch (a DPO pair has two)
  flops_factor = 1.0           # model FLOPs relative to SFT's 6 per parameter and token

  @classmethod
  def config_keys(cls, config):
    return {"model": ("preset", "checkpoint", "dtype"),
            "data": ("train", "image_folder", "tokenizer", "batch_size", "max_length", "patches_per_sample",
                     "buckets", "workers", "video_frames", "assistant_only"),
            "train": ("logits_chunk", "tunable_parts"),
            "optim": optim.config_keys(config.optim) + ("projector_lr", "vision_tower_lr")}

  def __init__(self, config, mesh, abstract=False):
    super().__init__(config, mesh, abstract)
    self.tokenizer_file = None if abstract else tokenizer_file(config)
    tokenizer = None if abstract else tokenizers.Tokenizer.from_file(self.tokenizer_file)
    self.model = model_config(config, tokenizer)
    self.module = LlavaOnevision(self.model, dtype=jnp.dtype(config.model.dtype), remat=config.remat)
    self.example = ExampleConfig.for_model(self.model, config.data.max_length, config.data.patches_per_sample,
                                           video_frames=config.data.video_frames,
                                           assistant_only=config.data.assistant_only)
    self.rows = parallel.data_sharding(mesh, batch_axis=1)
    self.micro = self._sequences_per_micro_batch()
    self.records = None if abstract else load_mixture(config.data.train, config.data.image_folder or None,
                                                      seed=config.seed)

  def _sequences_per_micro_batch(self) -> int:
    """batch_size / grad_accum samples, each `rows_per_sample` sequences that must share a device."""
    c, per = self.config, self.rows_per_sample
    if c.data.batch_size % c.train.grad_accum:
      raise UserError(f"data.batch_size {c.data.batch_size} is not a multiple of train.grad_accum "
                      f"{c.train.grad_accum}")
    micro = c.data.batch_size // c.train.grad_accum * per
    if micro % (parallel.batch_shards(self.mesh) * per):
      raise UserError(f"a micro-batch of {micro} sequences (batch_size / grad_accum, {per} per sample) cannot be "
                      f"split over {parallel.batch_shards(self.mesh)} data × fsdp devices; lower grad_accum or "
                      "raise batch_size")
    return micro

  def param_shapes(self):
    return param_shapes(self.model, boxed=True)

  def load_params(self, shardings):
    if self.config.model.checkpoint:
      return params.load(self.config.model.checkpoint, shardings)
    return parallel.init_sharded(lambda r: init_params(self.model, r), jax.random.key(self.config.seed), self.mesh)[0]

  def train_mask(self, params):
    return tunable_mask(params, tuple(self.config.train.tunable_parts))

  def optimizer(self, num_steps, trained):
    o = self.config.optim
    return optim.make_optimizer(o, num_steps, trained, decay_mask=optim.matrices,
                                part_rates={"multi_modal_projector": o.projector_lr, "vision_tower": o.vision_tower_lr})

  def loss_fn(self):
    return sft_loss_fn(self.module, self.config.train.logits_chunk)

  def num_records(self):
    return len(self.records)

  def lengths(self) -> list[int]:
    """The sequence lengths the step compiles for: the buckets below max_length, and max_length."""
    d = self.config.data
    return sorted({b for b in d.buckets if b < d.max_length} | {d.max_length})

  def step_inputs(self):
    accum, example = self.config.train.grad_accum, self.example
    return {length: batch_shapes(accum, self.micro, length, example.max_patches, example.processor.size, self.rows)
            for length in self.lengths()}

  def shape_key(self, batch):
    return batch["input_ids"].shape[1]

  def data_config(self) -> DataConfig:
    c = self.config
    return DataConfig(c.data.batch_size, c.train.grad_accum, c.seed, buckets=tuple(c.data.buckets),
                      workers=c.data.workers, preference=self.rows_per_sample == 2)

  def stream(self, start):
    return batches(self.records, self.example, self.tokenizer_file, self.data_config(), start=start)

  def place(self, batch):
    return to_device(batch, self.config.train.grad_accum, self.rows)

  def flops(self, inputs):
    ids, pixels = inputs["input_ids"].shape, inputs["pixels"].shape
    tokens, length = ids[0] * ids[1] * ids[2], ids[2]
    return self.flops_factor * model_flops_per_step(self.model, tokens, pixels[0] * pixels[1] * pixels[2], length)

  def record_id(self, index):
    return str(self.records[index].data.get("id", f"#{index}"))

  def write_files(self, workdir):
    shutil.copy(self.tokenizer_file, os.path.join(workdir, "tokenizer.json"))
    with open(os.path.join(workdir, "model_config.json"), "w") as f:
      json.dump(self.model.to_dict(), f, indent=2)

  @classmethod
  def export(cls, config, params_, workdir, dst):
    """A LLaVA-OneVision folder: the run's model config (with the source layout of the folder it started from, so
    that it exports back to that layout), the params, the tokenizer it trained with and the starting folder's other
    tokenizer and processor files."""
    model_file = workdir / "model_config.json"
    if not model_file.is_file():
      raise UserError(f"{model_file} is missing: the run's first host writes it when training starts")
    model = json.loads(model_file.read_text())
    start = config.model.checkpoint or None
    if start and (source := pretrained.read_config(start).get("source")):
      model["source"] = source
    pretrained.save(dst, model, params_, copy_from=start)
    shutil.copy(workdir / "tokenizer.json", dst / "tokenizer.json")
