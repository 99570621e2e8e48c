"""The `qwen_1_5` chat format of LLaVA-NeXT, tokenised, with the training label mask of `preprocess_qwen`.

Every message is rendered `<|im_start|>{role}\\n{content}<|im_end|>\\n` and tokenised on its own, after a system
message "You are a helpful assistant.". Each `<image>` in the text becomes `IMAGE_MARKER` (one per image, video or
frame), to be expanded into the item's visual tokens by `feature_layout`.

Labels (LLaVA-NeXT's rule): the whole assistant message, and also every `\\n` token (id 198 in Qwen2),
`<|im_start|>` and `<|im_end|>` anywhere in the sequence, system and user turns included; everything else IGNORE.
`assistant_only=True` labels just the assistant messages. `tokenize_preference` gives a DPO pair the labels of
LLaVA-NeXT's `train_dpo.py::preprocess_qwen` instead.

Tokenizers are `tokenizers.Tokenizer` objects (`tokenizer.json` of a checkpoint folder, or the shapes world's).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tokenizers

from ureward_jax.errors import UserError
from ureward_jax.processing.feature_layout import IMAGE_MARKER

SYSTEM_MESSAGE = "You are a helpful assistant."
IMAGE_TOKEN = "<image>"
IGNORE = -100  # label of positions that do not count (prompt, images, padding), as in PyTorch
ROLES = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant", "system": "system"}


def _token_id(tokenizer: tokenizers.Tokenizer, token: str) -> int:
  token_id = tokenizer.token_to_id(token)
  if token_id is None:
    raise UserError(f"the tokenizer has no {token!r} token; it is not a Qwen2 (qwen_1_5) chat tokenizer")
  return token_id


def _message_ids(tokenizer: tokenizers.Tokenizer, role: str, content: str) -> list[int]:
  return tokenizer.encode(f"<|im_start|>{role}\n{content}<|im_end|>\n", add_special_tokens=False).ids


def _newline_id(tokenizer: tokenizers.Tokenizer) -> int:
  ids = tokenizer.encode("\n", add_special_tokens=False).ids
  if len(ids) != 1:
    raise UserError(f"the tokenizer splits a newline into {len(ids)} tokens; a Qwen2 chat tokenizer has one")
  return ids[0]


def _markers(tokenizer: tokenizers.Tokenizer, ids: list[int]) -> list[int]:
  image = tokenizer.token_to_id(IMAGE_TOKEN)
  return ids if image is None else [IMAGE_MARKER if i == image else i for i in ids]


def tokenize_conversation(tokenizer: tokenizers.Tokenizer, conversations: Sequence[dict],
                          system_message: str = SYSTEM_MESSAGE,
                          assistant_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """(input ids with IMAGE_MARKER at each `<image>`, labels), both (T,) int32, for a LLaVA `conversations` list.

  conversations: [{"from": "human" | "gpt", "value": text}, ...] (or "role"/"content"); a leading non-human
  message is dropped, as LLaVA-NeXT does. Raises ValueError for an unknown role.
  """
  structural = {_newline_id(tokenizer), _token_id(tokenizer, "<|im_start|>"), _token_id(tokenizer, "<|im_end|>")}
  messages = [(m.get("from", m.get("role")), m.get("value", m.get("content"))) for m in conversations]
  if messages and ROLES.get(messages[0][0]) != "user":
    messages = messages[1:]
  ids = _message_ids(tokenizer, "system", system_message)
  labels = [IGNORE] * len(ids)
  for role, content in messages:
    if role not in ROLES:
      raise UserError(f"unknown conversation role {role!r}; expected one of {sorted(ROLES)}")
    role = ROLES[role]
    message = _message_ids(tokenizer, role, content)
    ids += message
    labels += message if role == "assistant" else [IGNORE] * len(message)
  if not assistant_only:
    labels = [i if i in structural else label for i, label in zip(ids, labels)]
  ids = _markers(tokenizer, ids)
  labels = [IGNORE if i == IMAGE_MARKER else label for i, label in zip(ids, labels)]
  return np.asarray(ids, np.int32), np.asarray(labels, np.int32)


def prompt_ids(tokenizer: tokenizers.Tokenizer, user_text: str, system_message: str = SYSTEM_MESSAGE) -> np.ndarray:
  """Ids of a judging prompt: system and user messages, then `<|im_start|>assistant\\n` to generate from."""
  ids = _message_ids(tokenizer, "system", system_message) + _message_ids(tokenizer, "user", user_text)
  ids += tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False).ids
  return np.asarray(_markers(tokenizer, ids), np.int32)


def _dpo_labels(tokenizer: tokenizers.Tokenizer, role: str, ids: list[int]) -> list[int]:
  """Every message's `<|im_start|>`, `<|im_end|>` and last `\n`; also the answer after `<|im_start|>assistant\n`."""
  if role != "assistant":
    return [ids[0]] + [IGNORE] * (len(ids) - 3) + ids[-2:]
  head = len(tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False).ids)
  return [ids[0]] + [IGNORE] * (head - 1) + ids[head:]


def tokenize_preference(tokenizer: tokenizers.Tokenizer, prompt: str, chosen: str, rejected: str,
                        system_message: str = SYSTEM_MESSAGE) -> list[tuple[np.ndarray, np.ndarray]]:
  """[(ids, labels) of the chosen conversation, (ids, labels) of the rejected one], (T,) int32 each.

  The user message is `prompt` (with its `<image>` markers), the answer `chosen` or `rejected`. Labels follow
  LLaVA-NeXT's DPO rule: the whole answer plus each message's `<|im_start|>`, `<|im_end|>` and final newline;
  the prompt-side labels are the same in both and cancel in the DPO margin.
  """
  out = []
  for answer in (chosen, rejected):
    ids, labels = [], []
    for role, content in (("system", system_message), ("user", prompt), ("assistant", answer)):
      message = _message_ids(tokenizer, role, content)
      ids += message
      labels += _dpo_labels(tokenizer, role, message)
    ids = _markers(tokenizer, ids)
    labels = [IGNORE if i == IMAGE_MARKER else label for i, label in zip(ids, labels)]
    out.append((np.asarray(ids, np.int32), np.asarray(labels, np.int32)))
  return out

