"""T2V-Turbo end to end: a VideoCrafter2-style Lightning `.ckpt` (UNet without `time_cond_proj`, VAE, OpenCLIP text
tower, schedule buffers, a pickled settings object) plus a T2V-Turbo LoRA list are converted by the command line,
loaded, and the pipeline's video equals the PyTorch re-statements driven by the published LCM step (fp32, every
parameter perturbed); the tokenizer equals open_clip's; export writes back every tensor bit for bit; bad files
fail naming what is wrong; neither direction writes over what it did not make or leaves a partial result."""

import json

import av
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import ureward_jax
from converters import t2v_turbo, torch_checkpoint
from converters.common import ConversionError
from tests import tiny_t2v
from tests.parity import max_rel
from tests.pipelines.test_lcm import RestatedScheduler
from tests.tiny_sdxl import MERGES
from tests.tiny_t2v import VOCAB, WIDTH
from tests.video_reference import simple_tokenize
from ureward_jax.cli import main
from ureward_jax.pipelines.t2v_turbo import T2VTurboPipeline
from ureward_jax.processing.video import read_frames
from ureward_jax.runners.unet import VideoCrafter

PROMPTS = ["the red cat!", "The DOG &amp; the  blue cat", "x " * 100, "", "and!!",
           "a dog’s “toy” in a cafÃ© ＡＢＣ"]   # ftfy: straight quotes, repaired mojibake, half-width letters
STEPS, FRAMES, HEIGHT, WIDTH_PX = 4, 3, 32, 48


@pytest.fixture(scope="module")
def made(tmp_path_factory):
  made = tiny_t2v.build(tmp_path_factory.mktemp("t2v"))
  return made | {"pipeline": ureward_jax.load(made["folder"])}


def test_tokenizer_is_open_clips(made):
  """`!` is an ordinary symbol (not SDXL's pad token), HTML entities are unescaped, text goes through ftfy, long
  prompts keep their end token, padding is zeros."""
  ids = made["pipeline"].tokenizer(PROMPTS)
  np.testing.assert_array_equal(ids, simple_tokenize(PROMPTS, MERGES).numpy())
  assert ids[4, 2] == 0 and ids[4, 3] == 256 and ids[2, 76] == VOCAB - 1


def test_video_matches_the_restated_pipeline(made):
  pipe, unet, autoencoder = made["pipeline"], made["unet"], made["vae"]
  assert isinstance(pipe, T2VTurboPipeline) and pipe.unet.config.time_cond_proj_dim == 12
  prompts = PROMPTS[:2]
  ids = simple_tokenize(prompts, MERGES)
  noise = np.asarray(pipe.noise(0, [0, 1], STEPS, FRAMES, HEIGHT, WIDTH_PX))
  with jax.default_matmul_precision("highest"):
    got = np.asarray(pipe._generate(pipe.params, ids.numpy().astype(np.int32), noise, jnp.float32(7.5),
                                    jnp.float32(8), STEPS))

  half = 6   # T2V-Turbo's get_w_embedding: [sin, cos] of w · 1000 · exp(−ln(10⁴) i / (half − 1))
  angles = 7500.0 * torch.exp(torch.arange(half) * -(np.log(10000.0) / (half - 1)))
  w_embedding = torch.cat([torch.sin(angles), torch.cos(angles)])[None].repeat(2, 1)
  scheduler = RestatedScheduler(STEPS)
  as_torch = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 4, 1, 2, 3)))  # noqa: E731
  x = as_torch(noise[0]).double()
  with torch.no_grad():
    context = made["text"].penultimate(ids)
    for i, t in enumerate(scheduler.timesteps):
      eps = unet(x.float(), torch.full((2,), int(t)), context, torch.full((2,), 8), timestep_cond=w_embedding)
      x, denoised = scheduler.step(eps.double().numpy(), i, x.numpy(), as_torch(noise[i + 1]).double().numpy())
      x = torch.from_numpy(x)
    latents = torch.from_numpy(denoised).float()                                          # (B, C, T, h, w)
    frames = latents.permute(0, 2, 1, 3, 4).reshape(-1, 4, *latents.shape[-2:]) / 0.18215
    pixels = autoencoder.decode(frames).sample.clamp(-1, 1)
  want = ((pixels + 1) / 2).reshape(2, FRAMES, 3, HEIGHT, WIDTH_PX).permute(0, 1, 3, 4, 2).numpy()
  assert got.shape == (2, FRAMES, HEIGHT, WIDTH_PX, 3) and max_rel(got, want) <= 1e-4
  videos = pipe(prompts, STEPS, FRAMES, HEIGHT, WIDTH_PX, fps=8, guidance_scale=7.5, seed=0)
  assert videos.dtype == np.uint8 and np.abs(videos.astype(int) - (want * 255).astype(int)).max() <= 1


