"""DPO on the shapes world, measured: train the tiny policy on preference records and judge held-out pairs.

  python -m launch.dpo_shapes [--workdir=dpo_shapes_run] [--steps=N]

Generates 2,000 preference records per understanding task (train) and 100 (held out), trains `configs/dpo_demo.py`
with `launch.train`, then prints, per task, the held-out preference accuracy: the share of pairs whose chosen answer
gains more log-probability over the reference than the rejected one (chance 50 %; 0 % before training, when every
margin is 0), and the mean margin β·Δ.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import tokenizers  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from configs import dpo_demo  # noqa: E402
from launch.train import model_config, train  # noqa: E402
from ureward_jax import parallel  # noqa: E402
from ureward_jax.data import shapes  # noqa: E402
from ureward_jax.data.examples import ExampleConfig, make_preference_example  # noqa: E402
from ureward_jax.data.pipeline import MODEL_KEYS  # noqa: E402
from ureward_jax.data.sources import load_mixture  # noqa: E402
from ureward_jax.models.llava_onevision import LlavaOnevision, init_params  # noqa: E402
from ureward_jax.train.dpo import sequence_logps  # noqa: E402

TRAIN_PER_TASK, EVAL_PER_TASK = 2000, 100

def held_out(config, params, eval_mixture: str, tokenizer_file: str, batch: int = 10) -> dict:
  """{task: (preference accuracy, mean margin)} of `params` against the reference (the seeded initialisation)."""
  tokenizer = tokenizers.Tokenizer.from_file(tokenizer_file)
  model = model_config(config, tokenizer)
  module = LlavaOnevision(model)
  reference, _ = parallel.init_sharded(lambda r: init_params(model, r), jax.random.key(config.seed),
                                       parallel.make_mesh(**config.mesh))
  cfg = ExampleConfig.for_model(model, config.data.max_length, config.data.patches_per_sample,
                                video_frames=config.data.video_frames)
  logps = jax.jit(lambda p, b: sequence_logps(module, p, b)[0])
  records = load_mixture(eval_mixture)
  out = {}
  for task in ("image_understanding", "video_understanding"):
    examples = [make_preference_example(r, i, cfg, tokenizer) for i, r in enumerate(records)
                if r.data["id"].split("-")[3] == task]
    margins = []
    for start in range(0, len(examples), batch):
      rows = {k: jnp.asarray(np.concatenate([e[k] for e in examples[start:start + batch]])) for k in MODEL_KEYS}
      gain = np.asarray(logps(params, rows)) - np.asarray(logps(reference, rows))
      margins += (config.dpo.beta * (gain[0::2] - gain[1::2])).tolist()
    out[task] = (float(np.mean(np.array(margins) > 0)), float(np.mean(margins)))
  return out


def run(workdir: str, steps: int | None = None) -> dict:
  """Generate the data (once), train and print the held-out table; returns {task: (accuracy, mean margin)}."""
  workdir = os.path.abspath(workdir)
  root = os.path.join(workdir, "data")
  tokenizer_file = os.path.join(root, "tokenizer.json")
  if not os.path.exists(tokenizer_file):
    shapes.generate_preference(root, TRAIN_PER_TASK, "train", seed=0)
    shapes.generate_preference(root, EVAL_PER_TASK, "eval", seed=1)
    shapes.shapes_tokenizer().save(tokenizer_file)
  config = dpo_demo.get_config()
  config.workdir = workdir
  config.data.update(train=os.path.join(root, "train_dpo.yaml"), tokenizer=tokenizer_file)
  if steps:
    config.train.num_steps = steps
  logging.set_verbosity(logging.WARNING)
  state = train(config)
  print(f"\nheld-out preference pairs after {state.step} DPO steps:")
  print(f"{'task':<22}{'pairs':>6}{'accuracy':>10}{'chance':>8}{'mean margin':>13}")
  results = held_out(config, state.params, os.path.join(root, "eval_dpo.yaml"), tokenizer_file)
  for task, (accuracy, margin) in results.items():
    print(f"{task:<22}{EVAL_PER_TASK:>6}{accuracy:>10.1%}{0.5:>8.0%}{margin:>13.3f}")
  return results


if __name__ == "__main__":
  # Defined here, not at import, so that tests and other entry points can import this module.
  _WORKDIR = flags.DEFINE_string("workdir", "dpo_shapes_run", "where data, checkpoints and metrics go")
  _STEPS = flags.DEFINE_integer("steps", None, "training steps (default: configs/dpo_demo.py)")
  app.run(lambda _: run(_WORKDIR.value, _STEPS.value))
