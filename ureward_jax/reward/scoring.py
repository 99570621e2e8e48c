"""Judging rows with the reward model: verdict and score probabilities in one forward pass, or greedy answers.

method="logits" (default): the prompt and every candidate answer in one teacher-forced forward pass. The candidates
are token sequences merged into a trie and placed after the prompt; a trie token attends to the prompt and to its
own ancestors only, at the position it would have right after the prompt, so its output is that of the prompt
followed by its candidate alone, and shared prefixes ("Image", "Final Score:") are computed once.
  pair:  p(k) ∝ p(verdict sentence k | prompt) over the template's verdicts: 1, 2 and, where the wording names one,
         the tie (0). The winner is the most probable.
  point: p(v) ∝ p(answer_prefix + str(v) | prompt) · p(no further digit), for each integer v of the template's
         range; score = Σ v·p(v) / Σ p(v), and `mass` = Σ p(v), the model's belief that its answer is in range.
         The answer starts at "Final Score: ", skipping the explanation the generate path would write first.
method="generate": greedy answers, read by `parse_pairwise` / `parse_pointwise`; an unreadable answer gives
None and is counted, never turned into a winner or a 0.
swap (pairs): judge both orders. logits: the probabilities of the two orders averaged (each order's "1" being the
other's "2"); generate: the verdict when both orders agree, a tie when they contradict each other.

The official scripts decode greedily (up to 4,096 tokens) and read the text; logits scoring is this library's.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tokenizers

from ureward_jax.errors import UserError, row_error
from ureward_jax.models.llava_onevision import LlavaOnevision
from ureward_jax.nn.attention import causal_mask
from ureward_jax.processing.chat import prompt_ids
from ureward_jax.processing.feature_layout import splice_markers
from ureward_jax.reward import inputs, prompts
from ureward_jax.reward.parsing import parse_pairwise, parse_pointwise
from ureward_jax.runners.llava import (
  LlavaOnevisionForConditionalGeneration,
  image_processor,
  layout_arrays,
  layout_config,
)

METHODS = ("logits", "generate")
END_TOKENS = ("<|im_end|>", "<|endoftext|>")


@dataclasses.dataclass(frozen=True)
class Continuations:
  """Candidate answers as a trie of N token nodes.

  tokens (N,): each node's token; parents (N,): its parent node, -1 for a first token; ends (C,): each candidate's
  last node; depth (N,): 0 for first tokens.
  """
  tokens: np.ndarray
  parents: np.ndarray
  ends: np.ndarray

  @classmethod
  def build(cls, sequences: Sequence[Sequence[int]]) -> "Continuations":
    index: dict[tuple[int, ...], int] = {}
    tokens, parents, ends = [], [], []
    for sequence in sequences:
      if not len(sequence):
        raise ValueError("a candidate answer tokenises to nothing")
      parent = -1
      for j in range(len(sequence)):
        prefix = tuple(int(t) for t in sequence[:j + 1])
        if prefix not in index:
          index[prefix] = len(tokens)
          tokens.append(prefix[-1])
          parents.append(parent)
        parent = index[prefix]
      ends.append(parent)
    return cls(np.asarray(tokens, np.int32), np.asarray(parents, np.int32), np.asarray(ends, np.int32))

  @property
  def depth(self) -> np.ndarray:
    depth = np.zeros(len(self.tokens), np.int32)
    for i, parent in enumerate(self.parents):   # parents precede their children
      depth[i] = 0 if parent < 0 else depth[parent] + 1
    return depth

  @property
  def visible(self) -> np.ndarray:
    """(N, N) bool: node i may attend to node j, its ancestor or itself."""
    out = np.eye(len(self.tokens), dtype=bool)
    for i, parent in enumerate(self.parents):
      if parent >= 0:
        out[i] |= out[parent]
    return out

  @property
  def paths(self) -> np.ndarray:
    """(C, N) float32: 1 where a node lies on a candidate's path."""
    visible = self.visible
    return visible[self.ends].astype(np.float32)


