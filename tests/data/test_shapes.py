"""The shapes world: deterministic, every task × mode in the official record format, ground truth true to the
pixels, and a word-level tokenizer that covers it."""

import json
import pathlib
import re

import numpy as np
import pytest
import tokenizers
import yaml
from PIL import Image

from ureward_jax.data import shapes, shapes_base
from ureward_jax.reward import prompts

NUM = 24
NAMES = [f"{task}_{mode}" for task in prompts.TASKS for mode in prompts.MODES]
CHAT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\n"
        "Text Caption: [a red circle]<|im_end|>\n")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  out = tmp_path_factory.mktemp("shapes")
  assert shapes.generate(out, num_per_task=NUM) == dict.fromkeys(NAMES, NUM)
  shapes.generate(out, num_per_task=NUM, split="test")
  return out


def records(root, split="train"):
  return {name: json.loads((root / split / f"{name}.json").read_text()) for name in NAMES}


def files(folder: pathlib.Path) -> dict[str, bytes]:
  return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_arguments_write_identical_bytes(root, tmp_path):
  shapes.generate(tmp_path, num_per_task=NUM)
  ours = files(tmp_path)
  assert ours == {k: v for k, v in files(root).items() if k in ours}
  assert len(ours) > 8 * NUM


def test_seeds_and_splits_draw_different_samples(root, tmp_path):
  shapes.generate(tmp_path, num_per_task=NUM, seed=1)
  for other in (records(root, "test"), records(tmp_path)):
    for name, train in records(root).items():
      assert not {r["id"] for r in train} & {r["id"] for r in other[name]}
      same = sum(a["conversations"] == b["conversations"] for a, b in zip(train, other[name]))
      assert same < NUM // 2, name
  paths = {split: {json.dumps([r.get(k) for k in ("image", "images", "video")])
                   for data in records(root, split).values() for r in data} for split in ("train", "test")}
  assert not paths["train"] & paths["test"]


def test_mixture_yaml_lists_every_file(root):
  mixture = yaml.safe_load((root / "train.yaml").read_text())
  assert mixture["datasets"] == [{"json_path": f"train/{name}.json", "sampling_strategy": "all", "image_folder": "."}
                                 for name in NAMES]


def media_paths(record):
  if "image" in record:
    return [record["image"]]
  if "images" in record:
    return record["images"]
  return [f"{record['video']}/{p.name}" for p in sorted(pathlib.Path(record["video"]).iterdir())]


@pytest.mark.parametrize("name", NAMES)
def test_records_follow_the_official_format(root, name, monkeypatch):
  monkeypatch.chdir(root)
  task, mode = name.rsplit("_", 1)
  template = prompts.template(task, mode)
  for record in records(root)[name]:
    assert sum(key in record for key in ("image", "images", "video")) == 1
    assert record["task"] == task and record["mode"] == mode
    human, gpt = record["conversations"]
    assert human["from"] == "human" and gpt["from"] == "gpt"
    frames = media_paths(record)
    assert len(frames) == prompts.image_markers(task, mode, num_frames=4)
    assert all(Image.open(p).size == (32, 32) for p in frames)
    # One marker per image or video, as LLaVA-NeXT's trainer lays them out.
    markers = 2 if name == "image_generation_pair" else 1
    opening = "<image>\n <image>\n" if markers == 2 else "<image>\n"   # an image pair's, as the official records
    assert human["value"].startswith(opening) and human["value"].count("<image>") == markers
    text = human["value"][len(opening):]
    fields = re.findall(r"\[(.*?)\]", text)[-len(template.fields):]
    assert text == prompts.render(task, mode, **dict(zip(template.fields, fields)))
    if mode == "pair":
      assert gpt["value"] == template.verdicts[record["winner"]]
    else:
      low, high = template.score_range
      score = int(re.fullmatch(r"(?s).*\nFinal Score: (\d+)", gpt["value"]).group(1))
      assert score == record["score"] and low <= score <= high
  winners = [r.get("winner") for r in records(root)[name]]
  assert mode == "point" or {1, 2} <= set(winners)


