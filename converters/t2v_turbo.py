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

As a program it converts a whole checkpoint (`.ckpt` / `.pt`, read without torch) into our folder:

  python -m converters.t2v_turbo --src VideoCrafter2/model.ckpt --lora T2V-Turbo-VC2/unet_lora.pt \
      --tokenizer open_clip/bpe_simple_vocab_16e6.txt.gz --dst t2v-turbo
  python -m converters.t2v_turbo --src t2v-turbo_ref_model.ckpt --dst t2v-turbo-ref      # a UNet alone
  python -m converters.t2v_turbo --export --src t2v-turbo --dst merged.ckpt              # back (needs torch)

A checkpoint with the UNet, VAE and text encoder becomes a pipeline folder (`model_type` "t2v_turbo": `unet/`,
`vae/`, `text_encoder/`, `tokenizer/`), one with only a UNet (VideoDPO's reference files) a UNet folder. Besides
the three models a latent-diffusion checkpoint holds its noise schedule buffers: `alphas_cumprod` must be
VideoCrafter2's (scaled-linear 0.00085 → 0.012, the one our sampler and trainer use) and a stored `scale_factor`
sets the VAE's; every other tensor outside the models is an error naming it. Every parameter, LoRA tensor and these
two buffers must be stored in a floating dtype.

The destination folder must be new, empty, or one this converter wrote (which is then replaced whole), and neither
inside nor around a source; an exported `.ckpt` must not exist yet. Either is written beside itself under a hidden
name and renamed into place when complete, so a failed or interrupted run leaves nothing behind.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import math
import re
import shutil
import zlib
from pathlib import Path
from typing import Mapping

import numpy as np
import yaml
from tqdm import tqdm

from converters import common, sdxl, torch_checkpoint
from converters.common import ConversionError
from ureward_jax import errors, outputs, pretrained
from ureward_jax.models import clip_text, unet3d, vae
from ureward_jax.pipelines import schedulers

TOOL = "converters.t2v_turbo"   # what the destination's manifest records as its writer
UNET_PREFIX = "model.diffusion_model."
REFERENCE_UNET_PREFIX = "ref_model.diffusion_model."   # VideoDPO's frozen reference
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.model."
# latent-diffusion's `DDPM.register_schedule` buffers (and a learned `logvar`): not model weights.
SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                    "posterior_mean_coef1", "posterior_mean_coef2", "scale_arr", "scale_factor", "logvar")
# VideoCrafter2's `linear_start`, `linear_end` ("linear" in latent-diffusion is diffusers' scaled_linear).
PIPELINE_MODELS = ("unet", "vae", "text_encoder")
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
  wrong = [f"{('up', 'down')[i % 2]} tensor {i} (of {targets[i // 2]}) has dtype {np.asarray(t).dtype}"
           for i, t in enumerate(lora) if not common.is_floating(np.asarray(t).dtype)]
  if wrong:
    raise ConversionError(f"LoRA tensors must be floating ({common.FLOATING_NAMES}): {common.listing(wrong)}")
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


