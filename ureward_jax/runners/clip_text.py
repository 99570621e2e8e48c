"""The loaded CLIP text encoder, with transformers' numpy interface around `models/clip_text.py`: what
`ureward_jax.load` returns for a `clip_text` folder."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar

import flax.linen as nn
import jax
import numpy as np

from ureward_jax import pretrained
from ureward_jax.models.clip_text import CLIPTextConfig, CLIPTextModel
from ureward_jax.runners.loaded import Loaded


@dataclasses.dataclass
class CLIPTextEncoder(Loaded):
  """A loaded checkpoint: `config`, `params`, the Flax `module`, and a `forward` mirroring the PyTorch call."""
  config: CLIPTextConfig
  module: CLIPTextModel
  module_class: ClassVar[type[nn.Module]] = CLIPTextModel

  @functools.cached_property
  def _jitted(self):   # `output_hidden_states` decides the output's structure: a static argument
    def apply(params, input_ids, attention_mask, output_hidden_states):
      return self.module.apply({"params": params}, input_ids, attention_mask, output_hidden_states)
    return jax.jit(apply, static_argnums=3)

  def forward(self, input_ids, attention_mask=None, output_hidden_states: bool = False) -> dict[str, Any]:
    """The outputs of `CLIPTextModel` as numpy arrays (`hidden_states` a tuple of them) for (B, T) `input_ids`
    and an optional (B, T) `attention_mask`, as transformers' module takes them.

    Without a mask every token is real: an all-ones mask, so that both cases share one compilation per shape.
    """
    input_ids = np.asarray(input_ids).astype(np.int32)
    attention_mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask, np.int32)
    out = self._jitted(self.params, input_ids, attention_mask, bool(output_hidden_states))
    return {k: tuple(np.asarray(h) for h in v) if k == "hidden_states" else np.asarray(v) for k, v in out.items()}


pretrained.register("clip_text", pretrained.single_device(CLIPTextConfig, CLIPTextEncoder))
