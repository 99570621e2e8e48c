"""Diffusion-DPO of SDXL-Turbo on UnifiedReward-built image pairs (UnifiedReward `DiffusionDPO/launchers/turbo_dpo.sh`):
β 5000, 512 px, Turbo timesteps on the zero-terminal-SNR schedule, Adafactor (no parameter scaling, clip threshold 1,
weight decay 1e-2) after gradient clipping to 1, lr 1e-8 scaled by the pairs per step, constant after 5 warm-up
steps, 20 steps of 512 pairs (the original: 32 per GPU × 16 accumulation steps on each GPU; set batch_size to
512 × your GPU count to match a multi-GPU run), gradient checkpointing.

  python -m converters.sdxl --src /ckpt/sdxl-turbo --dst /ckpt/sdxl-turbo-jax   # with the fp16-fix VAE in vae/
  python -m launch.train --config=configs/dpo_sdxl_turbo.py --config.workdir=/runs/sdxl-dpo \\
      --config.model.checkpoint=/ckpt/sdxl-turbo-jax --config.data.train=/data/pairs.jsonl
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.workdir = ""
  c.seed = 0
  # A converted diffusers pipeline folder (converters.sdxl); the UnifiedReward run swaps in madebyollin's fp16-fix VAE.
  c.model = ml_collections.ConfigDict(dict(checkpoint="", dtype="bfloat16"))
  # `train`: {"caption", "jpg_0", "jpg_1", "label_0"} rows, as `ureward build-pairs --task image_generation` writes.
  # `encoded`: a folder written by `python -m launch.encode_pairs` with this config; training then reads the VAE
  # latents and text embeddings from it and runs no encoder (each image keeps its first epoch's flip).
  c.data = ml_collections.ConfigDict(dict(train="", image_folder="", batch_size=512, resolution=512,
                                          random_flip=True, workers=8, encoded=""))
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
  c.train = ml_collections.ConfigDict(dict(objective="diffusion_dpo", num_steps=20, num_epochs=0, log_every=1,
                                           grad_accum=16))
  c.diffusion_dpo = ml_collections.ConfigDict(dict(beta=5000.0, turbo=True, reference_dtype="bfloat16"))
  # warmup_ratio 0.25 of 20 steps = the original's 5 warm-up steps.
  c.optim = ml_collections.ConfigDict(dict(name="adafactor", lr=1e-8, scale_lr=True, schedule="constant",
                                           warmup_ratio=0.25, weight_decay=1e-2, clip_norm=1.0, clip_threshold=1.0))
  c.checkpoint = ml_collections.ConfigDict(dict(every=5, keep=3))
  c.remat = "full"
  return c
