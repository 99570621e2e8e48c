"""Chat tokenisation equals LLaVA-NeXT's `preprocess_qwen`, restated here on transformers' chat templating."""

import numpy as np
import pytest
import tokenizers
import transformers

from ureward_jax.processing.chat import IGNORE, prompt_ids, tokenize_conversation, tokenize_preference
from ureward_jax.processing.feature_layout import IMAGE_MARKER

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = ["You are a helpful assistant.", "Image 1 is better than Image 2.", "Text Caption: [a red circle]",
          "What colour is the square?\nThe square is blue. Final Score: 4"] * 20

CONVERSATION = [
    {"from": "human", "value": "<image>\n<image>\nWhich image fits the caption?\nText Caption: [a red circle]"},
    {"from": "gpt", "value": "Image 1 is better than Image 2."},
    {"from": "human", "value": "Why?"},
    {"from": "gpt", "value": "The circle is red.\nFinal Score: 4"},
]


@pytest.fixture(scope="module")
def tokenizer():
  """A small byte-level BPE like Qwen2's: `\\n` is one ordinary token, the chat markers and `<image>` are added."""
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL,
                                           initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(CORPUS, trainer)
  tok.add_special_tokens(["<image>"])
  return tok


def llava_next_preprocess_qwen(tok, conversation, system="You are a helpful assistant."):
  """LLaVA-NeXT's rule: messages templated one by one, assistant turns labelled, then 198 / im_start / im_end
  unmasked everywhere and `<image>` replaced by -200."""
  hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok)
  hf.chat_template = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] "
                      "+ '<|im_end|>' + '\n'}}{% endfor %}")
  template = lambda role, content: list(hf.apply_chat_template([{"role": role, "content": content}], tokenize=True,
                                                               return_dict=False))
  ids = template("system", system)
  labels = [IGNORE] * len(ids)
  for message in conversation:
    role = {"human": "user", "gpt": "assistant"}[message["from"]]
    encoded = template(role, message["value"])
    ids += encoded
    labels += encoded if role == "assistant" else [IGNORE] * len(encoded)
  unmask = {hf("\n").input_ids[0], hf.convert_tokens_to_ids("<|im_start|>"), hf.convert_tokens_to_ids("<|im_end|>")}
  image = hf.convert_tokens_to_ids("<image>")
  labels = [i if i in unmask else label for i, label in zip(ids, labels)]
  return [IMAGE_MARKER if i == image else i for i in ids], labels


def test_tokens_and_labels_equal_llava_next(tokenizer):
  ids, labels = tokenize_conversation(tokenizer, CONVERSATION)
  want_ids, want_labels = llava_next_preprocess_qwen(tokenizer, CONVERSATION)
  np.testing.assert_array_equal(ids, want_ids)
  np.testing.assert_array_equal(labels, want_labels)
  assert list(ids).count(IMAGE_MARKER) == 2
  assert np.all(labels[ids == IMAGE_MARKER] == IGNORE)
  # The structural tokens of the system and user turns are learned too, as in the original.
  newline = tokenizer.encode("\n").ids[0]
  assert labels[ids.tolist().index(newline)] == newline


def test_assistant_only_labels_just_the_answers(tokenizer):
  ids, labels = tokenize_conversation(tokenizer, CONVERSATION, assistant_only=True)
  learned = tokenizer.decode([int(i) for i in labels if i != IGNORE], skip_special_tokens=False)
  assert learned == ("<|im_start|>assistant\nImage 1 is better than Image 2.<|im_end|>\n"
                     "<|im_start|>assistant\nThe circle is red.\nFinal Score: 4<|im_end|>\n")


def test_leading_assistant_message_is_dropped_and_unknown_role_raises(tokenizer):
  ids, _ = tokenize_conversation(tokenizer, [{"from": "gpt", "value": "stray"}] + CONVERSATION)
  np.testing.assert_array_equal(ids, tokenize_conversation(tokenizer, CONVERSATION)[0])
  with pytest.raises(ValueError, match="unknown conversation role 'robot'"):
    tokenize_conversation(tokenizer, [{"from": "human", "value": "hi"}, {"from": "robot", "value": "x"}])


def test_prompt_ends_with_the_assistant_header(tokenizer):
  ids = prompt_ids(tokenizer, "<image>\nText Caption: [a red circle]")
  assert ids[list(ids).index(IMAGE_MARKER) - 1] == tokenizer.encode("\n").ids[0]
  text = tokenizer.decode([int(i) for i in ids if i != IMAGE_MARKER], skip_special_tokens=False)
  assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
  assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")


def test_preference_labels_follow_llava_next_dpo(tokenizer):
  """train_dpo.py::preprocess_qwen: each message labels <|im_start|>, <|im_end|> and its last newline; the answer
  is labelled after "<|im_start|>assistant\\n"."""
  hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer)
  start, end = hf.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
  newline = hf("\n").input_ids[0]
  prompt = "<image>\nWhich is right?\nText Caption: [a red circle]"
  (chosen_ids, chosen_labels), (rejected_ids, rejected_labels) = tokenize_preference(
      tokenizer, prompt, "Image 1 is better than Image 2.", "Both images are equally good.")
  want = []
  for role, content in (("system", "You are a helpful assistant."), ("user", prompt),
                        ("assistant", "Image 1 is better than Image 2.")):
    head = hf(f"<|im_start|>{role}\n", add_special_tokens=False).input_ids
    body = hf(content, add_special_tokens=False).input_ids
    want += [start] + [IGNORE] * (len(head) - 1) + (body if role == "assistant" else [IGNORE] * len(body))
    want += [end, newline]
  assert chosen_labels.tolist() == want
  assert chosen_ids.tolist().count(IMAGE_MARKER) == 1
  prompt_part = len(want) - len(hf("Image 1 is better than Image 2.", add_special_tokens=False).input_ids) - 2
  assert rejected_labels[:prompt_part].tolist() == chosen_labels[:prompt_part].tolist()
  assert rejected_ids[:prompt_part].tolist() == chosen_ids[:prompt_part].tolist()
