"""A tiny T2V-Turbo checkpoint in VideoCrafter2's file layout, built from the PyTorch re-statements with every
parameter perturbed: a Lightning `.ckpt` (UNet without `time_cond_proj`, latent-diffusion VAE, OpenCLIP text tower,
schedule buffers, a pickled settings object), T2V-Turbo's LoRA list, open_clip's merges file and the model's yaml;
then converted by `python -m converters.t2v_turbo`."""

import gzip
from pathlib import Path

import diffusers
import numpy as np
import torch
import yaml

from converters import sdxl, t2v_turbo
from tests.models.test_unet3d import perturbed
from tests.models.test_videocrafter import TINY
from tests.tiny_sdxl import MERGES
from tests.video_reference import OpenCLIPText, UNetModel
from ureward_jax.models import unet3d, vae

WIDTH = 64                                       # OpenCLIP heads are 64 wide: one head
UNET = {**TINY, "context_dim": WIDTH}
VOCAB = 512 + len(MERGES) + 2
VC2_BETAS = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2


class Settings:
  """Stands for a Lightning checkpoint's pickled hyper-parameters: a class the reader must not need."""


def schedule_buffers(betas):
  ac = np.cumprod(1 - betas)
  return {"betas": torch.tensor(betas, dtype=torch.float32), "alphas_cumprod": torch.tensor(ac, dtype=torch.float32),
          "alphas_cumprod_prev": torch.tensor(np.append(1.0, ac[:-1]), dtype=torch.float32),
          "scale_factor": torch.tensor(0.18215)}


def build(root: Path) -> dict:
  """Write the files under `root` and convert them to `root/converted`. Returns the PyTorch models (the UNet with
  the LoRA merged), the checkpoint's tensors (`state`), the merged UNet and VAE tensors and the paths."""
  torch.manual_seed(0)
  unet = perturbed(UNetModel(**UNET), 1)
  text = perturbed(OpenCLIPText(vocab_size=VOCAB, width=WIDTH, layers=3, embed_dim=32), 2)
  autoencoder = perturbed(diffusers.AutoencoderKL(
      block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32, down_block_types=("DownEncoderBlock2D",) * 2,
      up_block_types=("UpDecoderBlock2D",) * 2), 3)
  vae_config = vae.AutoencoderKLConfig.from_dict(dict(autoencoder.config))
  vae_tensors = t2v_turbo.export_vae(sdxl.params_from_tensors(
      {k: v.numpy() for k, v in autoencoder.state_dict().items()}, vae.param_shapes(vae_config)), vae_config)

  config = unet3d.VideoCrafterUNetConfig.from_dict(UNET)
  # Copies: `load_state_dict` below writes the merged weights into the very tensors `.numpy()` would share.
  base = {t2v_turbo.UNET_PREFIX + k: v.numpy().copy() for k, v in unet.state_dict().items()
          if "time_cond_proj" not in k}
  g, lora = torch.Generator().manual_seed(4), []
  for name in t2v_turbo.lora_targets(config):
    weight = unet.state_dict()[name + ".weight"]
    lora += [0.1 * torch.randn(weight.shape[0], 4, *(1,) * (weight.ndim - 2), generator=g),
             0.1 * torch.randn(4, *weight.shape[1:], generator=g)]
  merged = t2v_turbo.merge_lora(base, [t.numpy() for t in lora], config)
  unet.load_state_dict({k.removeprefix(t2v_turbo.UNET_PREFIX): torch.from_numpy(v) for k, v in merged.items()})

  text_tensors = {t2v_turbo.TEXT_PREFIX + k: v for k, v in text.state_dict().items()}
  state = {**{k: torch.from_numpy(v) for k, v in {**base, **vae_tensors}.items()}, **text_tensors,
           **schedule_buffers(VC2_BETAS)}
  torch.save({"state_dict": state, "epoch": 3, "hyper_parameters": Settings()}, root / "model.ckpt")
  torch.save(lora, root / "unet_lora.pt")
  with gzip.open(root / "bpe.txt.gz", "wt", encoding="utf-8") as f:
    f.write("\n".join(["#version: test"] + [" ".join(m) for m in MERGES]) + "\n")
  # The UNet's layout is not in its tensors: the model's yaml gives it (here only the toy's own values).
  (root / "config.yaml").write_text(yaml.safe_dump({"model": {"params": {"unet_config": {"params": dict(
      UNET, channel_mult=list(UNET["channel_mult"]), attention_resolutions=list(UNET["attention_resolutions"]),
      use_linear=True, temporal_conv=True)}}}}))
  t2v_turbo.main(["--src", str(root / "model.ckpt"), "--lora", str(root / "unet_lora.pt"), "--tokenizer",
                  str(root / "bpe.txt.gz"), "--config", str(root / "config.yaml"), "--dst", str(root / "converted")])
  return dict(root=root, folder=root / "converted", unet=unet, text=text, vae=autoencoder, state=state,
              merged=merged, vae_tensors=vae_tensors)
