"""SFT training throughput: our jitted step vs a PyTorch training step of the same model on this CPU.

Both sides train one random mid-size LLaVA-OneVision built from one transformers config (default: SigLIP 384 wide ×
4 layers at 224 px, Qwen2 512 wide × 4 layers with 8 heads and 2 kv heads, vocabulary 32,000); ours gets the torch
model's weights through `converters.llava_onevision`. The batch: one 224×448 image per sequence (anyres: base view +
2 tiles, 784 visual tokens) in 1,024 tokens, the last 128 labelled. A step on either side is the masked next-token
cross-entropy (mean over labelled tokens), its gradient, global-norm clipping to 1.0 and AdamW (decay on matrices
only, as transformers' Trainer groups them), fp32:

- ours: the reward SFT task's loss through the runner's step (`accumulating_step`) and `make_optimizer`, jitted
  with params and optimiser state donated, compiled ahead of the timed loop;
- PyTorch: transformers' `LlavaOnevisionForConditionalGeneration` in train mode (`--attention`, sdpa by default),
  full logits, `F.cross_entropy`, `clip_grad_norm_(1.0)`, `torch.optim.AdamW`.

The warm-up steps' losses and gradient norms are printed side by side and must agree before anything is timed, so
the two sides cannot be timing different computations. The timed steps alternate between the sides; printed are the
median step time, tokens/s (sequence tokens, images included) and the ratio ours / PyTorch (> 1: ours is faster).

  python -m bench.train_step [--steps 5] [--length 1024] [--text-hidden 512] [--remat none] [--logits-chunk 1024]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

import ureward_jax  # noqa: E402
from converters.llava_onevision import convert_folder  # noqa: E402
from tests.tiny_llava import perturb  # noqa: E402  (weights of a sane scale, so the loss check is not vacuous)
from ureward_jax.processing import anyres  # noqa: E402
from ureward_jax.processing.feature_layout import VisualItem, build_layout  # noqa: E402
from ureward_jax.runners.llava import layout_config  # noqa: E402
from ureward_jax.train.accumulate import accumulating_step  # noqa: E402
from ureward_jax.train.losses import IGNORE  # noqa: E402
from ureward_jax.train.optim import make_optimizer, matrices, param_count  # noqa: E402
from ureward_jax.train.tasks.reward_sft import sft_loss_fn  # noqa: E402

LR, WEIGHT_DECAY, CLIP = 1e-5, 0.01, 1.0
PROMPT_TOKENS = 16  # text before the image
LOSS_AGREE = 1e-4   # relative difference allowed between the two sides' losses (the parity tests' full-model bound)
# ... and gradient norms: torch's fp32 `vector_norm` on CPU (inside `clip_grad_norm_`) drifts from the fp64 value by
# up to a few 1e-4 on tensors of millions of elements (3e-4 on a 6×2048×768 Gaussian with torch 2.13), while the
# per-parameter gradients of the two sides agree to about 1e-6.
NORM_AGREE = 1e-3


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  arg = parser.add_argument
  arg("--steps", type=int, default=5, help="timed steps per side (the median is reported)")
  arg("--warmup", type=int, default=2, help="untimed steps per side, whose losses are compared")
  arg("--batch", type=int, default=1)
  arg("--length", type=int, default=1024, help="tokens per sequence, visual tokens included")
  arg("--answer", type=int, default=128, help="labelled tokens at the end of each sequence")
  arg("--image", type=int, nargs=2, default=(224, 448), metavar=("H", "W"), help="image size before anyres tiling")
  arg("--tile", type=int, default=224, help="SigLIP input size (grid pinpoints are its multiples)")
  arg("--vision-hidden", type=int, default=384)
  arg("--vision-layers", type=int, default=4)
  arg("--text-hidden", type=int, default=512)
  arg("--text-intermediate", type=int, default=1536)
  arg("--text-layers", type=int, default=4)
  arg("--heads", type=int, default=8)
  arg("--kv-heads", type=int, default=2)
  arg("--vocab", type=int, default=32000)
  arg("--torch-threads", type=int, default=None, help="torch intra-op threads (default: torch's own choice)")
  arg("--torch-fused", action="store_true", help="torch.optim.AdamW(fused=True), its fastest CPU implementation "
      "(the default is a per-tensor loop)")
  arg("--attention", default="sdpa", choices=("sdpa", "eager"), help="transformers' attention implementation")
  arg("--remat", default="none", help="our remat policy (ureward_jax/nn/remat.py)")
  arg("--logits-chunk", type=int, default=1024, help="positions per chunk of our vocabulary head")
  args = parser.parse_args()
  if args.warmup < 1:
    parser.error("--warmup must be at least 1: the warm-up steps are where the two sides are compared")
  return args


def build_reference(args) -> transformers.LlavaOnevisionForConditionalGeneration:
  vision = transformers.SiglipVisionConfig(hidden_size=args.vision_hidden, intermediate_size=4 * args.vision_hidden,
                                           num_hidden_layers=args.vision_layers,
                                           num_attention_heads=args.vision_hidden // 64, image_size=args.tile,
                                           patch_size=14, vision_use_head=False)
  text = transformers.Qwen2Config(vocab_size=args.vocab, hidden_size=args.text_hidden,
                                  intermediate_size=args.text_intermediate, num_hidden_layers=args.text_layers,
                                  num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                                  max_position_embeddings=max(4096, args.length))
  image_token = args.vocab - 2
  config = transformers.LlavaOnevisionConfig(
      vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=image_token,
      video_token_index=image_token + 1, vision_feature_layer=-1, vision_feature_select_strategy="full",
      image_grid_pinpoints=[[args.tile * i, args.tile * j] for i in range(1, 7) for j in range(1, 7)])
  config._attn_implementation = args.attention
  torch.manual_seed(0)
  return perturb(transformers.LlavaOnevisionForConditionalGeneration(config)).train()


def make_batch(args, config) -> dict[str, np.ndarray]:
  """Both sides' inputs: transformers' arguments (NCHW pixels) and ours (NHWC pixels, visual layout arrays)."""
  size, tile = tuple(args.image), config.vision.image_size
  n_image = anyres.tiled_token_count(size, config.image_grid_pinpoints, tile, config.vision.tokens_per_side,
                                     config.vision_aspect_ratio)
  patches = anyres.num_patches(size, config.image_grid_pinpoints, tile)
  if PROMPT_TOKENS + n_image + args.answer > args.length:
    raise SystemExit(f"--length {args.length} is too short for {PROMPT_TOKENS} prompt, {n_image} image and "
                     f"{args.answer} answer tokens")
  rng = np.random.RandomState(0)
  ids = rng.randint(0, config.image_token_id, (args.batch, args.length))
  ids[:, PROMPT_TOKENS:PROMPT_TOKENS + n_image] = config.image_token_id
  labels = np.where(np.arange(args.length) >= args.length - args.answer, ids, IGNORE)
  pixel_values = rng.randn(args.batch, patches, 3, tile, tile).astype(np.float32)
  src, weight = build_layout([VisualItem("tiled", patches, size)] * args.batch, layout_config(config))
  dest = np.flatnonzero(ids.reshape(-1) == config.image_token_id).astype(np.int32)
  return dict(input_ids=ids, labels=labels, pixel_values=pixel_values,
              image_sizes=np.array([size] * args.batch), pixels=pixel_values.reshape(-1, 3, tile, tile)
              .transpose(0, 2, 3, 1), visual_src=src, visual_weight=weight, visual_dest=dest)


def torch_trainer(model, inputs, fused: bool):
  """A PyTorch training step on `inputs`: returns (loss, gradient norm before clipping)."""
  decay = [p for p in model.parameters() if p.ndim >= 2]
  no_decay = [p for p in model.parameters() if p.ndim < 2]
  optimizer = torch.optim.AdamW([dict(params=decay, weight_decay=WEIGHT_DECAY), dict(params=no_decay,
                                                                                      weight_decay=0.0)], lr=LR,
                                fused=fused or None)
  ids, labels = torch.tensor(inputs["input_ids"]), torch.tensor(inputs["labels"])
  pixel_values, image_sizes = torch.tensor(inputs["pixel_values"]), torch.tensor(inputs["image_sizes"])

  def step():
    optimizer.zero_grad(set_to_none=True)
    logits = model(input_ids=ids, pixel_values=pixel_values, image_sizes=image_sizes).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(),
                                             ignore_index=IGNORE)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
    optimizer.step()
    return loss.item(), norm.item()
  return step


def jax_trainer(model, inputs, args):
  """Our jitted step on `inputs`, compiled here: returns (step, compile seconds); step() → (loss, gradient norm)."""
  optim = ml_collections.ConfigDict(dict(name="adamw", lr=LR, schedule="constant", warmup_ratio=0.0,
                                         weight_decay=WEIGHT_DECAY, clip_norm=CLIP))
  optimizer, _ = make_optimizer(optim, args.warmup + args.steps, model.params, decay_mask=matrices)
  keys = ("input_ids", "labels", "pixels", "visual_src", "visual_weight", "visual_dest")
  batch = {k: jnp.asarray(inputs[k])[None] for k in keys}   # one micro-batch: no gradient accumulation
  batch["attention_mask"] = jnp.ones_like(batch["input_ids"])
  batch["positions"] = jnp.broadcast_to(jnp.arange(args.length), batch["input_ids"].shape)
  state = {"params": model.params, "opt": jax.jit(optimizer.init)(model.params)}
  start = time.perf_counter()
  sft_step = accumulating_step(sft_loss_fn(model.module, args.logits_chunk), optimizer, summed=("tokens",))
  rng = jax.random.key(0)
  compiled = jax.jit(sft_step, donate_argnums=(0, 1)).lower(state["params"], state["opt"], batch, None, rng).compile()
  seconds = time.perf_counter() - start

  def step():
    state["params"], state["opt"], metrics = jax.block_until_ready(compiled(state["params"], state["opt"], batch, None,
                                                                            rng))
    return float(metrics["loss"]), float(metrics["grad_norm"])
  return step, seconds


def alternate(steps: dict, runs: int) -> dict[str, list[float]]:
  """Seconds of each run of each step, the steps taken in turn so that background load on a shared machine falls on
  all of them alike."""
  times = {name: [] for name in steps}
  for _ in range(runs):
    for name, step in steps.items():
      start = time.perf_counter()
      step()
      times[name].append(time.perf_counter() - start)
  return times


def main():
  args = parse_args()
  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  reference = build_reference(args)
  with tempfile.TemporaryDirectory() as tmp:
    reference.save_pretrained(Path(tmp) / "hf")
    convert_folder(Path(tmp) / "hf", Path(tmp) / "ours", "float32")
    ours = ureward_jax.load(Path(tmp) / "ours", remat=args.remat)
  inputs = make_batch(args, ours.config)
  tokens = args.batch * args.length
  print(f"parameters: {param_count(ours.params) / 1e6:.1f} M   batch: {args.batch} × {args.length} tokens "
        f"({len(inputs['visual_dest'])} visual, {args.batch * args.answer} labelled), "
        f"{inputs['pixels'].shape[0]} patches of {args.tile} px")
  # The load average says how much of a shared machine both sides were competing for.
  print(f"torch threads: {torch.get_num_threads()}  cpu count: {os.cpu_count()}  jax devices: {jax.devices()}  "
        f"load average: {os.getloadavg()[0]:.1f}")

  jax_step, compile_seconds = jax_trainer(ours, inputs, args)
  print(f"ureward_jax step compiled in {compile_seconds:.1f} s (remat {args.remat}, logits chunk "
        f"{args.logits_chunk})")
  torch_step = torch_trainer(reference, inputs, args.torch_fused)
  first_ours = [jax_step() for _ in range(args.warmup)]
  first_ref = [torch_step() for _ in range(args.warmup)]
  for i, ((loss_o, norm_o), (loss_r, norm_r)) in enumerate(zip(first_ours, first_ref)):
    print(f"step {i}: loss ours {loss_o:.6f} torch {loss_r:.6f}   grad norm ours {norm_o:.6f} torch {norm_r:.6f}")
  relative = lambda i: [abs(o[i] - r[i]) / abs(r[i]) for o, r in zip(first_ours, first_ref)]
  loss_diff, norm_diff = max(relative(0)), max(relative(1))
  if loss_diff > LOSS_AGREE or norm_diff > NORM_AGREE:
    raise SystemExit(f"the two sides disagree (relative difference: loss {loss_diff:.1e}, grad norm {norm_diff:.1e}; "
                     f"allowed {LOSS_AGREE:.0e}, {NORM_AGREE:.0e}): they would not be timing the same computation")
  seconds = alternate({"ours": jax_step, "torch": torch_step}, args.steps)
  t_ours, t_ref = statistics.median(seconds["ours"]), statistics.median(seconds["torch"])

  names = {"torch": f"torch {torch.__version__} ({args.attention}, {'fused' if args.torch_fused else 'default'} "
                    "AdamW) step", "ours": "ureward_jax jitted step"}
  for side in ("torch", "ours"):
    t = seconds[side]
    print(f"{names[side]:<46} {statistics.median(t) * 1e3:7.0f} ms  {tokens / statistics.median(t):7.1f} tokens/s  "
          f"(runs {min(t) * 1e3:.0f}–{max(t) * 1e3:.0f} ms)")
  # On a shared machine the fastest steps are the nearest to an idle one; the two ratios bracket the comparison.
  print(f"ratio (ours / torch tokens per second): {t_ref / t_ours:.2f} of the medians, "
        f"{min(seconds['torch']) / min(seconds['ours']):.2f} of the fastest steps")
  print(f"max relative difference: loss {loss_diff:.1e}, grad norm {norm_diff:.1e}")


if __name__ == "__main__":
  main()
