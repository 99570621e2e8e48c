"""Video Diffusion-DPO of T2V-Turbo (VC2) on UnifiedReward-built video pairs, as UnifiedReward runs VideoDPO's
`T2VTurboDPO` (`VideoDPO/configs/t2v_turbo_dpo/config.yaml`): β 5000; t and noise drawn per clip on the 50-step DDIM
grid; the squared error averaged over channels, frames and height, one term per latent column; each pair's term
× 0.72 (VideoDPO's (0.72 / score)^dupbeta with no score); fps conditioning 16; the guidance embedding unused; the
Linear layers alone train; the temporal convs' dropout 0.1 on in the policy and, with masks of its own, in the
reference (Lightning's `fit` puts the `ref_model.eval()` of `T2VTurboDPO` back into training mode); clips of 2 frames
(stride 4) at 320×512, the caption dropped for a pair with probability 0.2; AdamW (torch defaults, weight decay
1e-2) at a constant 2e-5, no clipping; 256 pairs per optimiser step (16 per GPU × 4 GPUs × 4 accumulation steps; set
batch_size to 64 × your accumulation × GPU count to match another run); 5 epochs.

The config file names a OneCycleLR schedule (`model.lr_scheduler`: peak 2e-5, pct_start 0.2, cosine, final div 10),
but VideoDPO builds the model from `model.params` alone, so no scheduler runs; `optim.schedule = "onecycle"` trains
with it (torch's OneCycleLR, div 25, β₁ cycled). The original computes in fp32; `model.dtype` "float32" matches it,
bfloat16 is the accelerators' choice.

  python -m converters.t2v_turbo --src t2v-turbo_model.ckpt --tokenizer bpe_simple_vocab_16e6.txt.gz --dst /ckpt/t2v
  python -m launch.train --config=configs/dpo_t2v_turbo.py --config.workdir=/runs/t2v-dpo \\
      --config.model.checkpoint=/ckpt/t2v --config.data.train=/data/video_pairs.jsonl

Switches for other variants: `video_dpo.paired` (one t and ε per pair, as Diffusion-DPO), `video_dpo.keep_width`
False (average every axis), `video_dpo.trainable` "all", `video_dpo.reference_dropout` False (the reference in
evaluation mode), `video_dpo.reference` a converted reference UNet folder (VideoDPO's `t2v-turbo_ref_model.ckpt`; by
default the starting UNet).
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.workdir = ""
  c.seed = 0
  # A converted T2V-Turbo pipeline folder (converters.t2v_turbo), e.g. UnifiedReward's merged t2v-turbo_model.ckpt.
  c.model = ml_collections.ConfigDict(dict(checkpoint="", dtype="bfloat16"))
  # `train`: {"caption", "chosen", "rejected", "score"?} rows, as `ureward build-pairs --task video_generation`
  # writes; videos are mp4 files or folders of frames, relative to `video_folder` (default: the file's folder).
  # Videos of another size than height × width are resized to it (VideoDPO's), or with center_crop scaled and cropped.
  c.data = ml_collections.ConfigDict(dict(train="", video_folder="", batch_size=256, video_length=2, frame_stride=4,
                                          height=320, width=512, center_crop=False, caption_dropout=0.2, workers=8))
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
  c.train = ml_collections.ConfigDict(dict(objective="video_dpo", num_steps=0, num_epochs=5, log_every=1,
                                           grad_accum=4))
  c.video_dpo = ml_collections.ConfigDict(dict(beta=5000.0, paired=False, keep_width=True, fps=16, dupbeta=1.0,
                                               w_embedding=False, trainable="linear", reference="",
                                               reference_dtype="bfloat16", reference_dropout=True))
  # pct_start, div_factor and final_div_factor shape the "onecycle" schedule only; warmup_ratio the others.
  c.optim = ml_collections.ConfigDict(dict(name="adamw", lr=2e-5, schedule="constant", warmup_ratio=0.0, pct_start=0.2,
                                           div_factor=25.0, final_div_factor=10.0, weight_decay=1e-2, clip_norm=0.0))
  c.checkpoint = ml_collections.ConfigDict(dict(every=100, keep=3))
  c.remat = "full"
  return c
