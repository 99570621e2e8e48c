"""Video Diffusion-DPO of VideoCrafter2's UNet: VideoDPO's choice of trained layers, the step that trains only them,
the frozen encoders' part, and a short run on synthetic pairs that learns the preferences."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import linen as nn

from converters import t2v_turbo
from tests.tiny_sdxl import VAE
from tests.video_reference import UNetModel
from ureward_jax.models import clip_text, unet3d, vae
from ureward_jax.pipelines import schedulers
from ureward_jax.train import trainable
from ureward_jax.train.accumulate import accumulating_step
from ureward_jax.train.tasks import diffusion_dpo
from ureward_jax.train.tasks import video_dpo as V

# VideoCrafter2's layout at toy width (as tests/models/test_videocrafter.py): GroupNorm-32, two levels, heads of 16.
TINY = dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(1, 2),
            num_head_channels=16, context_dim=24, time_cond_proj_dim=12, use_w_embedding=False)
# UnifiedReward's VideoDPO settings (configs/dpo_t2v_turbo.py).
VIDEODPO = dict(paired=False, keep_width=True, fps=16.0)


@pytest.fixture(scope="module")
def unet():
  config = unet3d.VideoCrafterUNetConfig.from_dict(TINY)
  return config, unet3d.VideoCrafterUNet(config), nn.unbox(unet3d.init_params(config, jax.random.key(0)))


def test_linear_layers_are_the_torch_linear_modules(unet):
  """The mask, exported under the checkpoint's names, marks exactly the parameters of the original's nn.Linear
  modules: VideoDPO's `[p for m in unet.modules() if isinstance(m, nn.Linear) for p in m.parameters()]`."""
  config, _, params = unet
  mask = trainable.linear_layers(params)
  exported = t2v_turbo.export_unet(jax.tree.map(lambda p, m: np.full(p.shape, float(m), np.float32), params, mask),
                                   config, prefix="")
  reference = UNetModel(**{k: v for k, v in TINY.items() if k != "use_w_embedding"})
  linear = {f"{name}.{p}" for name, m in reference.named_modules() if isinstance(m, torch.nn.Linear)
            for p, _ in m.named_parameters()}
  assert linear and set(exported) == set(reference.state_dict())
  assert {name for name, value in exported.items() if value.all()} == linear
  assert not any(value.any() for name, value in exported.items() if name not in linear)
  assert "init_attn.0.proj_in.weight" not in linear   # a Conv1d with kernel 1: frozen, although a matrix in effect


def synthetic_pairs(rng, pairs, frames=2, side=8, context_dim=24):
  """Winning clips hold one latent pattern in every frame and losing clips noise; the captions are random."""
  pattern = np.sin(np.arange(side)[:, None, None] + np.arange(4))[None].repeat(side, 2).astype(np.float32)
  winners = np.broadcast_to(pattern, (pairs, frames, side, side, 4))
  losers = rng.normal(size=(pairs, frames, side, side, 4)).astype(np.float32) * 2
  return {"latent_mean": np.concatenate([winners, losers]) / 0.18215,
          "latent_logvar": np.full((2 * pairs, frames, side, side, 4), -30.0, np.float32),
          "context": rng.normal(size=(pairs, 7, context_dim)).astype(np.float32),
          "factor": np.full((pairs,), 0.72, np.float32)}


def test_a_step_moves_the_linear_layers_only(unet):
  _, module, reference = unet
  mask = trainable.linear_layers(reference)
  optimizer = optax.adamw(1e-3)
  trained, frozen = trainable.split(reference, mask)
  opt_state = optimizer.init(trained)
  loss_fn = V.video_dpo_loss_fn(module, 5000.0, schedulers.alphas_cumprod(), 0.18215, **VIDEODPO)
  step = jax.jit(accumulating_step(loss_fn, optimizer, mask))
  batch = jax.tree.map(lambda x: x[None], synthetic_pairs(np.random.default_rng(0), 2))
  params, opt_state, metrics = step(jax.tree.map(jnp.copy, reference), opt_state, batch, reference,
                                    jax.random.key(0))
  moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), params, reference)
  flat_moved, flat_mask = (jax.tree_util.tree_flatten_with_path(t)[0] for t in (moved, mask))
  assert all(m == t for (_, m), (_, t) in zip(flat_moved, flat_mask))
  assert all(np.isfinite(float(v)) for v in metrics.values()) and float(metrics["grad_norm"]) > 0
  # the optimiser holds moments for the trained leaves only
  assert optax.tree.size(opt_state) == 2 * optax.tree.size(trained) + 1
  assert 0 < optax.tree.size(trained) < optax.tree.size(reference)


