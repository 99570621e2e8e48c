"""CLIP's byte-level BPE tokenizer (SDXL's `tokenizer/` and `tokenizer_2/`), built with the `tokenizers` library.

The folders diffusers ships hold `vocab.json` and `merges.txt` (transformers 5 saves a `tokenizer.json` instead,
read as it is); from them this builds the pipeline transformers' `CLIPTokenizer` does: NFC, whitespace runs → one space, lower-case; CLIP's split pattern, byte-level
mapping, BPE with the `</w>` end-of-word suffix; `<|startoftext|>` … `<|endoftext|>` around every prompt. Prompts
are cut to 77 tokens (ends included) and padded with the folder's pad token: `<|endoftext|>` for SDXL's first
tokenizer, `!` (id 0) for the second. `OpenCLIPTokenizer` is `open_clip.tokenize` on the same vocabulary.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Sequence

import ftfy
import numpy as np
import tokenizers
from tokenizers import Regex, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

from ureward_jax.errors import UserError

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# CLIP's word split: the special tokens, English contractions, letter runs, single digits, other symbol runs.
SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


class CLIPTokenizer:
  """prompts → (B, max_length) int32 ids, padded to `max_length` as SDXL's pipelines ask (`padding="max_length"`)."""
  # None: the folder's pad token, matched in the text as a special token (transformers' behaviour).
  fixed_pad_token: str | None = None

  def __init__(self, folder: str | Path):
    folder = Path(folder)
    settings = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):   # the latter wins, as in transformers
      if (folder / name).exists():
        settings.update(json.loads((folder / name).read_text()))
    if (folder / "tokenizer.json").exists():   # what transformers 5 saves: the same pipeline, serialised
      tok = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    elif (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
      tok = _from_vocab_and_merges(folder)
    else:
      raise FileNotFoundError(f"{folder} is not a CLIP tokenizer folder: it needs vocab.json and merges.txt "
                              "(or tokenizer.json)")
    self.max_length = int(settings.get("model_max_length", 77))
    if self.max_length > 10**6:   # transformers' "no limit" sentinel; CLIP's position table has 77 rows
      self.max_length = 77
    pad = self.fixed_pad_token or _token(settings.get("pad_token", EOS))
    ids = {token: tok.token_to_id(token) for token in (BOS, EOS, pad)}
    missing = [token for token, token_id in ids.items() if token_id is None]
    if missing:
      raise UserError(f"{folder}: the vocabulary has no {missing} token")
    self.bos_id, self.eos_id, self.pad_id = ids[BOS], ids[EOS], ids[pad]
    # As in transformers, the special tokens (the pad token included: `!` for SDXL's second tokenizer) are matched
    # in the text before anything else, so every "!" of a prompt becomes id 0 there.
    specials = (BOS, EOS) if self.fixed_pad_token else (BOS, EOS, pad)
    tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False) for t in specials])
    tok.post_processor = processors.RobertaProcessing((EOS, self.eos_id), (BOS, self.bos_id), trim_offsets=False,
                                                      add_prefix_space=False)
    tok.enable_truncation(self.max_length)
    tok.enable_padding(length=self.max_length, pad_id=self.pad_id, pad_token=pad)
    self._tokenizer = tok

  def __call__(self, prompts: Sequence[str]) -> np.ndarray:
    if isinstance(prompts, str):
      raise TypeError("pass a list of prompts, not a single string")
    return np.asarray([e.ids for e in self._tokenizer.encode_batch(list(prompts))], np.int32)


class OpenCLIPTokenizer(CLIPTokenizer):
  """`open_clip.tokenize`, VideoCrafter2's text encoder's tokenizer, on a CLIP vocabulary folder. Each prompt is
  cleaned first as its `basic_clean` does: `ftfy.fix_text` (curly quotes and apostrophes made straight, so "dog’s"
  splits as "dog" + "'s"; mojibake repaired; ligatures and full-width letters unfolded), then HTML entities
  unescaped twice. Padded with id 0 (`!`), which, unlike transformers' pad token, is not matched in the text (a
  prompt's "!" stays `!</w>`)."""
  fixed_pad_token = "!"

  def __call__(self, prompts: Sequence[str]) -> np.ndarray:
    if isinstance(prompts, str):
      raise TypeError("pass a list of prompts, not a single string")
    return super().__call__([html.unescape(html.unescape(ftfy.fix_text(p))).strip() for p in prompts])


def _from_vocab_and_merges(folder: Path) -> tokenizers.Tokenizer:
  vocab = json.loads((folder / "vocab.json").read_text())
  merges = [tuple(line.split()) for line in (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
            if line and not line.startswith("#version")]
  tok = tokenizers.Tokenizer(BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="</w>",
                                 fuse_unk=False, unk_token=EOS))
  tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                         normalizers.Lowercase()])
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(SPLIT), behavior="removed", invert=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False)])
  tok.decoder = decoders.ByteLevel()
  return tok


def _token(value) -> str:
  """A special token as `tokenizer_config.json` writes it: a string or an AddedToken dict."""
  return value["content"] if isinstance(value, dict) else value
