"""The demo run: the tiny reward model trained from scratch on the shapes world, all four tasks in both modes.

`make demo` generates the data, trains with this config on this machine's CPU and reports held-out accuracy
(launch/shapes_demo.py); `data.train` and `data.tokenizer` are filled in there.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.workdir = ""
  c.seed = 0
  c.model = ml_collections.ConfigDict(dict(preset="demo_tiny", checkpoint="", dtype="float32"))
  c.data = ml_collections.ConfigDict(dict(train="", image_folder="", tokenizer="", batch_size=16, max_length=512,
                                          patches_per_sample=8, buckets=(320, 448), workers=0, video_frames=4,
                                          assistant_only=False))
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
  c.train = ml_collections.ConfigDict(dict(objective="sft", num_steps=400, num_epochs=0, log_every=25, grad_accum=1,
                                           logits_chunk=192,
                                           tunable_parts=("mm_language_model", "mm_mlp_adapter", "mm_vision_tower")))
  # The visual path learns ten times slower than the language model: at the common rate, its output drifts to a
  # near-constant vector before the language model has learned to read it.
  c.optim = ml_collections.ConfigDict(dict(name="adamw", lr=2e-3, schedule="cosine", warmup_ratio=0.05,
                                           weight_decay=0.0, clip_norm=1.0, projector_lr=2e-4, vision_tower_lr=2e-4))
  c.checkpoint = ml_collections.ConfigDict(dict(every=200, keep=2))
  c.remat = "none"
  return c
