"""DPO of LLaVA-Video-7B on UnifiedReward-built video-understanding pairs (UnifiedReward
`dpo_video_understand_llava_video_7b.sh`): the image run's settings (configs/dpo_llava_ov_7b.py) with global batch
64 (the original: 4 GPUs × 1 × 16 accumulation steps), up to 24 frames per video (LLaVA-NeXT's `frames_upbound`)
and sequences up to 32,768 tokens of pooled frames.
"""

from configs import dpo_llava_ov_7b


def get_config():
  c = dpo_llava_ov_7b.get_config()
  c.data.update(batch_size=64, max_length=32_768, buckets=(8192, 16_384), video_frames=24, patches_per_sample=24)
  c.train.update(grad_accum=8)
  return c
