"""SDXL UNet forward and training step: our jitted Flax port vs diffusers' `UNet2DConditionModel` on this CPU.

Both sides run one random mid-size UNet with SDXL's layout, built from one diffusers config (default: widths 64, 128,
256; DownBlock2D, CrossAttnDownBlock2D ×2 / CrossAttnUpBlock2D ×2, UpBlock2D; 1, 2, 4 heads of width 64; transformer
depths 1, 2, 2; GroupNorm 32; SDXL's conditioning sizes: cross-attention dim 2,048 over 77 text tokens, text_time with
a 1,280-wide pooled embedding and 6 micro-conditions embedded 256 wide). Ours gets the torch model's weights through
`converters.sdxl.params_from_tensors` (every parameter perturbed first, so the zero-initialised layers take part).
The batch: 2 latents of 4 × 32 × 32 (`--latent`), fp32. Two measurements:

- forward: `jax.jit(module.apply)` (params an argument, latents already channels-last) vs the torch model in eval
  mode under `torch.no_grad()`. The outputs must agree before anything is timed;
- training step: the mean squared error of the prediction against a fixed target, its gradient for every parameter
  and an AdamW update (lr 1e-4, weight decay 0.01 on every parameter, as `torch.optim.AdamW` has it): ours `optax.adamw`
  in one jitted function with params and optimiser state donated (once per `--remat` policy), torch forward +
  backward + `torch.optim.AdamW.step` in train mode (the default per-tensor loop, or `--torch-fused`). The warm-up
  steps' losses must agree.

Our compile times are printed separately and never timed with the calls. The timed calls alternate between the sides
so that background load falls on all of them alike; printed are the median seconds per call (and the fastest), and
the ratio torch / ours (> 1: ours is faster). torch runs with as many intra-op threads as JAX's CPU client (one per
core this process may use: `taskset -c 0 python -m ...` gives both one) unless `--torch-threads` says otherwise, and
with OpenMP's passive waiting unless OMP_WAIT_POLICY is set (see below).

  python -m bench.unet_step [--repeats 5] [--latent 32] [--remat none full] [--torch-fused]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# torch's OpenMP threads busy-wait between ops by default; on a machine shared with other jobs a spinning thread holds
# the core its descheduled sibling needs, and a 2-thread forward here took 1.4–8.4 s instead of 0.5 s. Passive waiting
# (set before torch loads its OpenMP runtime; ACTIVE in the environment restores the spinning) keeps torch's times
# those of its own work. XLA's thread pool spins only briefly before it sleeps.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import diffusers  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402

from bench.train_step import alternate  # noqa: E402
from converters import sdxl  # noqa: E402
from ureward_jax.models import unet2d  # noqa: E402
from ureward_jax.runners.unet import UNet  # noqa: E402
from ureward_jax.train.optim import param_count  # noqa: E402

LR, WEIGHT_DECAY = 1e-4, 0.01
TEXT_TOKENS = 77
POOLED = 1280       # SDXL's pooled text embedding (CLIP-G's projection)
FORWARD_AGREE = 1e-4  # allowed max |ours − torch| / max |torch| of the forward outputs (default matmul precision)
LOSS_AGREE = 1e-4     # relative difference allowed between the two sides' warm-up losses


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  arg = parser.add_argument
  arg("--repeats", type=int, default=5, help="timed calls per side and measurement (the median is reported)")
  arg("--warmup", type=int, default=2, help="untimed training steps per side, whose losses are compared")
  arg("--batch", type=int, default=2)
  arg("--latent", type=int, default=32, help="latent side (32: a 256-px image through SDXL's VAE)")
  arg("--widths", type=int, nargs="+", default=(64, 128, 256), help="block_out_channels")
  arg("--heads", type=int, nargs="+", default=(1, 2, 4), help="heads per block (diffusers' attention_head_dim)")
  arg("--depths", type=int, nargs="+", default=(1, 2, 2), help="transformer_layers_per_block")
  arg("--cross-dim", type=int, default=2048, help="cross_attention_dim (the text encoders' width)")
  arg("--time-dim", type=int, default=256, help="addition_time_embed_dim")
  arg("--torch-threads", type=int, default=None, help="torch intra-op threads (default: as many as JAX's)")
  arg("--torch-fused", action="store_true", help="torch.optim.AdamW(fused=True), its fastest CPU implementation "
      "(the default is a per-tensor loop)")
  arg("--remat", nargs="+", default=("none",), help="our remat policies to time the step with, one after the other "
      "(ureward_jax/nn/remat.py)")
  arg("--skip-train", action="store_true", help="time the forward only")
  args = parser.parse_args()
  if args.warmup < 1:
    parser.error("--warmup must be at least 1: the warm-up steps are where the two sides are compared")
  if not len(args.widths) == len(args.heads) == len(args.depths) >= 2:
    parser.error("--widths, --heads and --depths need one entry per block, and at least two blocks")
  return args


def diffusers_config(args) -> dict:
  """SDXL's block layout at the given widths: a plain first block, cross-attention in the others."""
  blocks = len(args.widths)
  return dict(sample_size=args.latent, block_out_channels=tuple(args.widths), layers_per_block=2,
              down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (blocks - 1),
              up_block_types=("CrossAttnUpBlock2D",) * (blocks - 1) + ("UpBlock2D",),
              attention_head_dim=tuple(args.heads), transformer_layers_per_block=tuple(args.depths),
              use_linear_projection=True, cross_attention_dim=args.cross_dim, addition_embed_type="text_time",
              addition_time_embed_dim=args.time_dim, projection_class_embeddings_input_dim=POOLED + 6 * args.time_dim,
              norm_num_groups=32)