def blobs(path) -> dict[str, tuple[str, tuple[float, float]]]:
  """{colour: (kind, centre (y, x))} of the shapes in an image, the kind from how much of its box it fills."""
  pixels = np.asarray(Image.open(path).convert("RGB"))
  found = {}
  for color, rgb in shapes.COLORS.items():
    ys, xs = np.nonzero((pixels == rgb).all(-1))
    if len(ys):
      fill = len(ys) / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
      found[color] = ("square" if fill > 0.95 else "circle" if fill > 0.65 else "triangle", (ys.mean(), xs.mean()))
  assert (pixels != shapes.BACKGROUND).any(-1).sum() == sum(
      (pixels == rgb).all(-1).sum() for rgb in shapes.COLORS.values())
  return found


def caption_holds(caption: str, found) -> bool:
  objects = re.findall(r"an? (\w+) (\w+)", caption)
  return len(found) == len(objects) and all(found.get(color, ("",))[0] == kind for color, kind in objects)


def video_motion(frames) -> tuple[str, str, str]:
  """(colour, kind, direction) of the one shape moving through `frames`."""
  (color, (kind, start)), = blobs(frames[0]).items()
  (_, (_, end)), = blobs(frames[-1]).items()
  dy, dx = np.subtract(end, start)
  direction = ("down" if dy > 0 else "up") if abs(dy) > abs(dx) else ("right" if dx > 0 else "left")
  return color, kind, direction


def statement_holds(statement: str, found=None, motion=None) -> bool:
  """Whether an answer of the world is true of an image's shapes `found` or a video's `motion`."""
  if m := re.fullmatch(r"The (\w+) moves (\w+)\.", statement):
    return motion[1:] == m.groups()
  if m := re.fullmatch(r"The (\w+) is (\w+)\.", statement):
    return (motion[1::-1] == m.groups()) if motion else found.get(m.group(2), ("",))[0] == m.group(1)
  if m := re.fullmatch(r"The (\w+) shape is a (\w+)\.", statement):
    return found.get(m.group(1), ("",))[0] == m.group(2)
  m = re.fullmatch(r"There (?:is|are) (\d) shapes?\.", statement)
  return len(found) == int(m.group(1))


def test_generation_ground_truth_is_in_the_pixels(root, monkeypatch):
  monkeypatch.chdir(root)
  data = records(root)
  for r in data["image_generation_pair"]:
    caption = re.findall(r"\[(.*?)\]", r["conversations"][0]["value"])[-1]
    holds = [caption_holds(caption, blobs(p)) for p in r["images"]]
    assert holds[r["winner"] - 1] and not holds[2 - r["winner"]]
  for r in data["image_generation_point"]:
    found = blobs(r["image"])
    for word, kind, value in re.findall(r"(\w+) \((\w+)\): (\d)", r["conversations"][1]["value"]):
      present = word in found if kind == "color" else word in {k for k, _ in found.values()}
      assert present == (value == "1"), (r["id"], word)
  for r in data["video_generation_pair"]:
    caption = re.findall(r"\[(.*?)\]", r["conversations"][0]["value"])[-1]
    want = tuple(re.fullmatch(r"an? (\w+) (\w+) moving (\w+)", caption).groups())
    videos = [video_motion(r["images"][:4]), video_motion(r["images"][4:])]
    assert videos[r["winner"] - 1] == want and videos[2 - r["winner"]] != want
  for r in data["video_generation_point"]:
    caption = re.findall(r"\[(.*?)\]", r["conversations"][0]["value"])[-1]
    want = re.fullmatch(r"an? (\w+) (\w+) moving (\w+)", caption).groups()
    right = sum(a == b for a, b in zip(video_motion(media_paths(r)), want))
    assert r["score"] == 1 + 3 * right


def test_understanding_ground_truth_is_in_the_pixels(root, monkeypatch):
  monkeypatch.chdir(root)
  for task in ("image_understanding", "video_understanding"):
    data = records(root)
    for r in data[f"{task}_pair"] + data[f"{task}_point"]:
      frames = media_paths(r)
      seen = {"motion": video_motion(frames)} if task == "video_understanding" else {"found": blobs(frames[0])}
      responses = re.findall(r"\[(.*?)\]", r["conversations"][0]["value"])[1:]
      truths = [statement_holds(response, **seen) for response in responses]
      if r["mode"] == "pair":
        assert truths == [r["winner"] == 1, r["winner"] == 2], r["id"]
      else:
        assert r["score"] == prompts.template(task, "point").score_range[truths[0]], r["id"]


