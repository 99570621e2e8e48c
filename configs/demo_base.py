"""The demo's base VLM: the tiny LLaVA-OneVision trained from scratch to describe the shapes world and answer
questions about it (a stage like LLaVA-OneVision's own pretraining), before `configs/demo.py` fine-tunes it into
the reward model.

`make demo` generates the data and fills in `data.train` and `data.tokenizer` (launch/shapes_demo.py).
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.workdir = ""
  c.seed = 0
  c.model = ml_collections.ConfigDict(dict(preset="demo_tiny", checkpoint="", dtype="float32"))
  c.data = ml_collections.ConfigDict(dict(train="", image_folder="", tokenizer="", batch_size=32, max_length=144,
                                          patches_per_sample=8, buckets=(120,), workers=0, video_frames=4,
                                          assistant_only=True))
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
  c.train = ml_collections.ConfigDict(dict(objective="sft", num_steps=1000, num_epochs=0, log_every=25,
                                           grad_accum=1, logits_chunk=144,
                                           tunable_parts=("mm_language_model", "mm_mlp_adapter", "mm_vision_tower")))
  c.optim = ml_collections.ConfigDict(dict(name="adamw", lr=2e-3, schedule="cosine", warmup_ratio=0.05,
                                           weight_decay=0.0, clip_norm=1.0, projector_lr=2e-3, vision_tower_lr=2e-3))
  c.checkpoint = ml_collections.ConfigDict(dict(every=250, keep=1))
  c.remat = "none"
  return c
