"""VideoCrafter2 / T2V-Turbo checkpoints ⇄ our folders.

The UNet: the checkpoint's `model.diffusion_model.*` (`ref_model.diffusion_model.*` in VideoDPO's reference-model
files) is `openaimodel3d.UNetModel`; our `VideoCrafterUNet` mirrors its names (`input_blocks.1.0.in_layers.0`), so
the table is derived from our parameter tree with the openai UNet's numbered containers.

The VAE: `first_stage_model.*` is latent-diffusion's `AutoencoderKL` (Stable Diffusion's, scale factor 0.18215,
applied per frame). Its names are renamed to diffusers' (`encoder.down.{i}.block.{j}` → `down_blocks.{i}.resnets.{j}`,
the decoder's levels in reverse order, `mid.attn_1.q` → `to_q` with its 1×1 conv kernel flattened to a matrix) and
converted by the shared table of `models/vae.py`.

The text encoder: the checkpoint's `cond_stage_model.model.*` is OpenCLIP's ViT-H text tower. Its blocks are
transformers' CLIP text blocks under other names, with the attention's q, k and v projections fused into one
`in_proj` (rows q, k, v); so it is renamed and split into transformers' layout and converted by the shared derived
table (`converters/sdxl.py`), and merged back on export. OpenCLIP text towers have heads of width 64.
`logit_scale` (the contrastive temperature) is not part of the text encoder and is skipped.
"""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from converters import common, sdxl
from converters.common import ConversionError
from ureward_jax.models import clip_text, unet3d, vae

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
# latent-diffusion's AutoencoderKL: ddconfig ch 128, ch_mult (1, 2, 4, 4), 2 res blocks, z 4; scale_factor 0.18215.
LDM_VAE = vae.AutoencoderKLConfig(block_out_channels=(128, 256, 512, 512), scaling_factor=0.18215, sample_size=512,
                                  force_upcast=False)
# The openai UNet's containers whose children are numbered (`in_layers.0`); a bare index (`input_blocks.1.0`) is a
# module of ours named "0" and maps as it is.
UNET_INDEXED = ("input_blocks", "output_blocks", "out", "in_layers", "emb_layers", "out_layers", "transformer_blocks",
                "to_out", "net", "conv1", "conv2", "conv3", "conv4")