def vae_params(tensors: Mapping[str, common.StoredTensor | np.ndarray], config: vae.AutoencoderKLConfig = vae.LDM_VAE,
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
    raise ConversionError(f"{e} (names in diffusers' VAE layout, under {prefix!r})") from None


def ldm_vae_config(tensors: Mapping[str, common.StoredTensor], prefix: str = VAE_PREFIX,
                   **settings) -> vae.AutoencoderKLConfig:
  """The VAE's config read from its latent-diffusion tensors (levels, widths, blocks per level, latent and image
  channels) over Stable Diffusion's; `settings` (e.g. `scaling_factor`) replace what remains."""
  names = [n[len(prefix):] for n in tensors if n.startswith(prefix)]
  levels = common.count_layers(names, "encoder.down.{i}.block.0.conv1.weight")
  if not levels or prefix + "encoder.conv_out.weight" not in tensors:
    raise ConversionError(f"no latent-diffusion VAE encoder under {prefix!r}")
  found = dict(
      block_out_channels=tuple(tensors[f"{prefix}encoder.down.{i}.block.0.conv1.weight"].shape[0]
                               for i in range(levels)),
      layers_per_block=common.count_layers(names, "encoder.down.0.block.{i}.conv1.weight"),
      latent_channels=tensors[prefix + "encoder.conv_out.weight"].shape[0] // 2,   # mean and log-variance
      in_channels=tensors[prefix + "encoder.conv_in.weight"].shape[1])
  found["out_channels"] = found["in_channels"]
  return dataclasses.replace(vae.LDM_VAE, **found, **settings)


def export_vae(params, config: vae.AutoencoderKLConfig = vae.LDM_VAE, prefix: str = VAE_PREFIX) -> dict[str, np.ndarray]:
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


# --- whole checkpoints ⇄ folders ------------------------------------------------------------------------------


def unet_config(tensors: Mapping[str, common.StoredTensor], prefix: str, params: Mapping | None = None,
                with_lora: bool = False) -> unet3d.VideoCrafterUNetConfig:
  """The UNet's config: `params` (a config file's `unet_config.params`) over what the tensors show (widths, text
  width, fps and guidance conditioning, `init_attn`) over VideoCrafter2's values. A T2V-Turbo LoRA brings the
  guidance projection the base checkpoint lacks (`time_cond_proj`, 256 wide)."""
  def shape(name):
    if prefix + name not in tensors:
      raise ConversionError(f"missing tensor {prefix + name!r}: not a VideoCrafter2 UNet")
    return tuple(tensors[prefix + name].shape)
  model_channels, in_channels = shape("input_blocks.0.0.weight")[:2]
  cross = next((n for n in tensors if n.startswith(prefix) and n.endswith(".attn2.to_k.weight")), None)
  found = {"in_channels": in_channels, "model_channels": model_channels, "out_channels": shape("out.2.weight")[0],
           "fps_cond": prefix + "fps_embedding.0.weight" in tensors,
           "addition_attention": prefix + "init_attn.0.proj_in.weight" in tensors}
  if cross is not None:
    found["context_dim"] = tuple(tensors[cross].shape)[1]
  if prefix + "time_cond_proj.weight" in tensors:
    found["time_cond_proj_dim"] = shape("time_cond_proj.weight")[1]
  elif not with_lora:
    found["time_cond_proj_dim"] = None
  try:
    return unet3d.VideoCrafterUNetConfig.from_dict({**found, **(params or {})})
  except ValueError as e:
    raise ConversionError(str(e)) from None


def write_tokenizer(src: str | Path, dst: str | Path) -> Path:
  """OpenCLIP's vocabulary as a CLIP tokenizer folder at `dst` (vocab.json, merges.txt) from `src`: open_clip's
  `bpe_simple_vocab_16e6.txt.gz` (its first 48,894 merges, as `SimpleTokenizer` reads them; the vocabulary is the
  256 byte symbols, the same with `</w>`, the merges, then the two special tokens), or a CLIP tokenizer folder
  holding vocab.json and merges.txt (any CLIP or Stable Diffusion one: the vocabulary is the same)."""
  src, dst = Path(src), Path(dst)
  dst.mkdir(parents=True, exist_ok=True)
  if src.is_dir():
    missing = [name for name in ("vocab.json", "merges.txt") if not (src / name).exists()]
    if missing:
      raise ConversionError(f"{src} is not a CLIP tokenizer folder: {missing} missing")
    for name in ("vocab.json", "merges.txt"):
      shutil.copy(src / name, dst / name)
  elif src.is_file():
    opener = gzip.open if src.suffix == ".gz" else open
    try:
      with opener(src, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    except (gzip.BadGzipFile, EOFError, zlib.error, UnicodeDecodeError) as e:
      raise ConversionError(f"{src}: not a readable merges file ({e})") from None
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1] if line.strip()]
    if not merges or any(len(m) != 2 for m in merges):
      raise ConversionError(f"{src}: not an OpenCLIP BPE merges file (a header line, then one 'a b' pair per line)")
    symbols = list(_byte_symbols())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (dst / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}, ensure_ascii=False),
                                    encoding="utf-8")
    (dst / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                    encoding="utf-8")
  else:
    raise ConversionError(f"tokenizer source {src} does not exist")
  (dst / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))
  return dst


