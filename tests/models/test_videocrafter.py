"""VideoCrafter2's UNet (`VideoCrafterUNet`) against the PyTorch re-statement of `openaimodel3d.UNetModel` in
tests/video_reference.py: fp32, every parameter perturbed, converted from the original key names; T2V-Turbo's
guidance embedding applied or, as UnifiedReward's copy does, ignored."""

import dataclasses

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from converters import t2v_turbo
from converters.common import ConversionError
from tests.parity import max_rel
from tests.video_reference import UNetModel
from ureward_jax.models import unet3d

# VideoCrafter2's layout at toy width: GroupNorm-32, two levels with attention at both, heads of 16.
TINY = dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(1, 2),
            num_head_channels=16, context_dim=24, time_cond_proj_dim=12)


@pytest.fixture(scope="module")
def pair():
  torch.manual_seed(0)
  ref = UNetModel(**TINY).eval()
  with torch.no_grad():
    for p in ref.parameters():   # zero-initialised layers (conv4, proj_out, out.2) must count too
      p.add_(0.05 * torch.randn_like(p))
  config = unet3d.VideoCrafterUNetConfig.from_dict(TINY)
  tensors = {t2v_turbo.UNET_PREFIX + k: v.numpy() for k, v in ref.state_dict().items()}
  return ref, config, tensors, t2v_turbo.unet_params(tensors, config)


def inputs(frames, side, seed=1):
  g = torch.Generator().manual_seed(seed)
  return dict(x=torch.randn(2, 4, frames, side, side, generator=g), timesteps=torch.tensor([999, 279]),
              context=torch.randn(2, 77, 24, generator=g), fps=torch.tensor([16, 8]),
              timestep_cond=torch.randn(2, 12, generator=g))


def ours(config, params, args):
  apply = jax.jit(unet3d.VideoCrafterUNet(config).apply)
  with jax.default_matmul_precision("highest"):
    out = apply({"params": params}, args["x"].numpy().transpose(0, 2, 3, 4, 1), args["timesteps"].numpy(),
                args["context"].numpy(), args["fps"].numpy(), args["timestep_cond"].numpy())
  return np.asarray(out).transpose(0, 4, 1, 2, 3)


# 16 frames: the temporal attentions' full clip; 32 × 32: 1,024 tokens in the first spatial transformer.
@pytest.mark.parametrize("frames,side", [(16, 8), (2, 32)])
def test_videocrafter_unet_matches_the_restatement(pair, frames, side):
  ref, config, _, params = pair
  args = inputs(frames, side)
  with torch.no_grad():
    want = ref(**args).numpy()
  got = ours(config, params, args)
  assert got.shape == want.shape and max_rel(got, want) <= 1e-4


def test_without_the_w_embedding_timestep_cond_is_ignored(pair):
  ref, config, _, params = pair
  args = inputs(2, 8, seed=2)
  with torch.no_grad():
    want = ref(**{**args, "timestep_cond": None}).numpy()
  ignoring = dataclasses.replace(config, use_w_embedding=False)
  assert max_rel(ours(ignoring, params, args), want) <= 1e-4
  assert max_rel(ours(config, params, args), want) > 1e-3   # applied, it matters


def test_unet_tensors_round_trip_bit_exact_and_mismatches_are_named(pair):
  _, config, tensors, params = pair
  back = t2v_turbo.export_unet(params, config)
  assert set(back) == set(tensors) and all(np.array_equal(back[k], tensors[k]) for k in tensors)
  dropped = {k: v for k, v in tensors.items() if not k.endswith("input_blocks.1.0.temopral_conv.conv4.3.weight")}
  with pytest.raises(ConversionError, match=r"'model.diffusion_model.input_blocks.1.0.temopral_conv.conv4.3.weight'"):
    t2v_turbo.unet_params(dropped, config)
  renamed = {k.replace("model.diffusion_model.", "ref_model.diffusion_model."): v for k, v in tensors.items()}
  reference = t2v_turbo.unet_params(renamed, config, prefix="ref_model.diffusion_model.")
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(params)))
  with pytest.raises(ConversionError, match="not a VideoCrafter2 UNet checkpoint"):
    t2v_turbo.unet_params(renamed, config)