def build_reference(args) -> diffusers.UNet2DConditionModel:
  torch.manual_seed(0)
  model = diffusers.UNet2DConditionModel(**diffusers_config(args))
  with torch.no_grad():  # zero-initialised layers (conv_out) must take part too
    for p in model.parameters():
      p.add_(0.02 * torch.randn_like(p))
  return model.eval()


def make_batch(args) -> dict[str, np.ndarray]:
  """Both sides' inputs, channels-first as diffusers takes them; the fixed training target is unit Gaussian noise."""
  rng = np.random.RandomState(0)
  b, side = args.batch, args.latent
  time_ids = np.array([[1024, 1024, 0, 0, 1024, 1024], [768, 1344, 16, 8, 1024, 1024]] * b, np.float32)[:b]
  return dict(sample=rng.randn(b, 4, side, side).astype(np.float32),
              timestep=np.array([999, 250, 500, 0][:b] * b, np.float32)[:b],
              encoder_hidden_states=rng.randn(b, TEXT_TOKENS, args.cross_dim).astype(np.float32),
              text_embeds=rng.randn(b, POOLED).astype(np.float32), time_ids=time_ids,
              target=rng.randn(b, 4, side, side).astype(np.float32))


def torch_runners(model, inputs, fused: bool):
  """(forward, step): forward() → the prediction under no_grad; step() → the loss of one AdamW training step."""
  t = {k: torch.tensor(v) for k, v in inputs.items()}
  added = {"text_embeds": t["text_embeds"], "time_ids": t["time_ids"]}
  optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, fused=fused or None)

  def forward():
    model.eval()
    with torch.no_grad():
      return model(t["sample"], t["timestep"], t["encoder_hidden_states"], added_cond_kwargs=added,
                   return_dict=False)[0]

  def step():
    model.train()
    optimizer.zero_grad(set_to_none=True)
    prediction = model(t["sample"], t["timestep"], t["encoder_hidden_states"], added_cond_kwargs=added,
                       return_dict=False)[0]
    loss = torch.nn.functional.mse_loss(prediction, t["target"])
    loss.backward()
    optimizer.step()
    return loss.item()
  return forward, step


def jax_inputs(inputs) -> dict[str, jax.Array]:
  """Our arguments: the latents and the target channels-last (converted once, outside the timed calls)."""
  out = {k: jnp.asarray(v) for k, v in inputs.items()}
  for k in ("sample", "target"):
    out[k] = jnp.asarray(inputs[k].transpose(0, 2, 3, 1))
  return out


def jax_forward(model: UNet, batch):
  """Our jitted forward, compiled here: returns (forward, compile seconds); forward() → the prediction (NHWC)."""
  args = (batch["sample"], batch["timestep"], batch["encoder_hidden_states"], batch["text_embeds"], batch["time_ids"])
  start = time.perf_counter()
  compiled = jax.jit(model.module.apply).lower({"params": model.params}, *args).compile()
  seconds = time.perf_counter() - start
  return lambda: jax.block_until_ready(compiled({"params": model.params}, *args)), seconds


def jax_trainer(config, params, batch, remat: str):
  """Our jitted training step, compiled here: returns (step, compile seconds); step() → the loss. The step owns a
  copy of `params`, which it donates and replaces on every call."""
  module = unet2d.UNet2DConditionModel(config, remat=remat)
  optimizer = optax.adamw(LR, weight_decay=WEIGHT_DECAY)

  def train_step(params, opt_state, batch):
    def loss_fn(p):
      prediction = module.apply({"params": p}, batch["sample"], batch["timestep"], batch["encoder_hidden_states"],
                                batch["text_embeds"], batch["time_ids"])
      return jnp.mean(jnp.square(prediction - batch["target"]))
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  state = {"params": jax.tree.map(jnp.array, params)}  # a copy: donation must not free the forward's params
  state["opt"] = jax.jit(optimizer.init)(state["params"])
  start = time.perf_counter()
  compiled = jax.jit(train_step, donate_argnums=(0, 1)).lower(state["params"], state["opt"], batch).compile()
  seconds = time.perf_counter() - start

  def step():
    state["params"], state["opt"], loss = jax.block_until_ready(compiled(state["params"], state["opt"], batch))
    return float(loss)
  return step, seconds