def test_export_restores_every_tensor(made):
  back = made["root"] / "back.ckpt"
  t2v_turbo.main(["--export", "--src", str(made["folder"]), "--dst", str(back)])
  tensors = torch.load(back, weights_only=True)["state_dict"]
  want = {**made["merged"], **made["vae_tensors"],
          **{k: v.numpy() for k, v in made["state"].items() if k.startswith(t2v_turbo.TEXT_PREFIX)}}
  del want[t2v_turbo.TEXT_PREFIX + "logit_scale"]
  assert set(tensors) == set(want)
  assert all(np.array_equal(tensors[k].numpy(), want[k]) for k in want)


def test_a_reference_unet_file_becomes_a_unet_folder(made, tmp_path):
  """VideoDPO's reference naming, in a DeepSpeed-layout file: a UNet folder whose forward is the re-statement's."""
  unet = made["unet"]
  state = {"_forward_module." + t2v_turbo.REFERENCE_UNET_PREFIX + k: v for k, v in unet.state_dict().items()}
  torch.save({"module": state}, tmp_path / "ref.ckpt")
  t2v_turbo.main(["--src", str(tmp_path / "ref.ckpt"), "--config", str(made["root"] / "config.yaml"), "--dst",
                  str(tmp_path / "ref")])
  loaded = ureward_jax.load(tmp_path / "ref")
  assert isinstance(loaded, VideoCrafter)
  g = torch.Generator().manual_seed(5)
  x, context, cond = torch.randn(2, 4, 2, 8, 8, generator=g), torch.randn(2, 7, WIDTH, generator=g), \
      torch.randn(2, 12, generator=g)
  with torch.no_grad():
    want = unet(x, torch.tensor([999, 19]), context, torch.tensor([16, 8]), timestep_cond=cond).numpy()
  with jax.default_matmul_precision("highest"):
    got = loaded.forward(x.numpy(), [999, 19], context.numpy(), [16, 8], cond.numpy())
  assert max_rel(got, want) <= 1e-4


def test_bad_checkpoints_fail_naming_the_problem(made, tmp_path):
  state, tokenizer = made["state"], str(made["root"] / "bpe.txt.gz")
  config = ["--config", str(made["root"] / "config.yaml")]
  cases = {
      "no tokenizer": ({"state_dict": state}, [], "needs its tokenizer"),
      "stray tensor": ({"state_dict": {**state, "model_ema.decay": torch.tensor(0.9)}}, ["--tokenizer", tokenizer],
                       r"unexpected tensors outside the UNet, VAE and text encoder: \['model_ema.decay'\]"),
      "other schedule": ({"state_dict": {**state, **tiny_t2v.schedule_buffers(np.linspace(1e-4, 0.02, 1000))}},
                         ["--tokenizer", tokenizer], "noise schedule 'alphas_cumprod' is not VideoCrafter2's"),
      "no reference": ({"state_dict": state}, ["--reference"], "does not hold"),
      "no tokenizer file": ({"state_dict": state}, ["--tokenizer", str(tmp_path / "nowhere.gz")], "does not exist"),
      "damaged tokenizer": ({"state_dict": state}, ["--tokenizer", str(tmp_path / "damaged.gz"), *config],
                            "damaged.gz: not a readable merges file"),
      "integer schedule": ({"state_dict": {**state, "alphas_cumprod": state["alphas_cumprod"].long()}},
                           ["--tokenizer", tokenizer], "the noise schedule's buffers must be floating .*: "
                           "'alphas_cumprod' has dtype int64"),
  }
  (tmp_path / "damaged.gz").write_bytes(b"\x1f\x8b" + bytes(20))
  for name, (content, flags, message) in cases.items():
    torch.save(content, tmp_path / "bad.ckpt")
    with pytest.raises(SystemExit, match=message):
      t2v_turbo.main(["--src", str(tmp_path / "bad.ckpt"), "--dst", str(tmp_path / name), *flags])
    assert not (tmp_path / name).exists() and not list(tmp_path.glob(".*")), name
  dropped = {k: v for k, v in state.items() if not k.endswith("input_blocks.1.0.in_layers.2.bias")}
  torch.save({"state_dict": dropped}, tmp_path / "dropped.ckpt")
  with pytest.raises(SystemExit, match=r"missing tensor 'model.diffusion_model.input_blocks.1.0.in_layers.2.bias'"):
    t2v_turbo.main(["--src", str(tmp_path / "dropped.ckpt"), "--config", str(made["root"] / "config.yaml"),
                    "--tokenizer", tokenizer, "--dst", str(tmp_path / "dropped")])
  weight = t2v_turbo.UNET_PREFIX + "out.2.weight"
  torch.save({"state_dict": {**state, weight: state[weight].long()}}, tmp_path / "integer.ckpt")
  with pytest.raises(SystemExit, match=f"tensor '{weight}' has dtype int64; 'out_2/kernel' takes a floating dtype"):
    t2v_turbo.main(["--src", str(tmp_path / "integer.ckpt"), "--config", str(made["root"] / "config.yaml"),
                    "--tokenizer", tokenizer, "--dst", str(tmp_path / "integer")])
  lora = torch.load(made["root"] / "unet_lora.pt")
  lora[3] = lora[3].long()
  torch.save(lora, tmp_path / "integer_lora.pt")
  with pytest.raises(SystemExit, match=r"LoRA tensors must be floating .*: down tensor 3 \(of [\w.]+\) has dtype int64"):
    t2v_turbo.main(["--src", str(made["root"] / "model.ckpt"), "--lora", str(tmp_path / "integer_lora.pt"),
                    "--config", str(made["root"] / "config.yaml"), "--tokenizer", tokenizer, "--dst",
                    str(tmp_path / "integer")])
  assert not (tmp_path / "integer").exists() and not list(tmp_path.glob(".*"))
  (tmp_path / "old.ckpt").write_bytes(b"\x80\x02not a zip")
  with pytest.raises(ConversionError, match="not a torch zip checkpoint"):
    torch_checkpoint.state_dict(tmp_path / "old.ckpt")