def test_config_refuses_what_it_does_not_implement():
  for key, value in [("use_scale_shift_norm", True), ("use_relative_position", True), ("use_linear", False),
                     ("num_heads", 8)]:
    with pytest.raises(ValueError, match=key):
      unet3d.VideoCrafterUNetConfig.from_dict({**TINY, key: value})
  with pytest.raises(ValueError, match="multiple of num_head_channels"):
    unet3d.VideoCrafterUNetConfig.from_dict({**TINY, "num_head_channels": 24})
  config = unet3d.VideoCrafterUNetConfig.from_dict(TINY)
  assert unet3d.VideoCrafterUNetConfig.from_dict(config.to_dict()) == config


def test_lora_targets_are_named_modules_order_and_merging_equals_the_injected_layers(pair):
  ref, config, tensors, _ = pair
  wrapped = [name for name, m in ref.named_modules() if type(m) in (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d)]
  targets = t2v_turbo.lora_targets(config)
  assert targets == wrapped and "init_attn.0.proj_in" not in targets   # Conv1d is not wrapped

  g = torch.Generator().manual_seed(3)
  rank, lora = 4, []
  for name in targets:
    weight = tensors[t2v_turbo.UNET_PREFIX + name + ".weight"]
    kernel = weight.shape[2:]
    lora += [torch.randn(weight.shape[0], rank, *(1,) * len(kernel), generator=g).numpy() * 0.1,   # up: 1×1
             torch.randn(rank, weight.shape[1], *kernel, generator=g).numpy() * 0.1]              # down
  without_time_cond = {k: v for k, v in tensors.items() if "time_cond_proj" not in k}
  merged = t2v_turbo.merge_lora(without_time_cond, lora, config)
  index = targets.index("time_cond_proj")
  np.testing.assert_allclose(merged[t2v_turbo.UNET_PREFIX + "time_cond_proj.weight"],
                             lora[2 * index] @ lora[2 * index + 1], rtol=1e-6)
  # A temporal Conv3d: the merged kernel computes what the LoRA-injected layer does, conv(x) + up(down(x)).
  name = next(n for n in targets if n.endswith("temopral_conv.conv2.3"))
  index, key = targets.index(name), t2v_turbo.UNET_PREFIX + name
  x = torch.randn(1, tensors[key + ".weight"].shape[1], 5, 3, 3, generator=g)
  bias = torch.from_numpy(tensors[key + ".bias"])
  up, down = (torch.from_numpy(t) for t in lora[2 * index:2 * index + 2])
  injected = F.conv3d(x, torch.from_numpy(tensors[key + ".weight"]), bias, padding=(1, 0, 0)) + \
      F.conv3d(F.conv3d(x, down, padding=(1, 0, 0)), up)
  merged_out = F.conv3d(x, torch.from_numpy(merged[key + ".weight"]), bias, padding=(1, 0, 0))
  torch.testing.assert_close(merged_out, injected, rtol=1e-5, atol=1e-5)
  with pytest.raises(ConversionError, match="LoRA list holds"):
    t2v_turbo.merge_lora(tensors, lora[:-2], config)


def test_training_mode_drops_temporal_conv_activations_and_remat_keeps_gradients():
  """Dropout acts only with `deterministic=False`, reproducibly per rng; rematerialising every block (its frame
  count and train flag static) leaves the training-mode gradients as they are. One level keeps compiling short."""
  config = unet3d.VideoCrafterUNetConfig.from_dict(dict(TINY, channel_mult=(1,), attention_resolutions=(1,)))
  params = unet3d.init_params(config, jax.random.key(0))
  args = inputs(2, 8)
  x, t, context, fps = (args[k].numpy() for k in ("x", "timesteps", "context", "fps"))
  x = x.transpose(0, 2, 3, 4, 1)

  def loss(p, deterministic, rng, remat="none"):
    out = unet3d.VideoCrafterUNet(config, remat=remat).apply(
        {"params": p}, x, t, context, fps, deterministic=deterministic, rngs={"dropout": rng})
    return (out**2).mean()
  value = jax.jit(loss, static_argnums=(1, 3))
  key, other = jax.random.key(0), jax.random.key(1)
  assert value(params, False, key) != value(params, True, key)
  assert value(params, False, key) == value(params, False, key) != value(params, False, other)
  gradient = jax.jit(jax.grad(loss), static_argnums=(1, 3))
  grads, remat = gradient(params, False, key, "none"), gradient(params, False, key, "full")
  # Against the largest gradient: a bias followed by a one-channel-per-group GroupNorm has a zero gradient up to
  # rounding, which no relative measure of its own can compare.
  flat = lambda tree: np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(tree)])  # noqa: E731
  assert max_rel(flat(remat), flat(grads)) <= 1e-5
