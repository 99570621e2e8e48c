"""Independent PyTorch re-statements of the video-generation models that have no installable reference, written from
their published architectures with the original parameter names, for parity tests.

`OpenCLIPText`: OpenCLIP's text tower (open_clip `CLIP.encode_text` layout: token + positional embeddings, pre-LN
residual blocks of `nn.MultiheadAttention` with a fused in-projection and a c_fc → GELU → c_proj MLP under a causal
mask, `ln_final`), and VideoCrafter2's `FrozenOpenCLIPEmbedder(layer="penultimate")` reading of it.

`simple_tokenize`: open_clip's `SimpleTokenizer` / `tokenize` (CLIP's BPE over a merges list, clean-up, lower case,
start and end tokens, truncation keeping the end token, zero padding), which VideoCrafter2's embedder calls.

`UNetModel`: VideoCrafter2's `lvdm/modules/networks/openaimodel3d.py` UNet as T2V-Turbo (VC2) configures it (linear
transformer projections, temporal convs in every resnet, self-attention-only temporal transformers, `init_attn` with
Conv1d projections, fps conditioning, `time_cond_proj`), in the original's (B·T, C, H, W) layout.
"""

import html
import math
import re
from collections import OrderedDict

import ftfy
import torch
import torch.nn.functional as F
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


def _byte_symbols() -> tuple[list[str], dict[int, str]]:
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
  symbols, extra = {b: chr(b) for b in printable}, 0
  for b in range(256):
    if b not in symbols:
      symbols[b], extra = chr(256 + extra), extra + 1
  return [symbols[b] for b in printable] + [symbols[b] for b in range(256) if b not in printable], symbols


def simple_tokenize(texts: list[str], merges: list[tuple[str, str]], context: int = 77) -> torch.Tensor:
  r"""open_clip.tokenize with a vocabulary built from `merges` as SimpleTokenizer builds it (unicode regex classes
  approximated by Python's: letters [^\W\d_], digits \d)."""
  order, byte_map = _byte_symbols()
  vocab = order + [s + "</w>" for s in order] + ["".join(m) for m in merges] + ["<start_of_text>", "<end_of_text>"]
  encoder, ranks = {t: i for i, t in enumerate(vocab)}, {m: i for i, m in enumerate(merges)}
  pattern = re.compile(r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+",
                       re.IGNORECASE)

  def bpe(token):
    word = tuple(token[:-1]) + (token[-1] + "</w>",)
    while len(word) > 1:
      pairs = {(a, b) for a, b in zip(word, word[1:])}
      best = min(pairs, key=lambda p: ranks.get(p, math.inf))
      if best not in ranks:
        break
      merged, i = [], 0
      while i < len(word):
        if i < len(word) - 1 and (word[i], word[i + 1]) == best:
          merged.append(word[i] + word[i + 1])
          i += 2
        else:
          merged.append(word[i])
          i += 1
      word = tuple(merged)
    return word

  out = torch.zeros(len(texts), context, dtype=torch.long)
  for row, text in enumerate(texts):
    text = re.sub(r"\s+", " ", html.unescape(html.unescape(ftfy.fix_text(text))).strip()).strip().lower()
    ids = [encoder["<start_of_text>"]]
    for token in pattern.findall(text):
      ids += [encoder[t] for t in bpe("".join(byte_map[b] for b in token.encode("utf-8")))]
    ids.append(encoder["<end_of_text>"])
    if len(ids) > context:
      ids = ids[:context]
      ids[-1] = encoder["<end_of_text>"]
    out[row, :len(ids)] = torch.tensor(ids)
  return out


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
  half = dim // 2
  freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
  args = t[:, None].float() * freqs[None]
  return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def to_video(x, b):   # (b t) c h w → b c t h w
  return x.reshape(b, -1, *x.shape[1:]).permute(0, 2, 1, 3, 4)


def to_frames(x):     # b c t h w → (b t) c h w
  return x.permute(0, 2, 1, 3, 4).reshape(-1, x.shape[1], *x.shape[3:])


class TemporalConvBlock(nn.Module):
  def __init__(self, c):
    super().__init__()
    conv = lambda: nn.Conv3d(c, c, (3, 1, 1), padding=(1, 0, 0))  # noqa: E731
    self.conv1 = nn.Sequential(nn.GroupNorm(32, c), nn.SiLU(), conv())
    self.conv2 = nn.Sequential(nn.GroupNorm(32, c), nn.SiLU(), nn.Dropout(0.1), conv())
    self.conv3 = nn.Sequential(nn.GroupNorm(32, c), nn.SiLU(), nn.Dropout(0.1), conv())
    self.conv4 = nn.Sequential(nn.GroupNorm(32, c), nn.SiLU(), nn.Dropout(0.1), conv())

  def forward(self, x):
    return x + self.conv4(self.conv3(self.conv2(self.conv1(x))))