def test_the_reference_draws_dropout_masks_of_its_own(unet):
  """VideoDPO's reference runs in training mode (Lightning's `fit` undoes its `eval()`): with the policy equal to the
  reference, the two forwards still differ through their own dropout masks; `reference_dropout=False` and held-out
  evaluation give the deterministic reference."""
  config, module, params = unet
  assert config.temporal_conv_dropout == 0.1
  batch = synthetic_pairs(np.random.default_rng(0), 2)

  def mse(**options):
    loss_fn = V.video_dpo_loss_fn(module, 5000.0, schedulers.alphas_cumprod(), 0.18215, **VIDEODPO, **options)
    _, metrics = jax.jit(loss_fn)(params, params, batch, jax.random.key(0))
    return float(metrics["model_mse"]), float(metrics["ref_mse"])

  policy, reference = mse()
  policy_alone, evaluation_reference = mse(reference_dropout=False)
  held_out = mse(training=False)
  assert policy == policy_alone   # the policy's masks do not depend on the switch
  assert held_out[0] == pytest.approx(evaluation_reference, rel=1e-6)
  assert held_out[1] == pytest.approx(evaluation_reference, rel=1e-6)
  assert abs(reference - evaluation_reference) > 1e-6 * evaluation_reference and abs(policy - reference) > 1e-6 * reference


def test_pairs_are_encoded_frame_by_frame():
  vae_config = vae.AutoencoderKLConfig.from_dict(VAE)
  vae_module, vae_params = vae.AutoencoderKL(vae_config), nn.unbox(vae.init_params(vae_config, jax.random.key(1)))
  text_config = clip_text.CLIPTextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                         num_attention_heads=2, max_position_embeddings=77, eos_token_id=63,
                                         hidden_act="gelu")
  text_module = clip_text.CLIPTextModel(text_config)
  text_params = nn.unbox(clip_text.init_params(text_config, jax.random.key(2)))
  rng = np.random.default_rng(0)
  pixels = rng.uniform(-1, 1, (4, 3, 16, 16, 3)).astype(np.float32)
  ids = np.concatenate([rng.integers(0, 63, (2, 76)), np.full((2, 1), 63)], axis=1)
  got = jax.jit(lambda p, i: V.encode_video_pairs(vae_module, vae_params, text_module, text_params, p, i))(pixels, ids)
  mean, logvar = vae_module.apply({"params": vae_params}, pixels[2, 1][None], method="encode")
  assert got["latent_mean"].shape == (4, 3, 8, 8, 4) and got["context"].shape == (2, 77, 32)
  np.testing.assert_allclose(got["latent_mean"][2, 1], mean[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got["latent_logvar"][2, 1], logvar[0], rtol=1e-5, atol=1e-6)
  text = text_module.apply({"params": text_params}, ids, output_hidden_states=True)
  np.testing.assert_allclose(got["context"], text["penultimate_normed"], rtol=1e-5, atol=1e-6)


def test_short_run_learns_the_preferences():
  """The video step learns which clip of a pair wins, on a one-level UNet with each pair's t and ε shared, on the
  Turbo timesteps of the zero-terminal-SNR schedule (the image trainer's toy setting). With UnifiedReward's VideoDPO
  settings (the 50-step grid of the plain schedule, t and ε drawn per clip, one term per latent column, only the
  Linear layers trained) this toy does not learn within 100 steps (held-out accuracy 0.49–0.55 at steps 20–100, loss
  0.81–0.85): the random losers' errors at small t and the unshared timesteps swamp the signal. The temporal convs'
  dropout is off: with it (0.1, each policy forward on its own masks, the reference in evaluation mode) the same run
  learns more slowly (held-out accuracy 0.69, loss 0.68 at step 30; 0.75 and 0.51 at step 60)."""
  config = unet3d.VideoCrafterUNetConfig.from_dict({**TINY, "channel_mult": (1,), "attention_resolutions": (1,),
                                                    "temporal_conv_dropout": 0.0})
  module, reference = unet3d.VideoCrafterUNet(config), nn.unbox(unet3d.init_params(config, jax.random.key(0)))
  alphas = diffusion_dpo.training_alphas_cumprod(turbo=True)
  options = dict(timestep_values=schedulers.TURBO_TRAIN_TIMESTEPS)
  optimizer = optax.adamw(3e-4)
  # β 500 rather than 5000: this toy's denoising errors differ far more between clips than a real model's.
  step = jax.jit(accumulating_step(V.video_dpo_loss_fn(module, 500.0, alphas, 0.18215, **options), optimizer),
                 donate_argnums=(0, 1))
  rng = np.random.default_rng(3)
  held_out = synthetic_pairs(rng, 16)
  evaluate = jax.jit(lambda p: V.video_dpo_loss_fn(module, 500.0, alphas, 0.18215, training=False, **options)(
      p, reference, held_out, jax.random.key(99)))
  loss, _ = evaluate(reference)
  # Policy = reference: every term is 0.72 · log 2 up to rounding, which β magnifies a little.
  assert float(loss) == pytest.approx(0.72 * np.log(2), abs=1e-3)
  params, opt_state = jax.tree.map(jnp.copy, reference), optimizer.init(reference)
  for i in range(30):
    batch = jax.tree.map(lambda x: x[None], synthetic_pairs(rng, 4))
    params, opt_state, metrics = step(params, opt_state, batch, reference, jax.random.key(i))
  loss, metrics = evaluate(params)
  assert float(metrics["implicit_acc"]) >= 0.7 and float(loss) < 0.4