def main():
  args = parse_args()
  # XLA's CPU client runs its intra-op work on one thread per core this process may use.
  jax_threads = len(os.sched_getaffinity(0))
  torch.set_num_threads(args.torch_threads or jax_threads)
  reference = build_reference(args)
  config = unet2d.UNet2DConditionConfig.from_dict(dict(reference.config))
  params = sdxl.params_from_tensors({k: v.numpy() for k, v in reference.state_dict().items()},
                                    unet2d.param_shapes(config))
  ours = UNet.from_params(config, params)
  inputs = make_batch(args)
  batch = jax_inputs(inputs)
  print(f"parameters: {param_count(params) / 1e6:.1f} M   widths {tuple(args.widths)}, heads {tuple(args.heads)}, "
        f"depths {tuple(args.depths)}, cross-attention {args.cross_dim}   batch: {args.batch} × 4 × {args.latent} × "
        f"{args.latent} latents, {TEXT_TOKENS} text tokens")
  # The load average says how much of a shared machine both sides were competing for.
  print(f"torch threads: {torch.get_num_threads()}  jax threads: {jax_threads}  cpu count: {os.cpu_count()}  "
        f"OMP_WAIT_POLICY: {os.environ['OMP_WAIT_POLICY']}  "
        f"jax devices: {jax.devices()}  load average: {os.getloadavg()[0]:.1f}")

  torch_forward, _ = torch_runners(reference, inputs, args.torch_fused)
  our_forward, compile_forward = jax_forward(ours, batch)
  print(f"ureward_jax forward compiled in {compile_forward:.1f} s")
  want = torch_forward().numpy()
  got = np.asarray(our_forward()).transpose(0, 3, 1, 2)
  forward_diff = float(np.abs(got - want).max() / np.abs(want).max())
  print(f"forward: max relative difference {forward_diff:.1e} (output scale {np.abs(want).max():.2f})")
  if forward_diff > FORWARD_AGREE:
    raise SystemExit(f"the two forwards disagree ({forward_diff:.1e} > {FORWARD_AGREE:.0e}): they would not be "
                     "timing the same computation")
  timings = {"forward": alternate({"ours": our_forward, "torch": torch_forward}, args.repeats)}
  compiles = {"forward": compile_forward}

  loss_diff = 0.0
  for remat in () if args.skip_train else args.remat:
    jax_step, compile_step = jax_trainer(config, params, batch, remat)
    name = f"train step, remat {remat}"
    compiles[name] = compile_step
    print(f"ureward_jax step compiled in {compile_step:.1f} s (remat {remat})")
    # torch's model and optimiser state carry over from one policy to the next: only its first warm-up is compared
    # against ours from the same weights, so each policy gets a fresh reference (cheap next to the timed steps).
    reference = build_reference(args)
    _, torch_step = torch_runners(reference, inputs, args.torch_fused)
    first_ours = [jax_step() for _ in range(args.warmup)]
    first_ref = [torch_step() for _ in range(args.warmup)]
    for i, (o, r) in enumerate(zip(first_ours, first_ref)):
      print(f"step {i}: loss ours {o:.6f} torch {r:.6f}")
    diff = max(abs(o - r) / abs(r) for o, r in zip(first_ours, first_ref))
    if diff > LOSS_AGREE:
      raise SystemExit(f"the two sides' losses disagree (relative {diff:.1e} > {LOSS_AGREE:.0e}): they would not be "
                       "timing the same computation")
    loss_diff = max(loss_diff, diff)
    timings[name] = alternate({"ours": jax_step, "torch": torch_step}, args.repeats)

  adamw = "fused" if args.torch_fused else "default per-tensor"
  print(f"\nseconds per call, median of {args.repeats} (fastest); torch {torch.__version__} / diffusers "
        f"{diffusers.__version__} ({adamw} AdamW) vs ureward_jax jitted (jax {jax.__version__}); ratio torch / ours")
  print(f"{'':<24} {'torch':>17} {'ureward_jax':>17} {'ratio':>13} {'our compile':>12}")
  for name, seconds in timings.items():
    t_ref, t_ours = seconds["torch"], seconds["ours"]
    # On a shared machine the fastest calls are the nearest to an idle one; the two ratios bracket the comparison.
    print(f"{name:<24} {statistics.median(t_ref):>7.3f} s ({min(t_ref):.3f}) {statistics.median(t_ours):>7.3f} s "
          f"({min(t_ours):.3f}) {statistics.median(t_ref) / statistics.median(t_ours):>6.2f} "
          f"({min(t_ref) / min(t_ours):.2f}) {compiles[name]:>10.1f} s")
  print(f"ratio > 1: ours is faster.  max relative difference: forward {forward_diff:.1e}, warm-up loss "
        f"{loss_diff:.1e}.  load average now: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  main()
