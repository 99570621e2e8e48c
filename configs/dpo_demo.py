"""DPO of the tiny model on the shapes world's preference records (image and video understanding, the right answer
chosen): `launch/dpo_shapes.py` fills in `data.train` and `data.tokenizer` and measures held-out preference
accuracy. The policy starts from its random initialisation, which is also the frozen reference."""

from configs import demo


def get_config():
  c = demo.get_config()
  c.data.update(batch_size=8, max_length=128, buckets=())
  c.train.update(objective="dpo", num_steps=200, log_every=25)
  c.dpo = dict(beta=0.5, loss_type="sigmoid", label_smoothing=0.0, gamma=0.0, reference="step",
                reference_dtype="bfloat16")
  c.optim.update(lr=1e-3, warmup_ratio=0.05, projector_lr=None, vision_tower_lr=None)
  return c