class ResBlock(nn.Module):
  def __init__(self, ch, emb_ch, out_ch):
    super().__init__()
    self.in_layers = nn.Sequential(nn.GroupNorm(32, ch), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1))
    self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_ch, out_ch))
    self.out_layers = nn.Sequential(nn.GroupNorm(32, out_ch), nn.SiLU(), nn.Dropout(0.0),
                                    nn.Conv2d(out_ch, out_ch, 3, padding=1))
    self.skip_connection = nn.Identity() if out_ch == ch else nn.Conv2d(ch, out_ch, 1)
    self.temopral_conv = TemporalConvBlock(out_ch)

  def forward(self, x, emb, b):
    h = self.in_layers(x) + self.emb_layers(emb)[..., None, None]
    h = self.skip_connection(x) + self.out_layers(h)
    return to_frames(self.temopral_conv(to_video(h, b)))


class CrossAttention(nn.Module):
  def __init__(self, dim, heads, dim_head, context_dim=None):
    super().__init__()
    inner = heads * dim_head
    self.heads, self.scale = heads, dim_head**-0.5
    self.to_q = nn.Linear(dim, inner, bias=False)
    self.to_k = nn.Linear(context_dim or dim, inner, bias=False)
    self.to_v = nn.Linear(context_dim or dim, inner, bias=False)
    self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(0.0))

  def forward(self, x, context=None):
    context = x if context is None else context
    split = lambda t: t.reshape(*t.shape[:2], self.heads, -1).transpose(1, 2)  # noqa: E731
    q, k, v = split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context))
    weights = (q @ k.transpose(-1, -2) * self.scale).softmax(-1)
    return self.to_out((weights @ v).transpose(1, 2).reshape(*x.shape[:2], -1))


class GEGLU(nn.Module):
  def __init__(self, dim, inner):
    super().__init__()
    self.proj = nn.Linear(dim, 2 * inner)

  def forward(self, x):
    value, gate = self.proj(x).chunk(2, dim=-1)
    return value * F.gelu(gate)


class BasicTransformerBlock(nn.Module):
  def __init__(self, dim, heads, dim_head, context_dim=None):
    super().__init__()
    self.attn1 = CrossAttention(dim, heads, dim_head)
    self.ff = nn.Module()
    self.ff.net = nn.Sequential(GEGLU(dim, 4 * dim), nn.Dropout(0.0), nn.Linear(4 * dim, dim))
    self.attn2 = CrossAttention(dim, heads, dim_head, context_dim)
    self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

  def forward(self, x, context=None):
    x = self.attn1(self.norm1(x)) + x
    x = self.attn2(self.norm2(x), context) + x
    return self.ff.net(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
  def __init__(self, c, heads, dim_head, context_dim):
    super().__init__()
    self.norm = nn.GroupNorm(32, c, eps=1e-6)
    self.proj_in = nn.Linear(c, heads * dim_head)
    self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(heads * dim_head, heads, dim_head, context_dim)])
    self.proj_out = nn.Linear(heads * dim_head, c)

  def forward(self, x, context):
    n, c, h, w = x.shape
    y = self.proj_in(self.norm(x).reshape(n, c, h * w).transpose(1, 2))
    for block in self.transformer_blocks:
      y = block(y, context)
    return self.proj_out(y).transpose(1, 2).reshape(n, c, h, w) + x


class TemporalTransformer(nn.Module):
  """Self-attention across frames; `linear` False: Conv1d(kernel 1) projections on (b·h·w, c, t)."""

  def __init__(self, c, heads, dim_head, linear):
    super().__init__()
    inner = heads * dim_head
    self.linear = linear
    self.norm = nn.GroupNorm(32, c, eps=1e-6)
    self.proj_in = nn.Linear(c, inner) if linear else nn.Conv1d(c, inner, 1)
    self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(inner, heads, dim_head)])
    self.proj_out = nn.Linear(inner, c) if linear else nn.Conv1d(inner, c, 1)

  def forward(self, x):   # b c t h w
    b, c, t, h, w = x.shape
    y = self.norm(x).permute(0, 3, 4, 1, 2).reshape(b * h * w, c, t)
    y = self.proj_in(y.transpose(1, 2)) if self.linear else self.proj_in(y).transpose(1, 2)
    for block in self.transformer_blocks:
      y = block(y)
    y = self.proj_out(y) if self.linear else self.proj_out(y.transpose(1, 2)).transpose(1, 2)
    return y.reshape(b, h, w, t, c).permute(0, 4, 3, 1, 2) + x


