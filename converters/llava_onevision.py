"""LLaVA-OneVision checkpoints (transformers or LLaVA-NeXT / UnifiedReward) ⇄ our checkpoint folders.

  python -m converters.llava_onevision --src HF_OR_LLAVA_NEXT_DIR --dst OUT_DIR [--dtype bfloat16|float32]
  python -m converters.llava_onevision --src OUR_DIR --dst OUT_DIR --export hf|llava_next

Three source namings are recognised from the tensor names: transformers on disk ("hf", what `save_pretrained`
writes: `language_model.model.*`), transformers at run time ("hf_runtime": `model.language_model.*`, as in its
`state_dict()`), and LLaVA-NeXT ("llava_next":
`model.vision_tower.vision_tower.*`, `model.mm_projector.{0,2}`; the format of UnifiedReward-7b). Layer counts,
vocabulary size and embedding tying come from the weights; every parameter must be stored in a floating dtype.

The destination must be a new or empty folder, or one this converter wrote (which is then replaced whole), and
neither inside nor around the source. It is written beside itself under a hidden name and renamed into place when
complete, so a failed or interrupted run leaves nothing behind and an existing destination as it was.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path

import numpy as np

from converters import common
from converters.common import ConversionError, Rule
from ureward_jax import errors, outputs, pretrained
from ureward_jax.errors import UserError
from ureward_jax.models.llava_onevision import DEFAULT_PINPOINTS, LlavaOnevisionConfig, param_shapes
from ureward_jax.models.qwen2 import Qwen2Config
from ureward_jax.models.siglip import SiglipVisionConfig

FORMATS = {
    "hf_runtime": dict(vision="model.vision_tower.", projector=("model.multi_modal_projector.linear_1",
                                                                      "model.multi_modal_projector.linear_2"),
               newline="model.image_newline", lm="model.language_model.", head="lm_head.weight"),
    "hf": dict(vision="vision_tower.", projector=("multi_modal_projector.linear_1",
                                                                       "multi_modal_projector.linear_2"),
                      newline="image_newline", lm="language_model.model.", head="language_model.lm_head.weight"),
    "llava_next": dict(vision="model.vision_tower.vision_tower.", projector=("model.mm_projector.0",
                                                                                          "model.mm_projector.2"),
                       newline="model.image_newline", lm="model.", head="lm_head.weight"),
}

SIGLIP_LAYER = [
    ("layer_norm1/scale", "layer_norm1.weight", "copy"), ("layer_norm1/bias", "layer_norm1.bias", "copy"),
    ("self_attn/q_proj/kernel", "self_attn.q_proj.weight", "dense"),
    ("self_attn/q_proj/bias", "self_attn.q_proj.bias", "heads"),
    ("self_attn/k_proj/kernel", "self_attn.k_proj.weight", "dense"),
    ("self_attn/k_proj/bias", "self_attn.k_proj.bias", "heads"),
    ("self_attn/v_proj/kernel", "self_attn.v_proj.weight", "dense"),
    ("self_attn/v_proj/bias", "self_attn.v_proj.bias", "heads"),
    ("self_attn/out_proj/kernel", "self_attn.out_proj.weight", "dense_out"),
    ("self_attn/out_proj/bias", "self_attn.out_proj.bias", "copy"),
    ("layer_norm2/scale", "layer_norm2.weight", "copy"), ("layer_norm2/bias", "layer_norm2.bias", "copy"),
    ("mlp/fc1/kernel", "mlp.fc1.weight", "dense"), ("mlp/fc1/bias", "mlp.fc1.bias", "copy"),
    ("mlp/fc2/kernel", "mlp.fc2.weight", "dense"), ("mlp/fc2/bias", "mlp.fc2.bias", "copy"),
]

QWEN2_LAYER = [
    ("input_layernorm/scale", "input_layernorm.weight", "copy"),
    ("self_attn/q_proj/kernel", "self_attn.q_proj.weight", "dense"),
    ("self_attn/q_proj/bias", "self_attn.q_proj.bias", "heads"),
    ("self_attn/k_proj/kernel", "self_attn.k_proj.weight", "dense"),
    ("self_attn/k_proj/bias", "self_attn.k_proj.bias", "heads"),
    ("self_attn/v_proj/kernel", "self_attn.v_proj.weight", "dense"),
    ("self_attn/v_proj/bias", "self_attn.v_proj.bias", "heads"),
    ("self_attn/o_proj/kernel", "self_attn.o_proj.weight", "dense_out"),
    ("post_attention_layernorm/scale", "post_attention_layernorm.weight", "copy"),
    ("mlp/gate_proj/kernel", "mlp.gate_proj.weight", "dense"),
    ("mlp/up_proj/kernel", "mlp.up_proj.weight", "dense"),
    ("mlp/down_proj/kernel", "mlp.down_proj.weight", "dense"),
]

TOOL = "converters.llava_onevision"   # what the destination's manifest records as its writer
VISION_STACK, TEXT_STACK = "vision_tower/encoder/layers", "language_model/layers"
# Buffers that some exports carry and that are not parameters.
IGNORED = (r"\.rotary_emb\.inv_freq$", r"position_ids$")


def rules(fmt: str, tied: bool, vision_model_prefix: bool = True) -> list[Rule]:
  """The name table of one source format.

  SigLIP tensors sit under `vision_model.` in LLaVA-NeXT and in transformers before v5; transformers v5 saves
  them without it. Both are read; `vision_model_prefix` says which one a table uses.
  """
  p = FORMATS[fmt]
  vision, lm = p["vision"] + ("vision_model." if vision_model_prefix else ""), p["lm"]
  table = [
      Rule("vision_tower/embeddings/patch_embedding/kernel", vision + "embeddings.patch_embedding.weight", "conv"),
      Rule("vision_tower/embeddings/patch_embedding/bias", vision + "embeddings.patch_embedding.bias"),
      Rule("vision_tower/embeddings/position_embedding/embedding", vision + "embeddings.position_embedding.weight"),
      Rule("vision_tower/post_layernorm/scale", vision + "post_layernorm.weight"),
      Rule("vision_tower/post_layernorm/bias", vision + "post_layernorm.bias"),
      Rule("multi_modal_projector/linear_1/kernel", p["projector"][0] + ".weight", "dense"),
      Rule("multi_modal_projector/linear_1/bias", p["projector"][0] + ".bias"),
      Rule("multi_modal_projector/linear_2/kernel", p["projector"][1] + ".weight", "dense"),
      Rule("multi_modal_projector/linear_2/bias", p["projector"][1] + ".bias"),
      Rule("image_newline", p["newline"]),
      Rule("language_model/embed_tokens/embedding", lm + "embed_tokens.weight"),
      Rule("language_model/norm/scale", lm + "norm.weight"),
  ]
  table += [Rule(f"{VISION_STACK}/{ours}", f"{vision}encoder.layers.{{i}}.{src}", kind)
            for ours, src, kind in SIGLIP_LAYER]
  table += [Rule(f"{TEXT_STACK}/{ours}", f"{lm}layers.{{i}}.{src}", kind) for ours, src, kind in QWEN2_LAYER]
  if not tied:
    table.append(Rule("language_model/lm_head/kernel", p["head"], "dense"))
  return table


def detect_format(names) -> str:
  names = list(names)
  for fmt, marker in (("llava_next", "model.vision_tower.vision_tower."), ("hf_runtime", "model.language_model."),
                      ("hf", "language_model.model.")):
    if any(n.startswith(marker) for n in names):
      return fmt
  raise ConversionError("cannot tell the checkpoint format: no tensor name starts with "
                        "'model.vision_tower.vision_tower.' (LLaVA-NeXT), 'model.language_model.' or "
                        "'language_model.model.' (transformers); is this a LLaVA-OneVision checkpoint?")


def _pinpoints(value, swap: bool) -> tuple[tuple[int, int], ...]:
  """Grid pinpoints as (H, W) pairs; LLaVA-NeXT stores (W, H), possibly as a "(1x1),...,(6x6)" range string."""
  if value is None:
    return DEFAULT_PINPOINTS
  if isinstance(value, str):
    found = re.findall(r"\((\d+)x(\d+)\)", value)
    if not found:
      raise ConversionError(f"cannot read image_grid_pinpoints {value!r}")
    (a0, b0), (a1, b1) = found[0], found[-1]
    value = [[384 * i, 384 * j] for i in range(int(a0), int(a1) + 1) for j in range(int(b0), int(b1) + 1)]
  return tuple((int(w), int(h)) if swap else (int(h), int(w)) for h, w in ((p[0], p[1]) for p in value))


def config_from_source(source: dict, fmt: str, n_vision: int, n_text: int, vocab: int, tied: bool):
  """Our config from the source `config.json`; counts that the weights decide override the file."""
  if fmt == "llava_next":
    vision = SiglipVisionConfig.from_dict(source.get("vision_config") or {})
    text = Qwen2Config.from_dict(source)
    newline, pool = source.get("mm_newline_position", "one_token"), source.get("mm_spatial_pool_mode", "bilinear")
    if source.get("mm_projector_type", "mlp2x_gelu") != "mlp2x_gelu":
      raise ConversionError(f"mm_projector_type {source['mm_projector_type']!r} is not supported (mlp2x_gelu only)")
    extra = dict(image_token_id=source.get("image_token_index", 151646),
                 video_token_id=source.get("video_token_index", 151647),
                 image_grid_pinpoints=_pinpoints(source.get("image_grid_pinpoints"), swap=True),
                 vision_aspect_ratio=source.get("image_aspect_ratio", "anyres_max_9"),
                 video_newline=newline, video_pool=pool, unpad_exact_round=False)
  else:
    if source.get("vision_feature_layer", -1) != -1 or source.get("vision_feature_select_strategy", "full") != "full":
      raise ConversionError("only vision_feature_layer=-1 with vision_feature_select_strategy='full' is supported "
                            f"(got {source.get('vision_feature_layer')}, {source.get('vision_feature_select_strategy')})")
    if not isinstance(source.get("text_config"), dict):
      raise ConversionError("the source config.json has no text_config object (a transformers LLaVA-OneVision "
                            "config holds the language model's settings there)")
    vision = SiglipVisionConfig.from_dict(source.get("vision_config") or {})
    text = Qwen2Config.from_dict(source["text_config"])
    extra = dict(image_token_id=source.get("image_token_id", source.get("image_token_index", 151646)),
                 video_token_id=source.get("video_token_id", source.get("video_token_index", 151647)),
                 image_grid_pinpoints=_pinpoints(source.get("image_grid_pinpoints"), swap=False),
                 vision_aspect_ratio=source.get("vision_aspect_ratio", "anyres_max_9"),
                 projector_hidden_act=source.get("projector_hidden_act", "gelu"))
  vision = dataclasses.replace(vision, num_hidden_layers=n_vision)
  text = dataclasses.replace(text, num_hidden_layers=n_text, vocab_size=vocab, tie_word_embeddings=tied)
  return LlavaOnevisionConfig(vision=vision, text=text, **extra)


def config_to_source(config: LlavaOnevisionConfig, fmt: str) -> dict:
  """A `config.json` for the target format that its own library loads."""
  vision = dataclasses.asdict(config.vision)
  text = {k: v for k, v in dataclasses.asdict(config.text).items() if k != "head_dim"}
  if fmt == "llava_next":
    # LLaVA-NeXT keeps the Qwen2 fields at the top level and the pinpoints as (W, H).
    return dict(text, architectures=["LlavaQwenForCausalLM"], model_type="llava", vision_config=vision,
                mm_vision_tower="google/siglip-so400m-patch14-384", mm_projector_type="mlp2x_gelu",
                mm_patch_merge_type="spatial_unpad", image_aspect_ratio=config.vision_aspect_ratio,
                image_grid_pinpoints=[[w, h] for h, w in config.image_grid_pinpoints],
                mm_newline_position=config.video_newline, mm_spatial_pool_mode=config.video_pool,
                image_token_index=config.image_token_id, video_token_index=config.video_token_id)
  text_config = {k: v for k, v in text.items() if k != "rope_theta"}
  text_config.update(model_type="qwen2", rope_parameters={"rope_type": "default", "rope_theta": text["rope_theta"]})
  return dict(architectures=["LlavaOnevisionForConditionalGeneration"], model_type="llava_onevision",
              vision_config=dict(vision, model_type="siglip_vision_model", vision_use_head=False),
              text_config=text_config, image_token_index=config.image_token_id,
              video_token_index=config.video_token_id,
              image_grid_pinpoints=[list(p) for p in config.image_grid_pinpoints],
              vision_aspect_ratio=config.vision_aspect_ratio, vision_feature_layer=-1,
              vision_feature_select_strategy="full", projector_hidden_act=config.projector_hidden_act,
              tie_word_embeddings=config.text.tie_word_embeddings)


def convert_folder(src: str | Path, dst: str | Path, dtype: str | None = None) -> LlavaOnevisionConfig:
  """Convert a transformers or LLaVA-NeXT folder into our checkpoint folder at `dst` (written as the module
  docstring says: never over files this converter did not write, nothing left by a failure)."""
  src = common.source_folder(src)
  tensors = common.open_safetensors(src)
  fmt = detect_format(tensors)
  p = FORMATS[fmt]
  source_config = common.read_json(src / "config.json")
  prefixed = p["vision"] + "vision_model.embeddings.patch_embedding.weight" in tensors
  vision = p["vision"] + ("vision_model." if prefixed else "")
  n_vision = common.count_layers(tensors, vision + "encoder.layers.{i}.layer_norm1.weight")
  n_text = common.count_layers(tensors, p["lm"] + "layers.{i}.input_layernorm.weight")
  embed = p["lm"] + "embed_tokens.weight"
  if embed not in tensors:
    raise ConversionError(f"missing tensor {embed!r}")
  tied = p["head"] not in tensors
  try:
    config = config_from_source(source_config, fmt, n_vision, n_text, tensors[embed].shape[0], tied)
  except KeyError as e:   # a setting the model needs and the file lacks
    raise ConversionError(f"{src / 'config.json'}: no {e} entry") from None
  expected = common.flat_shapes(param_shapes(config))
  source = {"format": fmt, "vision_model_prefix": prefixed}
  with outputs.staged_folder(dst, TOOL, [src]) as staging:
    flat = common.convert(tensors, rules(fmt, tied, prefixed), expected, {VISION_STACK: n_vision, TEXT_STACK: n_text},
                          dtype=dtype, ignore=IGNORED)
    pretrained.save(staging, {**config.to_dict(), "source": source}, common.unflatten(flat), copy_from=src)
  return config


def resize_vocab(flat: dict, config: LlavaOnevisionConfig, vocab_size: int):
  """Pad or trim the vocabulary rows of the embedding (and untied head) to `vocab_size`.

  transformers' conversion pads UnifiedReward's 152064 rows to 152128 (a multiple of 64 after adding two tokens);
  the extra rows are never indexed by real tokens. Padding rows are the mean embedding (the centre of the
  distribution transformers samples them from); trimming refuses to drop the image or video token.
  """
  old = config.text.vocab_size
  needed = max(config.image_token_id, config.video_token_id) + 1
  if vocab_size < needed:
    raise UserError(f"cannot trim the vocabulary to {vocab_size}: the image/video token ids need {needed} rows")
  flat = dict(flat)
  for path, axis in (("language_model/embed_tokens/embedding", 0), ("language_model/lm_head/kernel", 1)):
    if path not in flat:
      continue
    array = np.asarray(flat[path])
    if vocab_size <= old:
      flat[path] = np.take(array, np.arange(vocab_size), axis=axis)
    else:
      pad = np.repeat(array.mean(axis=axis, keepdims=True, dtype=np.float32).astype(array.dtype),
                      vocab_size - old, axis=axis)
      flat[path] = np.concatenate([array, pad], axis=axis)
  text = dataclasses.replace(config.text, vocab_size=vocab_size)
  return flat, dataclasses.replace(config, text=text)


def export_folder(src: str | Path, dst: str | Path, fmt: str, vocab_size: int | None = None) -> None:
  """Write our checkpoint folder `src` back as a `fmt` folder at `dst`, optionally with `vocab_size` rows (`dst`
  written as the module docstring says)."""
  if fmt not in FORMATS:
    raise UserError(f"unknown export format {fmt!r}; expected one of {list(FORMATS)}")
  raw = pretrained.read_config(src)
  source = raw.get("source", {})
  config = LlavaOnevisionConfig.from_dict({k: v for k, v in raw.items() if k != "source"})
  # Keep the source's SigLIP naming when writing its own format back; otherwise the naming every version reads.
  prefixed = source.get("vision_model_prefix", True) if source.get("format") == fmt else True
  with outputs.staged_folder(dst, TOOL, [src]) as staging:
    flat = common.flatten(pretrained.load_params(src))
    if vocab_size is not None and vocab_size != config.text.vocab_size:
      flat, config = resize_vocab(flat, config, vocab_size)
    tensors = common.export(flat, rules(fmt, config.text.tie_word_embeddings, prefixed))
    common.save_safetensors(tensors, staging)
    (staging / "config.json").write_text(json.dumps(config_to_source(config, fmt), indent=2))
    for name in pretrained.TOKENIZER_FILES:
      if (Path(src) / name).exists():
        (staging / name).write_bytes((Path(src) / name).read_bytes())


def main(argv=None) -> int:
  """The command line; its work runs under `errors.guard` (a user's error: one line, status 1; usage: 2)."""
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--src", required=True, help="source checkpoint folder")
  parser.add_argument("--dst", required=True, help="destination folder: new, empty, or one this converter wrote "
                      "(then replaced); not inside or around --src")
  parser.add_argument("--dtype", choices=["bfloat16", "float32"], default=None,
                      help="cast every tensor to this dtype (default: keep each tensor's stored dtype)")
  parser.add_argument("--export", choices=list(FORMATS), default=None,
                      help="write our checkpoint at --src back in this format instead of converting")
  parser.add_argument("--vocab-size", type=int, default=None,
                      help="with --export: pad or trim the vocabulary rows (e.g. 152128 for transformers' layout)")
  args = parser.parse_args(argv)

  def run():
    if args.export:
      export_folder(args.src, args.dst, args.export, args.vocab_size)
      print(f"exported {args.src} as {args.export} to {args.dst}")
    else:
      config = convert_folder(args.src, args.dst, args.dtype)
      print(f"converted {args.src} → {args.dst}: vision {config.vision.num_hidden_layers} layers, "
            f"text {config.text.num_hidden_layers} layers, vocab {config.text.vocab_size}")
  return errors.guard(run)


if __name__ == "__main__":
  raise SystemExit(main())
