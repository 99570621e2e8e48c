"""launch.dpo_shapes: DPO on the shapes world raises held-out preference accuracy above chance."""

from absl import flags

from launch import dpo_shapes


def test_dpo_on_the_shapes_world_generalises(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(dpo_shapes, "TRAIN_PER_TASK", 400)
  monkeypatch.setattr(dpo_shapes, "EVAL_PER_TASK", 60)
  flags.FLAGS.mark_as_parsed()
  monkeypatch.setattr(flags.FLAGS, "workdir", str(tmp_path))
  monkeypatch.setattr(flags.FLAGS, "steps", 80)
  dpo_shapes.main([])
  printed = capsys.readouterr().out
  rows = {line.split()[0]: line.split() for line in printed.splitlines() if "understanding" in line}
  accuracy = {task: float(row[2].rstrip("%")) / 100 for task, row in rows.items()}
  assert set(accuracy) == {"image_understanding", "video_understanding"}
  assert min(accuracy.values()) > 0.6, printed   # 0 before training (every margin 0); chance 0.5
  assert "after 80 DPO steps" in printed
