"""The SDXL VAE port against diffusers' `AutoencoderKL`: tiny random configs, every parameter perturbed."""

import diffusers
import jax
import numpy as np
import pytest
import torch

from converters import sdxl
from tests.parity import max_rel
from ureward_jax.models import vae
from ureward_jax.runners.vae import VAE

# SDXL's layout at toy width: GroupNorm-32, two resnets per block, a width change (shortcut convs) and a repeated
# width (identity shortcuts) as in (128, 256, 512, 512), two down- and two upsamplers, mid-block attention.
SDXL_TINY = dict(block_out_channels=(32, 64, 64), layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 3,
                 up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=32, sample_size=32,
                 scaling_factor=0.13025)
# The optional parts switched off, one resnet per block, and several channels per group (the groups' channel order).
BARE_TINY = dict(block_out_channels=(16, 32), layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 2,
                 up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4, sample_size=32,
                 use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=False)


def reference(config, seed=0):
  torch.manual_seed(seed)
  model = diffusers.AutoencoderKL(**config).eval()
  with torch.no_grad():
    for p in model.parameters():  # GroupNorm weights start at 1 and biases at 0: those must count too
      p.add_(0.02 * torch.randn_like(p))
  return model


def port(ref, **module_kwargs):
  config = vae.AutoencoderKLConfig.from_dict(dict(ref.config))
  params = sdxl.params_from_tensors({k: v.numpy() for k, v in ref.state_dict().items()}, vae.param_shapes(config))
  return VAE.from_params(config, params, **module_kwargs)


def pixels(batch, height, width, seed=1):
  return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(scope="module")
def sdxl_pair():
  ref = reference(SDXL_TINY)
  return ref, port(ref)


@pytest.mark.parametrize("height,width", [(32, 32), (32, 48)])
def test_encode_matches_diffusers(sdxl_pair, height, width):
  ref, ours = sdxl_pair
  x = pixels(2, height, width)
  with torch.no_grad():
    dist = ref.encode(x).latent_dist
  with jax.default_matmul_precision("highest"):
    mean, logvar = ours.encode_distribution(x.numpy())
  assert mean.shape == (2, 4, height // 4, width // 4)
  assert max_rel(mean, dist.mean.numpy()) <= 1e-5
  assert max_rel(logvar, dist.logvar.numpy()) <= 1e-5
  np.testing.assert_array_equal(ours.encode(x.numpy()), mean)   # the mode, as `latent_dist.mode()`


@pytest.mark.parametrize("height,width", [(8, 8), (8, 12)])
def test_decode_matches_diffusers(sdxl_pair, height, width):
  ref, ours = sdxl_pair
  z = torch.randn(2, 4, height, width, generator=torch.Generator().manual_seed(2))
  with torch.no_grad():
    want = ref.decode(z).sample.numpy()
  with jax.default_matmul_precision("highest"):
    got = ours.decode(z.numpy())
  assert got.shape == (2, 3, 4 * height, 4 * width)
  assert max_rel(got, want) <= 1e-5


def test_optional_parts_off_and_logvar_clamp_match_diffusers():
  ref = reference(BARE_TINY, seed=3)
  with torch.no_grad():  # push two log-variance channels past both ends of the clamp
    ref.encoder.conv_out.bias[4] += 100.0
    ref.encoder.conv_out.bias[5] -= 100.0
  ours = port(ref)
  assert "quant_conv" not in ours.params and "post_quant_conv" not in ours.params
  assert "attentions_0" not in ours.params["encoder"]["mid_block"]
  x = pixels(2, 32, 32, seed=4)
  with torch.no_grad():
    dist = ref.encode(x).latent_dist
    want = ref.decode(dist.mean).sample.numpy()
  with jax.default_matmul_precision("highest"):
    mean, logvar = ours.encode_distribution(x.numpy())
    got = ours.decode(mean)
  assert max_rel(mean, dist.mean.numpy()) <= 1e-5
  assert max_rel(logvar[:, 2:], dist.logvar.numpy()[:, 2:]) <= 1e-5
  assert (logvar[:, 0] == 20.0).all() and (logvar[:, 1] == -30.0).all()
  assert max_rel(got, want) <= 1e-5


def test_posterior_sample_is_seeded_mean_plus_std_noise(sdxl_pair):
  _, ours = sdxl_pair
  x = pixels(2, 32, 32, seed=5).numpy()
  mean, logvar = ours.encode_distribution(x)
  a, b = ours.encode(x, sample_posterior=True, seed=7), ours.encode(x, sample_posterior=True, seed=7)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, ours.encode(x, sample_posterior=True, seed=8))
  noise = (a - mean) / np.exp(0.5 * logvar)
  assert abs(noise.mean()) < 0.2 and abs(noise.std() - 1) < 0.2


def test_config_round_trip_and_refusals():
  config = vae.AutoencoderKLConfig.from_dict(dict(SDXL_TINY, _class_name="AutoencoderKL", act_fn="silu"))
  assert config.block_out_channels == (32, 64, 64) and config.downsample_factor == 4
  assert vae.AutoencoderKLConfig.from_dict(config.to_dict()) == config
  sdxl_vae = vae.AutoencoderKLConfig()
  assert sdxl_vae.downsample_factor == 8 and sdxl_vae.scaling_factor == 0.13025 and sdxl_vae.force_upcast
  with pytest.raises(ValueError, match="AttnDownEncoderBlock2D"):
    vae.AutoencoderKLConfig.from_dict(dict(SDXL_TINY, down_block_types=["AttnDownEncoderBlock2D"] * 3))
  with pytest.raises(ValueError, match="UpBlock2D"):
    vae.AutoencoderKLConfig.from_dict(dict(SDXL_TINY, up_block_types=["UpBlock2D"] * 3))
  with pytest.raises(ValueError, match="entries"):
    vae.AutoencoderKLConfig.from_dict(dict(SDXL_TINY, down_block_types=["DownEncoderBlock2D"] * 2))
  with pytest.raises(ValueError, match="act_fn"):
    vae.AutoencoderKLConfig.from_dict(dict(SDXL_TINY, act_fn="gelu"))
  with pytest.raises(ValueError, match="norm_type"):
    vae.AutoencoderKLConfig.from_dict(dict(SDXL_TINY, norm_type="spatial"))
  with pytest.raises(ValueError, match="AutoencoderTiny"):
    vae.AutoencoderKLConfig.from_dict(dict(SDXL_TINY, _class_name="AutoencoderTiny"))