OPENCLIP_HEAD_WIDTH = 64
OPENCLIP_IGNORED = (r"(^|\.)logit_scale$", r"(^|\.)attn_mask$")
# (OpenCLIP, transformers CLIP) name prefixes, `{}` a block index; the fused attention projection is split apart.
_OPENCLIP_NAMES = (
    ("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
    ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
    ("transformer.resblocks.{}.ln_1.", "text_model.encoder.layers.{}.layer_norm1."),
    ("transformer.resblocks.{}.ln_2.", "text_model.encoder.layers.{}.layer_norm2."),
    ("transformer.resblocks.{}.attn.out_proj.", "text_model.encoder.layers.{}.self_attn.out_proj."),
    ("transformer.resblocks.{}.mlp.c_fc.", "text_model.encoder.layers.{}.mlp.fc1."),
    ("transformer.resblocks.{}.mlp.c_proj.", "text_model.encoder.layers.{}.mlp.fc2."),
    ("ln_final.", "text_model.final_layer_norm."),
)
_IN_PROJ = re.compile(r"^transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$")


def unet_params(tensors: Mapping[str, common.StoredTensor | np.ndarray], config: unet3d.VideoCrafterUNetConfig,
                prefix: str = UNET_PREFIX, dtype=None) -> dict:
  """Our `VideoCrafterUNet` params from the UNet tensors named under `prefix`; tensors outside it are not looked at,
  every one under it must be used and every parameter found."""
  inside = {name[len(prefix):]: tensor for name, tensor in tensors.items() if name.startswith(prefix)}
  if not inside:
    raise ConversionError(f"no tensor is named under {prefix!r}: not a VideoCrafter2 UNet checkpoint")
  try:
    return sdxl.params_from_tensors(inside, unet3d.param_shapes(config), dtype=dtype, indexed=UNET_INDEXED)
  except ConversionError as e:   # name the checkpoint's tensors, prefix included
    raise ConversionError(re.sub(r"'([\w.]+)'", lambda m: repr(prefix + m.group(1)), str(e))) from None


def export_unet(params, config: unet3d.VideoCrafterUNetConfig, prefix: str = UNET_PREFIX) -> dict[str, np.ndarray]:
  """Our `VideoCrafterUNet` params → the checkpoint's UNet tensors under `prefix`."""
  expected = common.flat_shapes(unet3d.param_shapes(config))
  tensors = common.export(common.flatten(params), sdxl.rules(expected, UNET_INDEXED))
  return {prefix + name: value for name, value in tensors.items()}


# `UNetModel`'s children in the order its constructors register them, which `named_modules()` follows; numbered
# children come in index order.
_REGISTRATION_ORDER = (
    "time_embed", "fps_embedding", "time_cond_proj", "input_blocks", "init_attn", "middle_block", "output_blocks",
    "out", "in_layers", "emb_layers", "out_layers", "skip_connection", "temopral_conv", "conv1", "conv2", "conv3",
    "conv4", "norm", "proj_in", "transformer_blocks", "proj_out", "attn1", "ff", "attn2", "to_q", "to_k", "to_v",
    "to_out", "net", "proj", "op", "conv")


def lora_targets(config: unet3d.VideoCrafterUNetConfig) -> list[str]:
  """The UNet modules T2V-Turbo's LoRA wraps, by source name (`input_blocks.1.0.in_layers.2`), in the order of its
  positional `unet_lora.pt` list: every `nn.Linear`, `nn.Conv2d` and `nn.Conv3d` under `UNetModel` (not the Conv1d
  projections of `init_attn`), as `named_modules()` walks them."""
  shapes = common.flat_shapes(unet3d.param_shapes(config))
  modules = [rule.source.removesuffix(".weight") for rule in sdxl.rules(shapes, UNET_INDEXED)
             if rule.target.endswith("/kernel") and len(shapes[rule.target]) != 3]

  def key(name):
    return [(1, int(part)) if part.isdigit() else (0, _REGISTRATION_ORDER.index(part)) for part in name.split(".")]
  return sorted(modules, key=key)


def merge_lora(tensors: dict[str, np.ndarray], lora: list[np.ndarray], config: unet3d.VideoCrafterUNetConfig,
               prefix: str = UNET_PREFIX, scale: float = 1.0) -> dict[str, np.ndarray]:
  """`tensors` with T2V-Turbo's LoRA merged in: W ← W + scale · up @ down for each of `lora_targets` in turn, `lora`
  being [up₀, down₀, up₁, down₁, …] (convolutions flattened to matrices over their kernel). A target missing from
  `tensors` (T2V-Turbo's `time_cond_proj`, never saved) is taken as zeros: the merged weight is the delta alone."""
  targets = lora_targets(config)
  if len(lora) != 2 * len(targets):
    raise ConversionError(f"the LoRA list holds {len(lora)} tensors; this UNet has {len(targets)} LoRA targets, "
                          f"so {2 * len(targets)} are expected (up, down for each)")
  merged = dict(tensors)
  for index, module in enumerate(targets):
    up, down = (np.asarray(t, np.float32) for t in lora[2 * index:2 * index + 2])
    delta = scale * up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)
    name = f"{prefix}{module}.weight"
    base = merged.get(name)
    if base is None:
      base = np.zeros((up.shape[0], *down.shape[1:]), np.float32)
    if delta.size != base.size:
      raise ConversionError(f"LoRA pair {index} (up {up.shape}, down {down.shape}) does not fit {name} "
                            f"{tuple(base.shape)}")
    merged[name] = (base.astype(np.float32) + delta.reshape(base.shape)).astype(base.dtype)
  return merged


