"""`optim` config sections for the step tests: the shapes `train.optim.make_optimizer` reads."""

import ml_collections


def optim(**overrides) -> ml_collections.ConfigDict:
  """AdamW as the reward-model configs set it (cosine, no warm-up, no decay, clipping at 1), with `overrides`."""
  return ml_collections.ConfigDict(dict(name="adamw", lr=1e-2, schedule="cosine", warmup_ratio=0.0, weight_decay=0.0,
                                        clip_norm=1.0) | overrides)
