"""UnifiedReward's reward-model run on LLaVA-OneVision-7B (UnifiedReward `train.sh`): lr 2.5e-6, cosine, warm-up
0.03, no weight decay, 3 epochs of the 236K mixture, global batch 128, sequences up to 13,000 tokens, all parts
trainable (the 2025-04 setting; `train.tunable_parts` narrows it)."""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.workdir = ""
  c.seed = 0
  c.model = ml_collections.ConfigDict(dict(preset="llava_onevision_7b", checkpoint="", dtype="bfloat16"))
  # `train`: the mixture file (LLaVA-NeXT's train_data.yaml form) or one JSON / JSONL file; `tokenizer` defaults to
  # the checkpoint's. Step shapes: tokens per sample (cut to a bucket when a batch is shorter) and the visual budget
  # per sample (an anyres image: base + up to 9 tiles; a video: 8 frames).
  c.data = ml_collections.ConfigDict(dict(train="", image_folder="", tokenizer="", batch_size=128, max_length=13_000,
                                          patches_per_sample=10, buckets=(4096, 8192), workers=8, video_frames=8,
                                          assistant_only=False))
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
  # 236K samples × 3 epochs / 128 per step. 4 micro-batches of 32: one sequence per chip on a 32-chip v5p-64
  # (the original ran 4 GPUs × 2 sequences × 16 accumulation steps).
  c.train = ml_collections.ConfigDict(dict(objective="sft", num_steps=5_530, num_epochs=0, log_every=10, grad_accum=4,
                                           logits_chunk=1024,
                                           tunable_parts=("mm_language_model", "mm_mlp_adapter", "mm_vision_tower")))
  # projector_lr / vision_tower_lr: LLaVA-NeXT's mm_projector_lr / mm_vision_tower_lr; None trains them at lr, as the
  # UnifiedReward scripts do.
  c.optim = ml_collections.ConfigDict(dict(name="adamw", lr=2.5e-6, schedule="cosine", warmup_ratio=0.03,
                                           weight_decay=0.0, clip_norm=1.0, projector_lr=None, vision_tower_lr=None))
  c.checkpoint = ml_collections.ConfigDict(dict(every=500, keep=3))
  c.remat = "full"
  return c
