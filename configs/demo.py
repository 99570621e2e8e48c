"""The demo's reward model: the base VLM of `configs/demo_base.py` fine-tuned on the shapes world's reward records,
all four tasks in both modes, the loss on the answers alone.

`make demo` trains the base first and fills in `model.checkpoint` (its exported folder, tokenizer included) and
`data.train` (launch/shapes_demo.py). The shapes tokenizer holds each fixed stretch of an official wording as one
token, so a record is ~60–110 tokens and `max_length` 128 holds every one.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.workdir = ""
  c.seed = 0
  c.model = ml_collections.ConfigDict(dict(preset="demo_tiny", checkpoint="", dtype="float32"))
  c.data = ml_collections.ConfigDict(dict(train="", image_folder="", tokenizer="", batch_size=32, max_length=128,
                                          patches_per_sample=8, buckets=(96,), workers=0, video_frames=4,
                                          assistant_only=True))
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
  c.train = ml_collections.ConfigDict(dict(objective="sft", num_steps=600, num_epochs=0, log_every=25, grad_accum=1,
                                           logits_chunk=128,
                                           tunable_parts=("mm_language_model", "mm_mlp_adapter", "mm_vision_tower")))
  # The visual path learns ten times slower than the language model, keeping the features the base learned.
  c.optim = ml_collections.ConfigDict(dict(name="adamw", lr=2e-3, schedule="cosine", warmup_ratio=0.05,
                                           weight_decay=0.0, clip_norm=1.0, projector_lr=2e-4, vision_tower_lr=2e-4))
  c.checkpoint = ml_collections.ConfigDict(dict(every=100, keep=2))
  c.remat = "none"
  return c