def _ldm_vae_rules(levels: int) -> list[tuple[str, str]]:
  """(latent-diffusion, diffusers) VAE name prefixes; `{}` is a block index."""
  rules = [("encoder.down.{}.block.{}.", "encoder.down_blocks.{}.resnets.{}."),
           ("encoder.down.{}.downsample.conv.", "encoder.down_blocks.{}.downsamplers.0.conv.")]
  for part in ("encoder", "decoder"):
    rules += [(f"{part}.mid.block_{k + 1}.", f"{part}.mid_block.resnets.{k}.") for k in range(2)]
    rules += [(f"{part}.mid.attn_1.{ldm}.", f"{part}.mid_block.attentions.0.{ours}.")
              for ldm, ours in (("norm", "group_norm"), ("q", "to_q"), ("k", "to_k"), ("v", "to_v"),
                                ("proj_out", "to_out.0"))]
    rules.append((f"{part}.norm_out.", f"{part}.conv_norm_out."))
  for level in range(levels):   # the decoder's `up` runs from the lowest resolution's index down
    rules += [(f"decoder.up.{level}.block.{{}}.", f"decoder.up_blocks.{levels - 1 - level}.resnets.{{}}."),
              (f"decoder.up.{level}.upsample.conv.", f"decoder.up_blocks.{levels - 1 - level}.upsamplers.0.conv.")]
  return rules


_ATTENTION_PROJECTION = re.compile(r"mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$")


def vae_params(tensors: Mapping[str, common.StoredTensor | np.ndarray], config: vae.AutoencoderKLConfig = LDM_VAE,
               prefix: str = VAE_PREFIX, dtype=None) -> dict:
  """Our VAE params from latent-diffusion `AutoencoderKL` tensors named under `prefix`."""
  rules = _ldm_vae_rules(len(config.block_out_channels))
  renamed = {}
  for name, tensor in common.as_stored(tensors).items():
    if not name.startswith(prefix):
      continue
    name = _renamed(name[len(prefix):], rules) or name[len(prefix):]
    name = re.sub(r"\.nin_shortcut\.", ".conv_shortcut.", name)
    if _ATTENTION_PROJECTION.search(name):   # a 1×1 conv over channels is a Linear
      value = tensor.load()
      tensor = common.InMemoryTensor(value.reshape(value.shape[:2]))
    renamed[name] = tensor
  if not renamed:
    raise ConversionError(f"no tensor is named under {prefix!r}: not a latent-diffusion VAE checkpoint")
  try:
    return sdxl.params_from_tensors(renamed, vae.param_shapes(config), dtype=dtype)
  except ConversionError as e:
    raise ConversionError(f"{e}\n(names in diffusers' VAE layout, under {prefix!r})") from None


def export_vae(params, config: vae.AutoencoderKLConfig = LDM_VAE, prefix: str = VAE_PREFIX) -> dict[str, np.ndarray]:
  """Our VAE params → latent-diffusion `AutoencoderKL` tensors under `prefix`."""
  expected = common.flat_shapes(vae.param_shapes(config))
  inverse = [(ours, ldm) for ldm, ours in _ldm_vae_rules(len(config.block_out_channels))]
  out = {}
  for name, value in common.export(common.flatten(params), sdxl.rules(expected)).items():
    if _ATTENTION_PROJECTION.search(name):
      value = value.reshape(*value.shape, 1, 1)
    name = re.sub(r"\.conv_shortcut\.", ".nin_shortcut.", _renamed(name, inverse) or name)
    out[prefix + name] = value
  return out


def openclip_text_config(tensors: Mapping[str, common.StoredTensor], prefix: str = "") -> clip_text.CLIPTextConfig:
  """The text tower's shape, read from its tensors (under `prefix`): width, depth, vocabulary, context."""
  def shape(name):
    if prefix + name not in tensors:
      raise ConversionError(f"missing tensor {prefix + name!r}: not an OpenCLIP text tower")
    return tuple(tensors[prefix + name].shape)
  vocab, width = shape("token_embedding.weight")
  layers = common.count_layers([n[len(prefix):] for n in tensors if n.startswith(prefix)],
                               "transformer.resblocks.{i}.ln_1.weight")
  return clip_text.CLIPTextConfig(vocab_size=vocab, hidden_size=width, intermediate_size=shape(
      "transformer.resblocks.0.mlp.c_fc.weight")[0], num_hidden_layers=layers,
      num_attention_heads=width // OPENCLIP_HEAD_WIDTH, max_position_embeddings=shape("positional_embedding")[0],
      hidden_act="gelu", projection_dim=shape("text_projection")[1], eos_token_id=clip_text.LEGACY_EOS_TOKEN_ID,
      pad_token_id=0, with_projection=True)