def _byte_symbols():
  """GPT-2's printable stand-ins for the 256 bytes, printable bytes first: the first 256 entries of CLIP's vocab."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
  others = [b for b in range(256) if b not in printable]
  return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def _checked_buffers(tensors: Mapping[str, common.StoredTensor], unet_prefixes: tuple[str, ...]) -> dict:
  """Checks every tensor outside the models; returns the VAE settings they imply ({"scaling_factor": …})."""
  models = (*unet_prefixes, VAE_PREFIX, "cond_stage_model.")
  others = sorted(n for n in tensors if not n.startswith(models) and n not in SCHEDULE_BUFFERS)
  if others:
    raise ConversionError(f"unexpected tensors outside the UNet, VAE and text encoder: {others[:10]}"
                          f"{f' and {len(others) - 10} more' if len(others) > 10 else ''}")
  wrong = [f"{name!r} has dtype {np.dtype(tensors[name].dtype)}" for name in ("alphas_cumprod", "scale_factor")
           if name in tensors and not common.is_floating(tensors[name].dtype)]
  if wrong:
    raise ConversionError(f"the noise schedule's buffers must be floating ({common.FLOATING_NAMES}): "
                          + ", ".join(wrong))
  if "alphas_cumprod" in tensors:
    schedule = schedulers.VIDEOCRAFTER_SCHEDULER
    ours = schedulers.alphas_cumprod(schedule["num_train_timesteps"], schedule["beta_start"], schedule["beta_end"],
                                     schedule["beta_schedule"])
    stored = np.asarray(tensors["alphas_cumprod"].load(), np.float64)
    if stored.shape != ours.shape or not np.allclose(stored, ours, rtol=1e-5, atol=0):
      raise ConversionError("the checkpoint's noise schedule 'alphas_cumprod' is not VideoCrafter2's (scaled-linear "
                            f"{schedule['beta_start']} → {schedule['beta_end']} over 1000 steps), which sampling "
                            "and training here assume")
  if "scale_factor" in tensors:
    if math.prod(tensors["scale_factor"].shape) != 1:
      raise ConversionError(f"the checkpoint's 'scale_factor' has shape {tuple(tensors['scale_factor'].shape)}; a "
                            "single number was expected")
    return {"scaling_factor": float(np.asarray(tensors["scale_factor"].load()).reshape(()))}
  return {}


def convert_checkpoint(src: str | Path, dst: str | Path, tokenizer: str | Path | None = None,
                       lora: str | Path | None = None, lora_scale: float = 1.0, config: str | Path | None = None,
                       reference: bool = False, dtype: str | None = None) -> dict:
  """Convert a VideoCrafter2 / T2V-Turbo checkpoint file into our folder at `dst`; returns its config.

  lora: T2V-Turbo's `unet_lora.pt`, merged into the UNet with `lora_scale`. config: a VideoCrafter2 / T2V-Turbo
  yaml whose `model.params.unet_config.params` fixes the UNet's layout. reference: take the UNet stored as
  `ref_model.diffusion_model.*` where a file holds both (with only one of them it is found either way). `dst` is
  written as the module docstring says.
  """
  src = Path(src)
  tensors = torch_checkpoint.state_dict(src)
  present = [p for p in (UNET_PREFIX, REFERENCE_UNET_PREFIX) if any(n.startswith(p) for n in tensors)]
  if not present:
    raise ConversionError(f"{src}: no UNet inside (no tensor named {UNET_PREFIX}* or {REFERENCE_UNET_PREFIX}*)")
  prefix = REFERENCE_UNET_PREFIX if reference or present == [REFERENCE_UNET_PREFIX] else UNET_PREFIX
  if reference and REFERENCE_UNET_PREFIX not in present:
    raise ConversionError(f"{src}: --reference asks for {REFERENCE_UNET_PREFIX}*, which this file does not hold")
  has_vae = any(n.startswith(VAE_PREFIX) for n in tensors)
  has_text = any(n.startswith(TEXT_PREFIX) for n in tensors)
  if has_vae != has_text:
    raise ConversionError(f"{src}: holds the {'VAE' if has_vae else 'text encoder'} without the "
                          f"{'text encoder' if has_vae else 'VAE'}; a pipeline needs both")
  if has_text and tokenizer is None:
    raise ConversionError("a pipeline needs its tokenizer: pass --tokenizer with open_clip's "
                          "bpe_simple_vocab_16e6.txt.gz or a CLIP tokenizer folder (vocab.json, merges.txt)")
  if has_text and not Path(tokenizer).exists():
    raise ConversionError(f"tokenizer source {tokenizer} does not exist")
  vae_settings = _checked_buffers(tensors, tuple(present))
  yaml_params = None
  if config is not None:
    try:
      document = yaml.safe_load(Path(config).read_text())
    except yaml.YAMLError as e:
      raise ConversionError(f"{config}: not valid YAML ({e})") from None
    try:
      yaml_params = document["model"]["params"]["unet_config"]["params"]
    except (KeyError, TypeError):
      raise ConversionError(f"{config}: no model.params.unet_config.params mapping") from None
  cfg = unet_config(tensors, prefix, yaml_params, with_lora=lora is not None)
  weights = None
  if lora is not None:
    weights = torch_checkpoint.load(lora)
    if not isinstance(weights, (list, tuple)) or not all(hasattr(w, "load") for w in weights):
      raise ConversionError(f"{lora}: not a T2V-Turbo LoRA file (a list of up, down tensors)")
  source = {"format": "latent-diffusion", "checkpoint": src.name, "unet_prefix": prefix,
            "lora": None if lora is None else Path(lora).name, "lora_scale": lora_scale}
  sources = [path for path in (src, tokenizer, lora, config) if path is not None]

  with outputs.staged_folder(dst, TOOL, sources) as staging, \
      tqdm(total=3 if has_vae else 1, desc="components", unit="model") as steps:
    if has_text:   # first: the one input read whole, so that a damaged one fails before the models convert
      write_tokenizer(tokenizer, staging / "tokenizer")
    unet_tensors = {n: t for n, t in tensors.items() if n.startswith(prefix)}
    if weights is not None:
      unet_tensors = merge_lora({n: t.load() for n, t in unet_tensors.items()}, [w.load() for w in weights], cfg,
                                prefix, lora_scale)
    ours = {"model_type": "videocrafter_unet", **cfg.to_dict(), "source": source}
    pretrained.save(staging / "unet" if has_vae else staging, ours, unet_params(unet_tensors, cfg, prefix, dtype))
    steps.update()
    if has_vae:
      vae_config = ldm_vae_config(tensors, **vae_settings)
      pretrained.save(staging / "vae", {"model_type": "autoencoder_kl", **vae_config.to_dict()},
                      vae_params(tensors, vae_config, dtype=dtype))
      steps.update()
      text_config, text_params = openclip_text_params(
          {n: t for n, t in tensors.items() if n.startswith(TEXT_PREFIX)}, TEXT_PREFIX, dtype)
      pretrained.save(staging / "text_encoder", {"model_type": "clip_text", **text_config.to_dict()}, text_params)
      steps.update()
      ours = {"model_type": "t2v_turbo", "components": list(PIPELINE_MODELS), "source": source}
      (staging / pretrained.CONFIG).write_text(json.dumps(ours, indent=2))
      (staging / pretrained.SCHEDULER).parent.mkdir()
      (staging / pretrained.SCHEDULER).write_text(json.dumps(schedulers.VIDEOCRAFTER_SCHEDULER, indent=2))
  return ours


def export_checkpoint(src: str | Path, dst: str | Path) -> None:
  """Write our folder `src` (a pipeline or a UNet) back as a latent-diffusion checkpoint file `dst`, under the
  names it came with (a merged LoRA stays merged). Needs torch. `dst` must not exist; it is written under a hidden
  name beside it and renamed into place when complete."""
  src = Path(src)
  ours = pretrained.read_config(src)
  kind = ours.get("model_type")
  if kind not in ("t2v_turbo", "videocrafter_unet"):
    raise ConversionError(f"{src}: not a T2V-Turbo pipeline or VideoCrafter UNet folder (model_type {kind!r})")
  unet_folder = src / "unet" if kind == "t2v_turbo" else src
  unet = pretrained.read_config(unet_folder)
  prefix = (unet.get("source") or {}).get("unet_prefix", UNET_PREFIX)
  cfg = unet3d.VideoCrafterUNetConfig.from_dict(unet)
  with outputs.staged_file(dst, [src]) as partial:
    tensors = export_unet(pretrained.load_params(unet_folder), cfg, prefix)
    if kind == "t2v_turbo":
      vae_config = vae.AutoencoderKLConfig.from_dict(pretrained.read_config(src / "vae"))
      tensors |= export_vae(pretrained.load_params(src / "vae"), vae_config)
      text_config = clip_text.CLIPTextConfig.from_dict(pretrained.read_config(src / "text_encoder"))
      tensors |= export_openclip_text(pretrained.load_params(src / "text_encoder"), text_config, TEXT_PREFIX)
    torch_checkpoint.save(tensors, partial)


def main(argv=None) -> int:
  """The command line; its work runs under `errors.guard` (a user's error: one line, status 1; usage: 2)."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--src", required=True, help="a VideoCrafter2 / T2V-Turbo .ckpt (Lightning, DeepSpeed or plain "
                      "state dict); with --export, our folder")
  parser.add_argument("--dst", required=True, help="destination folder: new, empty, or one this converter wrote "
                      "(then replaced), not inside or around a source; with --export, a .ckpt file that does not "
                      "exist yet")
  parser.add_argument("--tokenizer", default=None, help="open_clip's bpe_simple_vocab_16e6.txt.gz, or a CLIP "
                      "tokenizer folder with vocab.json and merges.txt (needed for a pipeline)")
  parser.add_argument("--lora", default=None, help="T2V-Turbo's unet_lora.pt, merged into the UNet")
  parser.add_argument("--lora-scale", type=float, default=1.0)
  parser.add_argument("--config", default=None, help="the model's yaml (model.params.unet_config.params); default: "
                      "VideoCrafter2's layout, widths and conditioning read from the tensors")
  parser.add_argument("--reference", action="store_true", help="convert the ref_model.diffusion_model.* UNet")
  parser.add_argument("--dtype", choices=["bfloat16", "float32"], default=None,
                      help="cast every tensor to this dtype (default: keep each tensor's stored dtype)")
  parser.add_argument("--export", action="store_true", help="write our folder at --src back as a .ckpt (needs torch)")
  args = parser.parse_args(argv)

  def run():
    if args.export:
      export_checkpoint(args.src, args.dst)
      print(f"exported {args.src} to {args.dst}")
    else:
      ours = convert_checkpoint(args.src, args.dst, args.tokenizer, args.lora, args.lora_scale, args.config,
                                args.reference, args.dtype)
      print(f"converted {args.src} → {args.dst} ({ours['model_type']})")
  return errors.guard(run)


if __name__ == "__main__":
  raise SystemExit(main())