def trie_logprobs(module: LlavaOnevision, params: Any, input_ids: jax.Array, attention_mask: jax.Array,
                  positions: jax.Array, pixels, visual_src, visual_weight, visual_dest, trie_tokens: jax.Array,
                  trie_parents: jax.Array, trie_depth: jax.Array, trie_visible: jax.Array,
                  continue_tokens: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Log-probabilities of a trie of continuations after each prompt, in one forward pass (jittable).

  input_ids, attention_mask, positions (B, T): left-padded prompts with placeholders; the visual layout in the
  whole-batch form of `LlavaOnevision.embed` (flat destinations in B·T); the trie's tokens, parents, depth (N,) and
  visibility (N, N). continue_tokens: (V,) bool, the tokens that would extend a candidate (digits, for scores).
  Returns node_logp (B, N) fp32, log p(node token | prompt and its ancestors), and stop_logp (B, 1 + N) fp32,
  log p(no continue token next) after the prompt (index 0) and after each node (1 + n); zeros without
  continue_tokens.
  """
  batch, length = input_ids.shape
  nodes = trie_tokens.shape[0]
  valid = attention_mask.astype(bool)
  prompt_rows = jnp.concatenate([causal_mask(jnp.arange(length), valid), jnp.zeros((batch, 1, length, nodes), bool)],
                                axis=-1)
  trie_rows = jnp.concatenate([jnp.broadcast_to(valid[:, None, None, :], (batch, 1, nodes, length)),
                               jnp.broadcast_to(trie_visible[None, None], (batch, 1, nodes, nodes))], axis=-1)
  mask = jnp.concatenate([prompt_rows, trie_rows], axis=2)
  trie_positions = positions[:, -1:] + 1 + trie_depth[None, :]

  def forward(m: LlavaOnevision):
    prompt = m.embed(input_ids, pixels, visual_src, visual_weight, visual_dest)
    trie = jnp.broadcast_to(m.language_model.embed(trie_tokens)[None], (batch, nodes, prompt.shape[-1]))
    hidden, _ = m.language_model(jnp.concatenate([prompt, trie.astype(prompt.dtype)], axis=1),
                                 jnp.concatenate([positions, trie_positions], axis=1), mask, return_hidden=True)
    # Contexts: the prompt's last token (predicts first tokens), then every node (predicts its children).
    return m.language_model.logits(hidden[:, length - 1:])

  logits = module.apply({"params": params}, method=forward).astype(jnp.float32)
  logp = jax.nn.log_softmax(logits, axis=-1)
  node_logp = jnp.take_along_axis(logp[:, trie_parents + 1], trie_tokens[None, :, None], axis=-1)[..., 0]
  if continue_tokens is None:
    return node_logp, jnp.zeros(logp.shape[:2], jnp.float32)
  continued = jax.nn.logsumexp(jnp.where(continue_tokens, logp, -jnp.inf), axis=-1)
  return node_logp, jnp.log(-jnp.expm1(jnp.minimum(continued, -1e-30)))


def end_token_ids(tokenizer: tokenizers.Tokenizer) -> list[int]:
  """The ids of the chat format's end tokens that the tokenizer has."""
  return [i for i in (tokenizer.token_to_id(t) for t in END_TOKENS) if i is not None]


def answer_text(tokenizer: tokenizers.Tokenizer, tokens: Sequence[int], end_ids: Sequence[int]) -> str:
  """The text of generated `tokens` up to (without) the first end token."""
  tokens = [int(t) for t in tokens]
  ends = [j for j, t in enumerate(tokens) if t in end_ids]
  return tokenizer.decode(tokens[:ends[0]] if ends else tokens)


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


@dataclasses.dataclass
class _Batch:
  input_ids: np.ndarray
  attention_mask: np.ndarray
  positions: np.ndarray
  pixels: np.ndarray | None
  visual_src: np.ndarray | None
  visual_weight: np.ndarray | None
  visual_dest: np.ndarray | None
  visuals: list


class Judge:
  """Judges rows of one task × mode with a loaded reward model (see the module docstring and `inputs`).

  model: `ureward_jax.load(dir)`; tokenizer: the checkpoint's `tokenizer.json`. `judge(rows)` returns one result
  dict per row:
    pairs   {"winner": 1 | 2 | 0 (tie) | None} with, for logits, "probs" and "logprobs" (each verdict sentence's
            summed log-probability) keyed "1", "2"[, "tie"], or for generate "text";
    points  {"score": float | None} with "mass" (logits) or "text" (generate);
  a row that cannot be judged gets {"error": message} and the others go on.
  """

  def __init__(self, model: LlavaOnevisionForConditionalGeneration, tokenizer: tokenizers.Tokenizer, task: str,
               mode: str, *, method: str = "logits", variant: str = "default", swap: bool = False,
               batch_size: int = 4, max_new_tokens: int = 1024, options: inputs.InputOptions = inputs.InputOptions(),
               answer_prefix: str = "Final Score: "):
    self.template = prompts.template(task, mode, variant)   # checks task, mode and variant
    if method not in METHODS:
      raise UserError(f"unknown method {method!r}; expected one of {METHODS}")
    if swap and mode != "pair":
      raise UserError("swap debiasing needs pairs (mode='pair')")
    if batch_size < 1 or max_new_tokens < 1:
      raise UserError(f"batch_size and max_new_tokens must be positive, got {batch_size}, {max_new_tokens}")
    self.model, self.tokenizer, self.task, self.mode = model, tokenizer, task, mode
    self.method, self.variant, self.swap, self.batch_size = method, variant, swap, batch_size
    self.max_new_tokens, self.options = max_new_tokens, options
    self.processor = image_processor(model.config)
    self.end_ids = end_token_ids(tokenizer)
    if mode == "pair":
      self.labels = sorted(self.template.verdicts, key=lambda k: (k == 0, k))   # 1, 2, then the tie
      texts = [self.template.verdicts[k] for k in self.labels]
    else:
      low, high = self.template.score_range
      self.labels = list(range(low, high + 1))
      texts = [f"{answer_prefix}{v}" for v in self.labels]
    self.continuations = Continuations.build([tokenizer.encode(t, add_special_tokens=False).ids for t in texts])

  @functools.cached_property
  def _continue_tokens(self) -> np.ndarray | None:
    """(V,) bool: the tokens that would extend a number (their text is digits only); None for pairs."""
    if self.mode == "pair":
      return None
    vocab = self.model.config.text.vocab_size
    out = np.zeros(vocab, bool)
    for token, i in self.tokenizer.get_vocab().items():
      if i < vocab and any(c.isdigit() for c in token):
        out[i] = self.tokenizer.decode([i]).isdigit()
    return out

  @functools.cached_property
  def _score(self):
    trie = self.continuations
    arrays = [jnp.asarray(a) for a in (trie.tokens, trie.parents, trie.depth, trie.visible)]
    continue_tokens = None if self._continue_tokens is None else jnp.asarray(self._continue_tokens)
    return jax.jit(lambda params, *batch: trie_logprobs(self.model.module, params, *batch, *arrays,
                                                        continue_tokens=continue_tokens))

  def _batch(self, prepared: list[tuple[str, list]]) -> _Batch:
    """Left-padded prompts (rows padded to batch_size, length to a multiple of 64) and their visual layout."""
    config = self.model.config
    rows = [prompt_ids(self.tokenizer, text) for text, _ in prepared]
    rows += [rows[-1][-1:]] * (self.batch_size - len(rows))   # filler rows: one token, results dropped
    visuals = [v for _, vs in prepared for v in vs]
    ids, mask, positions = splice_markers(rows, [item for item, _ in visuals], layout_config(config),
                                          config.image_token_id, config.video_token_id)
    pad = _round_up(ids.shape[1], 64) - ids.shape[1]
    ids, mask, positions = (np.pad(a, ((0, 0), (pad, 0))) for a in (ids, mask, positions))
    pixels, src, weight, dest = layout_arrays(config, ids, visuals)
    if pixels is not None:
      # Patches and visual tokens padded to coarse sizes so batches share compiled shapes; padding rows land
      # past the end (dropped), and the newline's index moves to the end of the padded feature table.
      per_patch = config.vision.tokens_per_side**2
      patches = _round_up(len(pixels), 8)
      src = np.where(src == len(pixels) * per_patch, patches * per_patch, src)
      pixels = np.pad(pixels, ((0, patches - len(pixels)), (0, 0), (0, 0), (0, 0)))
      tokens = _round_up(len(src), 256)
      src, weight = (np.pad(a, ((0, tokens - len(a)), (0, 0))) for a in (src, weight))
      dest = np.pad(dest, (0, tokens - len(dest)), constant_values=ids.size)
    return _Batch(ids, mask, positions, pixels, src, weight, dest, visuals)

  def _logits(self, prepared) -> list[dict]:
    b = self._batch(prepared)
    with self.model.rules():
      node_logp, stop_logp = self._score(self.model.params, b.input_ids, b.attention_mask, b.positions, b.pixels,
                                         b.visual_src, b.visual_weight, b.visual_dest)
    trie = self.continuations
    logp = np.asarray(node_logp, np.float64) @ trie.paths.T.astype(np.float64)   # (B, C)
    if self.mode == "point":
      logp = logp + np.asarray(stop_logp, np.float64)[:, trie.ends + 1]
    out = []
    for row in logp[:len(prepared)]:
      peak = row.max()
      p = np.exp(row - peak)
      if self.mode == "pair":
        p = p / p.sum()
        names = ["tie" if k == 0 else str(k) for k in self.labels]
        out.append({"winner": int(self.labels[int(np.argmax(p))]), "probs": dict(zip(names, p.tolist())),
                    "logprobs": dict(zip(names, row.tolist()))})
      else:
        score = float(np.dot(self.labels, p) / p.sum())
        out.append({"score": score, "mass": float(np.exp(peak) * p.sum())})
    return out

  def _generate(self, prepared) -> list[dict]:
    b = self._batch(prepared)
    tokens = self.model.generate(b.input_ids, b.attention_mask, visuals=b.visuals,
                                 max_new_tokens=self.max_new_tokens, eos_token_id=self.end_ids)
    out = []
    for row in tokens[:len(prepared)]:
      text = answer_text(self.tokenizer, row, self.end_ids)
      if self.mode == "pair":
        out.append({"winner": parse_pairwise(text), "text": text})
      else:
        out.append({"score": parse_pointwise(text), "text": text})
    return out

  def _run(self, prepared: list) -> list[dict]:
    run = self._logits if self.method == "logits" else self._generate
    out = []
    for start in range(0, len(prepared), self.batch_size):
      out += run(prepared[start:start + self.batch_size])
    return out

  def prepare(self, row: dict, root: str | None = None) -> tuple[str, list]:
    return inputs.prepare(row, self.task, self.mode, self.processor, self.options, self.variant, root)

  def judge(self, rows: Sequence[dict], root: str | None = None) -> list[dict]:
    """One result per row, in order (see the class docstring); relative media paths are taken from `root`. A row
    whose preparation raises anything (BadInput, a file Pillow refuses, ...) gets {"error": `errors.row_error`}."""
    results: list[dict] = [{} for _ in rows]
    prepared, owners = [], []
    for i, row in enumerate(rows):
      try:
        orders = [row, inputs.swapped(row, self.task, self.mode)] if self.swap else [row]
        ready = [self.prepare(r, root) for r in orders]
      except Exception as e:   # noqa: BLE001 — whatever one row raises is its error; the others are judged
        results[i] = {"error": row_error(e)}
        continue
      prepared += ready
      owners.append(i)
    judged = self._run(prepared)
    per_row = 2 if self.swap else 1
    for n, i in enumerate(owners):
      results[i] = self._combine(judged[n * per_row:(n + 1) * per_row])
    return results

  def _combine(self, orders: list[dict]) -> dict:
    if len(orders) == 1:
      return orders[0]
    first, second = orders
    if self.method == "logits":
      mirrored = {"1": second["probs"]["2"], "2": second["probs"]["1"]} | (
          {"tie": second["probs"]["tie"]} if "tie" in second["probs"] else {})
      probs = {k: (first["probs"][k] + mirrored[k]) / 2 for k in first["probs"]}
      best = max(probs, key=probs.get)
      return {"winner": 0 if best == "tie" else int(best), "probs": probs,
              "logprobs": first["logprobs"], "logprobs_swapped": second["logprobs"]}
    flipped = {1: 2, 2: 1, 0: 0, None: None}[second["winner"]]
    if first["winner"] is None or flipped is None:
      winner = None
    else:
      winner = first["winner"] if first["winner"] == flipped else 0
    return {"winner": winner, "text": first["text"], "text_swapped": second["text"]}