def openclip_text_params(tensors: Mapping[str, common.StoredTensor], prefix: str = "", dtype=None
                         ) -> tuple[clip_text.CLIPTextConfig, dict]:
  """(config, our `clip_text` params) from OpenCLIP text-tower tensors named under `prefix`; every tensor under it
  must be used (but `logit_scale`), every parameter found."""
  tensors = common.as_stored(tensors)
  config = openclip_text_config(tensors, prefix)
  renamed = {}
  for name, tensor in tensors.items():
    if not name.startswith(prefix):
      continue
    name = name[len(prefix):]
    if match := _IN_PROJ.match(name):
      layer, kind = match.groups()
      fused = tensor.load()
      for part, value in zip(("q_proj", "k_proj", "v_proj"), np.split(fused, 3, axis=0)):
        renamed[f"text_model.encoder.layers.{layer}.self_attn.{part}.{kind}"] = common.InMemoryTensor(value)
      continue
    if name == "text_projection":   # OpenCLIP multiplies x @ P: already our (in, out) kernel; ours is stored (out, in)
      renamed["text_projection.weight"] = common.InMemoryTensor(np.ascontiguousarray(tensor.load().T))
      continue
    name = _renamed(name, _OPENCLIP_NAMES) or name   # an unknown name stays, and is reported as unexpected
    renamed[name] = tensor
  try:
    params = sdxl.params_from_tensors(renamed, clip_text.param_shapes(config), dtype=dtype, ignore=OPENCLIP_IGNORED)
  except ConversionError as e:   # name the checkpoint's tensors, not the renamed ones
    raise ConversionError(re.sub(r"'([\w.]+)'", lambda m: repr(_openclip_name(m.group(1), prefix)), str(e))) from None
  return config, params


def _openclip_name(name: str, prefix: str) -> str:
  """The checkpoint name behind a renamed tensor (a q, k or v part: its fused `in_proj` and which rows)."""
  if match := re.match(r"text_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$", name):
    layer, part, kind = match.groups()
    return f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{kind} ({part} rows)"
  if name == "text_projection.weight":
    return prefix + "text_projection"
  return prefix + (_renamed(name, [(ours, theirs) for theirs, ours in _OPENCLIP_NAMES]) or name)


def export_openclip_text(params, config: clip_text.CLIPTextConfig, prefix: str = "") -> dict[str, np.ndarray]:
  """Our `clip_text` params → OpenCLIP text-tower tensors under `prefix` (q, k, v fused back into `in_proj`)."""
  flat = common.flatten(params)
  expected = common.flat_shapes(clip_text.param_shapes(config))
  hf = common.export(flat, sdxl.rules(expected))
  out = {}
  for layer in range(config.num_hidden_layers):
    attention = f"text_model.encoder.layers.{layer}.self_attn."
    for kind in ("weight", "bias"):
      out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = np.concatenate(
          [hf.pop(f"{attention}{part}.{kind}") for part in ("q_proj", "k_proj", "v_proj")])
  out["text_projection"] = np.ascontiguousarray(hf.pop("text_projection.weight").T)
  inverse = [(ours, theirs) for theirs, ours in _OPENCLIP_NAMES]
  for name, value in hf.items():
    out[_renamed(name, inverse)] = value
  return {prefix + name: value for name, value in out.items()}


def _renamed(name: str, table) -> str | None:
  """`name` with the first matching prefix of `table` ((from, to) pairs, `{}` = digits) replaced; None if none."""
  for source, target in table:
    if match := re.match(re.escape(source).replace(r"\{\}", r"(\d+)"), name):
      return target.format(*match.groups()) + name[match.end():]
  return None
