"""DPO of LLaVA-OneVision-7B on UnifiedReward-built image-understanding pairs (UnifiedReward
`dpo_image_understand_ov7b.sh`): β 0.1, sigmoid loss, no label smoothing or SFT term, lr 5e-7, cosine, warm-up 0.3,
3 epochs, global batch 32 (the original: 4 GPUs × 1 × 8 accumulation steps), sequences up to 10,000 tokens, all
parts trainable, a frozen copy of the starting model as the reference (`dpo.reference`: "step" runs it in every step,
"precomputed" once over the data before training).

  python -m launch.train --config=configs/dpo_llava_ov_7b.py --config.workdir=/runs/dpo-ov \\
      --config.model.checkpoint=/ckpt/llava-ov-7b-jax --config.data.train=/data/dpo.jsonl
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.workdir = ""
  c.seed = 0
  c.model = ml_collections.ConfigDict(dict(preset="llava_onevision_7b", checkpoint="", dtype="bfloat16"))
  # `train`: the records `ureward build-pairs` writes ({"id", "image" | "video", "prompt", "chosen", "rejected"}).
  c.data = ml_collections.ConfigDict(dict(train="", image_folder="", tokenizer="", batch_size=32, max_length=10_000,
                                          patches_per_sample=10, buckets=(2048, 4096), workers=8, video_frames=8,
                                          assistant_only=False))
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
  # num_epochs sets num_steps from the number of pairs. 4 micro-batches of 8 pairs (16 sequences).
  c.train = ml_collections.ConfigDict(dict(objective="dpo", num_steps=0, num_epochs=3, log_every=10, grad_accum=4,
                                           logits_chunk=1024,
                                           tunable_parts=("mm_language_model", "mm_mlp_adapter", "mm_vision_tower")))
  c.dpo = ml_collections.ConfigDict(dict(beta=0.1, loss_type="sigmoid", label_smoothing=0.0, gamma=0.0,
                                         reference="step", reference_dtype="bfloat16"))
  c.optim = ml_collections.ConfigDict(dict(name="adamw", lr=5e-7, schedule="cosine", warmup_ratio=0.3,
                                           weight_decay=0.0, clip_norm=1.0, projector_lr=None, vision_tower_lr=None))
  c.checkpoint = ml_collections.ConfigDict(dict(every=200, keep=3))
  c.remat = "full"
  return c
