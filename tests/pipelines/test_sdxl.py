"""The SDXL-Turbo pipeline against diffusers' `StableDiffusionXLPipeline`: same prompts, same noise, same latents."""

import numpy as np
import pytest
import torch
import transformers

import ureward_jax
from tests import tiny_sdxl
from tests.parity import max_rel
from ureward_jax.processing.clip_tokenizer import CLIPTokenizer

PROMPTS = ["the cat and the dog", "a RED  blue cat!! 12 ünïcode's"]


@pytest.fixture(scope="module")
def ours(sdxl):
  return ureward_jax.load(sdxl[2])


@pytest.mark.parametrize("pad", ["<|endoftext|>", "!"])
def test_tokenizers_match_transformers(sdxl, tmp_path, pad):
  """From the vocab.json + merges.txt folders diffusers ships, and from the tokenizer.json transformers 5 saves;
  long prompts are cut to 77 tokens, `!` pads SDXL's second tokenizer and is a token of its own there."""
  pipe, folder, _ = sdxl
  prompts = PROMPTS + ["x " * 100, ""]
  shipped = tiny_sdxl.write_tokenizer(tmp_path, pad)
  saved = folder / ("tokenizer" if pad != "!" else "tokenizer_2")
  want = np.asarray(transformers.CLIPTokenizer.from_pretrained(shipped)(
      prompts, padding="max_length", max_length=77, truncation=True).input_ids)
  np.testing.assert_array_equal(CLIPTokenizer(shipped)(prompts), want)
  np.testing.assert_array_equal(CLIPTokenizer(saved)(prompts), want)


def test_prompt_embeddings_match_diffusers(sdxl, ours):
  pipe = sdxl[0]
  with torch.no_grad():
    embeds, _, pooled, _ = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=False)
  got, got_pooled = ours.encode_prompt(ours.params, *ours.tokenize(PROMPTS))
  assert max_rel(got, embeds.numpy()) <= 1e-5 and max_rel(got_pooled, pooled.numpy()) <= 1e-5


@pytest.mark.parametrize("steps", [1, 4])
def test_latents_and_images_match_diffusers(sdxl, ours, steps):
  """diffusers scales the initial latents it is given by σ_max, as we do, and draws each ancestral step's noise from the generator, in
  order: drawing the same tensors from a twin generator gives our sampler the same noise."""
  pipe = sdxl[0]
  height = width = 64
  shape = (len(PROMPTS), 4, height // 2, width // 2)
  latents = torch.randn(shape, generator=torch.Generator().manual_seed(1))
  twin = torch.Generator().manual_seed(7)
  step_noise = [torch.randn(shape, generator=twin) for _ in range(steps)]
  with torch.no_grad():
    want = pipe(PROMPTS, num_inference_steps=steps, guidance_scale=0.0, height=height, width=width,
                latents=latents, generator=torch.Generator().manual_seed(7),
                output_type="latent").images.numpy()
    images = pipe.vae.decode(torch.from_numpy(want) / pipe.vae.config.scaling_factor).sample
  noise = np.stack([t.numpy() for t in [latents] + step_noise]).transpose(0, 1, 3, 4, 2)
  embeds, pooled = ours.encode_prompt(ours.params, *ours.tokenize(PROMPTS))
  time_ids = np.tile(np.array([[height, width, 0, 0, height, width]], np.float32), (len(PROMPTS), 1))
  got = ours.denoise(ours.params, embeds, pooled, time_ids, noise, ours.schedule(steps))
  assert max_rel(np.asarray(got).transpose(0, 3, 1, 2), want) <= 1e-4
  decoded = np.asarray(ours.decode(ours.params, got)).transpose(0, 3, 1, 2)
  np.testing.assert_allclose(decoded, (images / 2 + 0.5).clamp(0, 1).numpy(), atol=1e-4)


def test_image_size_is_checked_before_compiling(ours):
  # Per-image seeding and batching: tests/pipelines/test_generate_cli.py, which compares against this call.
  with pytest.raises(ValueError, match="multiples of 2"):
    ours(PROMPTS, height=65, width=64)
