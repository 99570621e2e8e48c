"""The SDXL UNet port against diffusers' `UNet2DConditionModel`: tiny random configs, every parameter perturbed."""

import diffusers
import jax
import pytest
import torch

from converters import sdxl
from tests.parity import max_rel
from ureward_jax.models import unet2d
from ureward_jax.runners.unet import UNet

# SDXL's layout at toy width: GroupNorm-32, a plain and a cross-attention block, depths (1, 2), text_time conditioning.
SDXL_TINY = dict(block_out_channels=(32, 64), layers_per_block=2, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                 use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
                 transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80, cross_attention_dim=64,
                 norm_num_groups=32, sample_size=16)
# SD1.5's variant of the same blocks: 1×1-conv projections, a single head count, no added conditioning.
CONV_TINY = dict(block_out_channels=(32, 64), layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=4, cross_attention_dim=48,
                 norm_num_groups=32, sample_size=16)


def reference(config, seed=0):
  torch.manual_seed(seed)
  model = diffusers.UNet2DConditionModel(**config).eval()
  with torch.no_grad():
    for p in model.parameters():  # zero-initialised layers (proj_out, conv_out) must count too
      p.add_(0.05 * torch.randn_like(p))
  return model


def port(ref, **module_kwargs):
  config = unet2d.UNet2DConditionConfig.from_dict(dict(ref.config))
  params = sdxl.params_from_tensors({k: v.numpy() for k, v in ref.state_dict().items()}, unet2d.param_shapes(config))
  return UNet.from_params(config, params, **module_kwargs)


def inputs(batch, height, width, context_dim, pooled=None, seed=1):
  g = torch.Generator().manual_seed(seed)
  args = dict(sample=torch.randn(batch, 4, height, width, generator=g),
              timestep=torch.tensor([999, 249, 500, 0][:batch]),
              encoder_hidden_states=torch.randn(batch, 7, context_dim, generator=g))
  if pooled:
    time_ids = torch.tensor([[512, 512, 0, 0, 512, 512], [384, 640, 16, 8, 512, 512]] * batch, dtype=torch.float32)
    args["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, pooled, generator=g), "time_ids": time_ids[:batch]}
  return args


def numpy(args):
  return {k: ({n: t.numpy() for n, t in v.items()} if isinstance(v, dict) else v.numpy()) for k, v in args.items()}


@pytest.fixture(scope="module")
def sdxl_pair():
  ref = reference(SDXL_TINY)
  return ref, port(ref)


@pytest.mark.parametrize("height,width", [(16, 24), (64, 64)])  # non-square; 32² = 1,024 tokens in the attentions
def test_sdxl_layout_matches_diffusers(sdxl_pair, height, width):
  ref, ours = sdxl_pair
  args = inputs(2, height, width, 64, pooled=32)
  with torch.no_grad():
    want = ref(**args).sample.numpy()
  with jax.default_matmul_precision("highest"):
    got = ours.forward(**numpy(args))
  assert max_rel(got, want) <= 1e-5


def test_conv_projection_without_added_conditioning_matches_diffusers():
  ref = reference(CONV_TINY, seed=3)
  ours = port(ref)
  args = inputs(2, 16, 16, 48)
  with torch.no_grad():
    want = ref(**args).sample.numpy()
  with jax.default_matmul_precision("highest"):
    got = ours.forward(**numpy(args))
  assert max_rel(got, want) <= 1e-5


def test_remat_recomputes_blocks_with_the_same_result(sdxl_pair):
  _, ours = sdxl_pair
  rematted = UNet.from_params(ours.config, ours.params, remat="full")
  args = numpy(inputs(1, 16, 16, 64, pooled=32))
  with jax.default_matmul_precision("highest"):
    assert max_rel(rematted.forward(**args), ours.forward(**args)) <= 1e-6
  x = args["sample"].transpose(0, 2, 3, 1)
  extra = (args["added_cond_kwargs"]["text_embeds"], args["added_cond_kwargs"]["time_ids"])

  def checkpoints(module):
    loss = lambda p: module.apply({"params": p}, x, args["timestep"], args["encoder_hidden_states"], *extra).sum()  # noqa: E731
    return str(jax.make_jaxpr(loss)(ours.params)).count("remat")
  # One rematerialised region per resnet (2 + 2 + 2 mid + 3 + 3) and per transformer block (2·2 + 2 mid + 3·2).
  assert (checkpoints(ours.module), checkpoints(rematted.module)) == (0, 24)


def test_config_names_and_refusals():
  config = unet2d.UNet2DConditionConfig.from_dict(dict(SDXL_TINY, attention_head_dim=[2, 4]))
  assert config.num_attention_heads == (2, 4)   # SDXL's attention_head_dim is the head count
  assert unet2d.UNet2DConditionConfig.from_dict(config.to_dict()) == config
  assert unet2d.UNet2DConditionConfig().time_embed_dim == 1280
  with pytest.raises(ValueError, match="time_cond_proj_dim"):
    unet2d.UNet2DConditionConfig.from_dict(dict(SDXL_TINY, time_cond_proj_dim=256))
  with pytest.raises(ValueError, match="SimpleCrossAttnDownBlock2D"):
    unet2d.UNet2DConditionConfig.from_dict(dict(SDXL_TINY, down_block_types=["SimpleCrossAttnDownBlock2D"] * 2))


def test_odd_latent_size_is_refused(sdxl_pair):
  _, ours = sdxl_pair
  args = numpy(inputs(1, 15, 16, 64, pooled=32))
  with pytest.raises(ValueError, match="multiple of 2"):
    ours.forward(**args)