def test_preference_records_choose_what_the_pixels_show(tmp_path, monkeypatch):
  counts = shapes.generate_preference(tmp_path, num_per_task=24, seed=3)
  assert counts == {"image_understanding_dpo": 24, "video_understanding_dpo": 24}
  again = tmp_path / "again"
  shapes.generate_preference(again, num_per_task=24, seed=3)
  assert (tmp_path / "train/video_understanding_dpo.json").read_bytes() == \
      (again / "train/video_understanding_dpo.json").read_bytes()
  mixture = yaml.safe_load((tmp_path / "train_dpo.yaml").read_text())["datasets"]
  assert [d["json_path"] for d in mixture] == ["train/image_understanding_dpo.json", "train/video_understanding_dpo.json"]
  monkeypatch.chdir(tmp_path)
  for task in ("image_understanding", "video_understanding"):
    for r in json.loads((tmp_path / f"train/{task}_dpo.json").read_text()):
      frames = media_paths(r)
      seen = {"motion": video_motion(frames)} if task == "video_understanding" else {"found": blobs(frames[0])}
      assert statement_holds(r["chosen"], **seen) and not statement_holds(r["rejected"], **seen), r["id"]


def test_tokenizer_encodes_every_record_and_decodes_it_back(root):
  tokenizer = shapes.shapes_tokenizer()
  assert 300 <= tokenizer.get_vocab_size() <= 2000
  for name, data in records(root).items():
    for r in data[:4]:
      text = "".join(f"<|im_start|>{role}\n{m['value']}<|im_end|>\n"
                     for role, m in zip(("user", "assistant"), r["conversations"]))
      ids = tokenizer.encode(CHAT + text, add_special_tokens=False).ids
      assert tokenizer.token_to_id(shapes.UNKNOWN_TOKEN) not in ids, name
      assert tokenizer.decode(ids, skip_special_tokens=False) == CHAT + text


def test_tokenizer_special_tokens_newline_and_unknown_words(tmp_path):
  tokenizer = shapes.shapes_tokenizer()
  special = {t: tokenizer.token_to_id(t) for t in (*shapes.SPECIAL_TOKENS, shapes.IMAGE_TOKEN, "\n")}
  assert None not in special.values() and len(set(special.values())) == 5
  ids = tokenizer.encode(CHAT, add_special_tokens=False).ids
  assert ids.count(special["<|im_start|>"]) == 2 and ids.count(special["<|im_end|>"]) == 2
  assert ids.count(special["<image>"]) == 1 and ids.count(special["\n"]) == 5
  assert tokenizer.encode("\n", add_special_tokens=False).ids == [special["\n"]]
  assert tokenizer.decode(ids) == CHAT.replace("<|im_start|>", "").replace("<|im_end|>", "")
  unknown = tokenizer.encode("a red zebra", add_special_tokens=False)
  assert unknown.ids[-1] == tokenizer.token_to_id(shapes.UNKNOWN_TOKEN) == 0
  assert tokenizer.decode(unknown.ids) == "a red[UNK]"
  tokenizer.save(str(tmp_path / "tokenizer.json"))
  loaded = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
  assert loaded.encode(CHAT, add_special_tokens=False).ids == ids
  assert loaded.to_str() == shapes.shapes_tokenizer().to_str()


