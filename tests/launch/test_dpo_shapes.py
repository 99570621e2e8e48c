"""launch.dpo_shapes: DPO on the shapes world raises held-out preference accuracy above chance."""

from launch import dpo_shapes


def test_dpo_on_the_shapes_world_generalises(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(dpo_shapes, "TRAIN_PER_TASK", 400)
  monkeypatch.setattr(dpo_shapes, "EVAL_PER_TASK", 60)
  results = dpo_shapes.run(str(tmp_path), steps=80)
  printed = capsys.readouterr().out
  assert set(results) == {"image_understanding", "video_understanding"} and "after 80 DPO steps" in printed
  # 0 before training (every margin is 0); chance is 0.5
  assert min(accuracy for accuracy, _ in results.values()) > 0.6, printed
  assert all(margin > 0 for _, margin in results.values())