class Downsample(nn.Module):
  def __init__(self, c):
    super().__init__()
    self.op = nn.Conv2d(c, c, 3, stride=2, padding=1)

  def forward(self, x):
    return self.op(x)


class Upsample(nn.Module):
  def __init__(self, c):
    super().__init__()
    self.conv = nn.Conv2d(c, c, 3, padding=1)

  def forward(self, x):
    return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Stage(nn.Sequential):
  def forward(self, x, emb, context, b):
    for layer in self:
      if isinstance(layer, ResBlock):
        x = layer(x, emb, b)
      elif isinstance(layer, SpatialTransformer):
        x = layer(x, context)
      elif isinstance(layer, TemporalTransformer):
        x = to_frames(layer(to_video(x, b)))
      else:
        x = layer(x)
    return x


class UNetModel(nn.Module):
  def __init__(self, in_channels=4, out_channels=4, model_channels=320, channel_mult=(1, 2, 4, 4), num_res_blocks=2,
               attention_resolutions=(4, 2, 1), num_head_channels=64, context_dim=1024, time_cond_proj_dim=256):
    super().__init__()
    emb_ch, hc = 4 * model_channels, num_head_channels
    self.model_channels = model_channels
    self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
    self.fps_embedding = nn.Sequential(nn.Linear(model_channels, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
    self.time_cond_proj = nn.Linear(time_cond_proj_dim, model_channels, bias=False)
    self.input_blocks = nn.ModuleList([Stage(nn.Conv2d(in_channels, model_channels, 3, padding=1))])
    self.init_attn = Stage(TemporalTransformer(model_channels, 8, hc, linear=False))

    def attention(c):
      return [SpatialTransformer(c, c // hc, hc, context_dim), TemporalTransformer(c, c // hc, hc, linear=True)]
    chans, ch, ds = [model_channels], model_channels, 1
    for level, mult in enumerate(channel_mult):
      for _ in range(num_res_blocks):
        layers = [ResBlock(ch, emb_ch, mult * model_channels)]
        ch = mult * model_channels
        layers += attention(ch) if ds in attention_resolutions else []
        self.input_blocks.append(Stage(*layers))
        chans.append(ch)
      if level != len(channel_mult) - 1:
        self.input_blocks.append(Stage(Downsample(ch)))
        chans.append(ch)
        ds *= 2
    self.middle_block = Stage(ResBlock(ch, emb_ch, ch), *attention(ch), ResBlock(ch, emb_ch, ch))
    self.output_blocks = nn.ModuleList()
    for level, mult in list(enumerate(channel_mult))[::-1]:
      for i in range(num_res_blocks + 1):
        layers = [ResBlock(ch + chans.pop(), emb_ch, mult * model_channels)]
        ch = mult * model_channels
        layers += attention(ch) if ds in attention_resolutions else []
        if level and i == num_res_blocks:
          layers.append(Upsample(ch))
          ds //= 2
        self.output_blocks.append(Stage(*layers))
    self.out = nn.Sequential(nn.GroupNorm(32, ch), nn.SiLU(), nn.Conv2d(model_channels, out_channels, 3, padding=1))

  def forward(self, x, timesteps, context, fps, timestep_cond=None):   # x (b, c, t, h, w)
    t_emb = timestep_embedding(timesteps, self.model_channels)
    if timestep_cond is not None:
      t_emb = t_emb + self.time_cond_proj(timestep_cond)
    emb = self.time_embed(t_emb) + self.fps_embedding(timestep_embedding(fps, self.model_channels))
    b, _, t, _, _ = x.shape
    context, emb = context.repeat_interleave(t, dim=0), emb.repeat_interleave(t, dim=0)
    h, skips = to_frames(x), []
    for index, block in enumerate(self.input_blocks):
      h = block(h, emb, context, b)
      if index == 0:
        h = self.init_attn(h, emb, context, b)
      skips.append(h)
    h = self.middle_block(h, emb, context, b)
    for block in self.output_blocks:
      h = block(torch.cat([h, skips.pop()], dim=1), emb, context, b)
    return to_video(self.out(h), b)
