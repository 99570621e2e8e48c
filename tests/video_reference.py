"""Independent PyTorch re-statements of the video-generation models that have no installable reference, written from
their published architectures with the original parameter names, for parity tests.

`OpenCLIPText`: OpenCLIP's text tower (open_clip `CLIP.encode_text` layout: token + positional embeddings, pre-LN
residual blocks of `nn.MultiheadAttention` with a fused in-projection and a c_fc → GELU → c_proj MLP under a causal
mask, `ln_final`), and VideoCrafter2's `FrozenOpenCLIPEmbedder(layer="penultimate")` reading of it.
"""

from collections import OrderedDict

import torch
from torch import nn


class ResidualAttentionBlock(nn.Module):
  def __init__(self, width: int, heads: int):
    super().__init__()
    self.ln_1 = nn.LayerNorm(width)
    self.attn = nn.MultiheadAttention(width, heads)
    self.ln_2 = nn.LayerNorm(width)
    self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, 4 * width)), ("gelu", nn.GELU()),
                                          ("c_proj", nn.Linear(4 * width, width))]))

  def forward(self, x, attn_mask):   # x (L, N, D)
    h = self.ln_1(x)
    x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
    return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
  def __init__(self, width: int, layers: int, heads: int):
    super().__init__()
    self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads) for _ in range(layers)])


class OpenCLIPText(nn.Module):
  """Heads of width 64, as OpenCLIP's text towers have; context 77."""

  def __init__(self, vocab_size: int = 49408, width: int = 1024, layers: int = 24, context: int = 77,
               embed_dim: int = 1024):
    super().__init__()
    self.token_embedding = nn.Embedding(vocab_size, width)
    self.positional_embedding = nn.Parameter(torch.randn(context, width) * 0.01)
    self.transformer = Transformer(width, layers, width // 64)
    self.ln_final = nn.LayerNorm(width)
    self.text_projection = nn.Parameter(torch.randn(width, embed_dim) * width**-0.5)
    self.logit_scale = nn.Parameter(torch.tensor(2.659))
    self.register_buffer("attn_mask", torch.full((context, context), float("-inf")).triu_(1), persistent=False)

  def penultimate(self, text: torch.Tensor) -> torch.Tensor:
    """text (N, 77) int64 → (N, 77, D): all blocks but the last, then `ln_final` (VideoCrafter2's conditioning)."""
    x = (self.token_embedding(text) + self.positional_embedding).permute(1, 0, 2)
    for block in self.transformer.resblocks[:-1]:
      x = block(x, self.attn_mask)
    return self.ln_final(x.permute(1, 0, 2))