def test_base_dialogues_describe_and_answer_what_the_pixels_show(tmp_path, monkeypatch):
  counts = shapes_base.generate_base(tmp_path, num_per_kind=24, seed=5)
  tokenizer = shapes.shapes_tokenizer()
  assert counts == dict.fromkeys(("base_image", "base_video", "base_image_pair", "base_video_pair"), 24)
  again = tmp_path / "again"
  shapes_base.generate_base(again, num_per_kind=24, seed=5)
  assert files(tmp_path / "train") == files(again / "train")
  mixture = yaml.safe_load((tmp_path / "train_base.yaml").read_text())["datasets"]
  assert [d["json_path"] for d in mixture] == [f"train/{kind}.json" for kind in counts]
  monkeypatch.chdir(tmp_path)
  for kind in counts:
    for r in json.loads((tmp_path / f"train/{kind}.json").read_text()):
      turns = r["conversations"]
      assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
      opening = "<image>\n <image>\n" if kind == "base_image_pair" else "<image>\n"
      assert turns[0]["value"].startswith(opening) and turns[0]["value"].count("<image>") == opening.count("<image>")
      assert all("<image>" not in t["value"] for t in turns[1:])
      frames = media_paths(r)
      if kind == "base_image_pair":
        described = [blobs(path) for path in frames]
      elif kind == "base_video_pair":
        described = [video_motion(frames[:4]), video_motion(frames[4:])]
      else:
        described = [video_motion(frames) if kind == "base_video" else blobs(frames[0])]
      for n, seen in enumerate(described):
        caption = turns[2 * n + 1]["value"]
        if kind.startswith("base_video"):
          assert re.fullmatch(r"an? (\w+) (\w+) moving (\w+)", caption).groups() == seen, r["id"]
        else:
          assert caption_holds(caption, seen), r["id"]
      which = {(True, True): "Both.", (True, False): "The first.", (False, True): "The second.",
               (False, False): "Neither."}
      for question, answer in zip(turns[4::2], turns[5::2]) if kind.endswith("pair") else ():
        if kind == "base_image_pair":
          color, shape = re.fullmatch(r"Which image has an? (\w+) (\w+)\?", question["value"]).groups()
          shown = tuple(seen.get(color, ("",))[0] == shape for seen in described)
        else:
          asked = re.fullmatch(r"Which video shows an? (\w+) (\w+) moving (\w+)\?", question["value"]).groups()
          shown = tuple(seen == asked for seen in described)
        assert answer["value"] == which[shown], (r["id"], question["value"])
      text = "".join(f"<|im_start|>{role}\n{m['value']}<|im_end|>\n" for role, m in zip(("user", "assistant") * 4,
                                                                                        turns))
      assert tokenizer.token_to_id(shapes.UNKNOWN_TOKEN) not in tokenizer.encode(text).ids, r["id"]
      if kind in ("base_image", "base_video"):
        seen = {"motion": described[0]} if kind == "base_video" else {"found": described[0]}
        for question, answer in zip(turns[2::2], turns[3::2]):
          question, answer = question["value"], answer["value"]
          if m := re.fullmatch(r"Is there an? (\w+)\?", question):
            kinds = {seen["motion"][1]} if "motion" in seen else {k for k, _ in seen["found"].values()}
            assert answer == ("Yes." if m.group(1) in kinds else "No."), r["id"]
          elif m := re.fullmatch(r"Is anything (\w+)\?", question):
            colors = {seen["motion"][0]} if "motion" in seen else set(seen["found"])
            assert answer == ("Yes." if m.group(1) in colors else "No."), r["id"]
          else:
            assert statement_holds(answer, **seen), (r["id"], question, answer)


def test_tokenizer_holds_each_official_wording_in_a_few_tokens(root):
  tokenizer = shapes.shapes_tokenizer()
  for task in prompts.TASKS:
    for mode in prompts.MODES:
      for variant in prompts.variants(task, mode):
        template = prompts.template(task, mode, variant)
        text = prompts.render(task, mode, variant, **dict.fromkeys(template.fields, "red"))
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert len(ids) <= 4 * len(template.fields) + 3, (task, mode, variant, len(ids))
        assert tokenizer.decode(ids) == text
        for verdict in (template.verdicts or {}).values():
          assert len(tokenizer.encode(verdict, add_special_tokens=False).ids) == 1, verdict
  # A verdict inside an answer's own words is still read word by word around it.
  ids = tokenizer.encode("The red Image 1 is better than Image 2. Final Score: 3", add_special_tokens=False).ids
  assert tokenizer.decode(ids) == "The red Image 1 is better than Image 2. Final Score: 3"
