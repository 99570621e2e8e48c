"""The demo's base VLM: the tiny LLaVA-OneVision trained from scratch to describe the shapes world and answer
questions about it (a stage like LLaVA-OneVision's own pretraining), before `configs/demo.py` fine-tunes it into
the reward model.

`make demo` generates the data and fills in `data.train` and `data.tokenizer` (launch/shapes_demo.py).
"""

from configs import demo


def get_config():
  c = demo.get_config()
  c.model.checkpoint = ""   # from scratch
  # A base dialogue (four turns, or two inputs and four turns) is 100–135 tokens.
  c.data.update(max_length=144, buckets=(120,))
  c.train.update(num_steps=1000, logits_chunk=144)
  # Every part learns at the common rate: there are no features yet to keep.
  c.optim.update(projector_lr=2e-3, vision_tower_lr=2e-3)
  c.checkpoint.update(every=250, keep=1)
  return c
