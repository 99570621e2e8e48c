"""DPO on the shapes world (`launch.dpo_shapes`, through `train.demo`) raises held-out preference accuracy above
chance, by more than luck allows."""

from configs import dpo_demo
from ureward_jax.train import demo, runner


def test_dpo_on_the_shapes_world_generalises(tmp_path):
  train_mixture, eval_mixture, tokenizer_file = demo.prepare_preference_data(str(tmp_path), train_per_task=800,
                                                                             eval_per_task=60)
  config = dpo_demo.get_config()
  config.workdir = str(tmp_path)
  config.data.update(train=train_mixture, tokenizer=tokenizer_file)
  config.train.num_steps = 160
  state = runner.train(config)
  results = demo.held_out(config, state.params, eval_mixture, tokenizer_file)
  assert state.step == 160 and set(results) == {"image_understanding", "video_understanding"}
  # 0 before training (every margin is 0); chance is 0.5. Over both tasks' 120 held-out pairs, the 95 % interval of
  # the accuracy lies above chance, and the chosen answers gain on the rejected ones in each task.
  right = round(sum(accuracy * 60 for accuracy, _ in results.values()))
  assert demo.wilson_interval(right, 120)[0] > 0.5, results
  assert all(margin > 0 for _, margin in results.values()), results
