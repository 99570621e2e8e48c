"""Loaded UNets with diffusers' (or VideoCrafter's) numpy interface: channels-first arrays in and out, channels-last
inside the Flax modules of `models/unet2d.py` and `models/unet3d.py`.

`UNet` is SDXL's `UNet2DConditionModel`, `UNet3D` diffusers' video UNet, `VideoCrafter` VideoCrafter2's `UNetModel`;
each holds `config`, `params` and the Flax `module`, and is what `ureward_jax.load` returns for its folder.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.linen as nn
import numpy as np

from ureward_jax import pretrained
from ureward_jax.models.unet2d import UNet2DConditionConfig, UNet2DConditionModel
from ureward_jax.models.unet3d import (
  UNet3DConditionConfig,
  UNet3DConditionModel,
  VideoCrafterUNet,
  VideoCrafterUNetConfig,
)
from ureward_jax.runners.loaded import Loaded


@dataclasses.dataclass
class UNet(Loaded):
  """A loaded SDXL UNet, with diffusers-compatible `forward`."""
  config: UNet2DConditionConfig
  module: UNet2DConditionModel
  module_class: ClassVar[type[nn.Module]] = UNet2DConditionModel

  def forward(self, sample, timestep, encoder_hidden_states, added_cond_kwargs=None) -> np.ndarray:
    """The prediction (B, C, H, W) for diffusers' arguments: sample (B, C, H, W), timestep a number or (B,),
    encoder_hidden_states (B, S, D), added_cond_kwargs {"text_embeds": (B, P), "time_ids": (B, 6)}."""
    added = added_cond_kwargs or {}
    sample = np.asarray(sample).transpose(0, 2, 3, 1)
    out = self._jitted({"params": self.params}, sample, np.asarray(timestep, np.float32),
                       np.asarray(encoder_hidden_states), _optional(added.get("text_embeds")),
                       _optional(added.get("time_ids")))
    return np.asarray(out).transpose(0, 3, 1, 2)


@dataclasses.dataclass
class UNet3D(Loaded):
  """A loaded diffusers video UNet, with diffusers-compatible `forward`."""
  config: UNet3DConditionConfig
  module: UNet3DConditionModel
  module_class: ClassVar[type[nn.Module]] = UNet3DConditionModel

  def forward(self, sample, timestep, encoder_hidden_states, timestep_cond=None) -> np.ndarray:
    """The prediction (B, C, T, H, W) for diffusers' arguments: sample (B, C, T, H, W), timestep a number or (B,),
    encoder_hidden_states (B, S, D), timestep_cond (B, time_cond_proj_dim) when the UNet has one."""
    sample = np.asarray(sample).transpose(0, 2, 3, 4, 1)
    out = self._jitted({"params": self.params}, sample, np.asarray(timestep, np.float32),
                       np.asarray(encoder_hidden_states), _optional(timestep_cond))
    return np.asarray(out).transpose(0, 4, 1, 2, 3)


@dataclasses.dataclass
class VideoCrafter(Loaded):
  """A loaded VideoCrafter2 UNet, with `forward` taking `UNetModel`'s arguments."""
  config: VideoCrafterUNetConfig
  module: VideoCrafterUNet
  module_class: ClassVar[type[nn.Module]] = VideoCrafterUNet

  def forward(self, x, timesteps, context, fps=16, timestep_cond=None) -> np.ndarray:
    """The prediction (B, C, T, H, W) for x (B, C, T, H, W), timesteps a number or (B,), context (B, S, D), fps a
    number or (B,), timestep_cond (B, time_cond_proj_dim) (used only with `config.use_w_embedding`)."""
    out = self._jitted({"params": self.params}, np.asarray(x).transpose(0, 2, 3, 4, 1),
                       np.asarray(timesteps, np.float32), np.asarray(context), np.asarray(fps, np.float32),
                       _optional(timestep_cond))
    return np.asarray(out).transpose(0, 4, 1, 2, 3)


def _optional(x):
  return None if x is None else np.asarray(x)


pretrained.register("unet2d_condition", pretrained.single_device(UNet2DConditionConfig, UNet))
pretrained.register("unet3d_condition", pretrained.single_device(UNet3DConditionConfig, UNet3D))
pretrained.register("videocrafter_unet", pretrained.single_device(VideoCrafterUNetConfig, VideoCrafter))