def test_destinations_are_never_written_over_nor_left_partial(made, tmp_path, monkeypatch):
  """A folder of the user's, the source itself, an existing .ckpt: refused and untouched. An export that fails
  leaves no file, the hidden partial one included."""
  root = made["root"]
  flags = ["--tokenizer", str(root / "bpe.txt.gz"), "--config", str(root / "config.yaml")]
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "notes.txt").write_text("mine")
  with pytest.raises(SystemExit, match=r"already holds files this project did not write \(notes.txt\)"):
    t2v_turbo.main(["--src", str(root / "model.ckpt"), *flags, "--dst", str(mine)])
  with pytest.raises(SystemExit, match="is inside the source"):   # --src and --dst swapped
    t2v_turbo.main(["--src", str(root / "model.ckpt"), *flags, "--dst", str(root / "model.ckpt")])
  (tmp_path / "merged.ckpt").write_bytes(b"mine")
  with pytest.raises(SystemExit, match="merged.ckpt already exists"):
    t2v_turbo.main(["--export", "--src", str(made["folder"]), "--dst", str(tmp_path / "merged.ckpt")])
  assert (mine / "notes.txt").read_text() == "mine" and (tmp_path / "merged.ckpt").read_bytes() == b"mine"

  def save_then_fail(tensors, path):
    path.write_bytes(b"half a checkpoint")
    raise RuntimeError("disk pulled out")

  monkeypatch.setattr(torch_checkpoint, "save", save_then_fail)
  with pytest.raises(RuntimeError, match="disk pulled out"):
    t2v_turbo.export_checkpoint(made["folder"], tmp_path / "back.ckpt")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["merged.ckpt", "mine"]


def test_generate_writes_videos_and_candidates(made, tmp_path):
  """`ureward generate --task video`: frame folders (lossless) equal the pipeline's videos numbered i × N + k; mp4s
  hold the frames at the asked rate; an SDXL folder is refused for videos."""
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("the red cat\nand the blue dog\n")
  common = ["generate", "--task", "video", "--model", str(made["folder"]), "--prompts", str(prompts),
            "--num-per-prompt", "2", "--frames", str(FRAMES), "--height", str(HEIGHT), "--width", str(WIDTH_PX),
            "--batch-size", "4", "--seed", "5"]
  assert main(common + ["--video-format", "frames", "--out", str(tmp_path / "frames")]) == 0
  rows = [json.loads(line) for line in (tmp_path / "frames" / "candidates.jsonl").read_text().splitlines()]
  assert [row["candidates"] for row in rows] == [[f"videos/p0000{i}_{k}" for k in (0, 1)] for i in (0, 1)]
  want = made["pipeline"](["the red cat"] * 2 + ["and the blue dog"] * 2, STEPS, FRAMES, HEIGHT, WIDTH_PX, seed=5,
                          indices=[0, 1, 2, 3])
  got = np.stack([read_frames(str(tmp_path / "frames" / path), FRAMES) for row in rows for path in row["candidates"]])
  assert np.abs(got.astype(int) - want.astype(int)).max() <= 1   # one uint8 step where XLA sums in another order
  assert json.loads((tmp_path / "frames" / "generate.json").read_text())["guidance_scale"] == 7.5

  assert main(common + ["--out", str(tmp_path / "mp4")]) == 0
  with av.open(str(tmp_path / "mp4" / "videos" / "p00001_1.mp4")) as container:
    stream = container.streams.video[0]
    decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
    assert stream.average_rate == 8 and decoded.shape == (FRAMES, HEIGHT, WIDTH_PX, 3)
  (tmp_path / "sdxl").mkdir()
  (tmp_path / "sdxl" / "config.json").write_text(json.dumps({"model_type": "sdxl"}))
  with pytest.raises(SystemExit, match="is not a T2V-Turbo pipeline folder: its model_type is 'sdxl'"):
    main(common[:4] + [str(tmp_path / "sdxl")] + common[5:] + ["--out", str(tmp_path / "x")])
