"""CLIP-style BPE tokenizer: training with `tokenizers`, loading through `transformers`.

The trained files use the exact layout of OpenAI CLIP's `vocab.json` / `merges.txt`
(byte-to-unicode alphabet, word-final tokens ending in `</w>`, `#version` header in merges.txt), so
both `transformers.CLIPTokenizer` and `CLIPTokenizerFast` load them with `from_pretrained(dir)` and
agree.
"""
from __future__ import annotations

import collections
import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
# CLIP's pre-tokenisation regex (as used by transformers' CLIPConverter).
CLIP_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
# 256 byte symbols plus their word-final variants, as in CLIP's vocabulary.
_NUM_BASE_TOKENS = 512


def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2/CLIP map from bytes to printable unicode characters."""
  bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) +
        list(range(ord("®"), ord("ÿ") + 1)))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, (chr(c) for c in cs)))


def train_clip_bpe(captions: Sequence[str], out_dir: str | os.PathLike[str],
                   vocab_size: int = 1024, model_max_length: int = 77,
                   min_frequency: int = 2) -> None:
  """Trains a CLIP-format BPE tokenizer on `captions` and writes it to `out_dir`.

  Uses CLIP's own pipeline (NFC + whitespace collapse + lowercase, CLIP's split regex,
  byte-to-unicode alphabet, `</w>` word suffix; normaliser and pre-tokeniser from the `tokenizers`
  library) because `transformers.CLIPTokenizer` always byte-encodes words; a vocabulary in any
  other alphabet would make the slow and fast tokenizers disagree on non-ASCII captions
  (e.g. "piñata", "flag: Côte d’Ivoire").

  Vocabulary layout (like CLIP): 256 byte symbols, the same 256 with `</w>`, then one token per
  merge in merge order, then `<|startoftext|>`, `<|endoftext|>`.

  Args:
    captions: training texts.
    out_dir: directory to write `vocab.json`, `merges.txt`, `tokenizer_config.json` and
      `special_tokens_map.json` into (created if missing).
    vocab_size: target vocabulary size including the 512 base and 2 special tokens; fewer tokens are
      produced if the corpus runs out of pairs seen at least `min_frequency` times.
    model_max_length: context length stored in `tokenizer_config.json`.
    min_frequency: minimum pair count for a merge.

  Raises:
    ValueError: if `captions` is empty or `vocab_size` cannot hold the base and special tokens.
  """
  from tokenizers import Regex, normalizers, pre_tokenizers

  captions = list(captions)
  if not captions:
    raise ValueError("train_clip_bpe: no captions to train on")
  num_merges = vocab_size - _NUM_BASE_TOKENS - 2
  if num_merges < 0:
    raise ValueError(f"train_clip_bpe: vocab_size={vocab_size} < {_NUM_BASE_TOKENS + 2} "
                     "(256 bytes, 256 word-final bytes and 2 special tokens)")

  # The exact normaliser / pre-tokeniser transformers' CLIPConverter builds for CLIPTokenizerFast.
  normalizer = normalizers.Sequence(
      [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
  pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(CLIP_SPLIT_PATTERN), behavior="removed", invert=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False),
  ])
  word_counts: collections.Counter[str] = collections.Counter()
  for caption in captions:
    for piece, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(caption)):
      word_counts[piece] += 1
  merges = _learn_merges(word_counts, num_merges, min_frequency)

  byte_chars = list(_bytes_to_unicode().values())
  tokens = byte_chars + [c + END_OF_WORD for c in byte_chars]
  tokens += [a + b for a, b in merges]
  tokens += [BOS_TOKEN, EOS_TOKEN]
  vocab: dict[str, int] = {}
  for t in tokens:  # A merge result can repeat a token; keep its first id.
    vocab.setdefault(t, len(vocab))

  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
  (out / "merges.txt").write_text(
      "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
  special = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN,
             "pad_token": EOS_TOKEN}
  config = dict(special, tokenizer_class="CLIPTokenizer", model_max_length=model_max_length,
                do_lower_case=True, errors="replace", clean_up_tokenization_spaces=False)
  (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
  (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n",
                                               encoding="utf-8")


def _learn_merges(word_counts: Mapping[str, int], num_merges: int,
                  min_frequency: int) -> list[tuple[str, str]]:
  """Greedy BPE merge learning on byte-encoded words, with `</w>` on each word's last symbol.

  Written out instead of using `tokenizers.trainers.BpeTrainer` because the latter breaks count ties
  by hash-map order, so its merges.txt changed from run to run; here ties go to the
  lexicographically smallest pair, making the shipped tokenizer reproducible.
  """
  words = [[list(w[:-1]) + [w[-1] + END_OF_WORD], c] for w, c in sorted(word_counts.items()) if w]
  merges: list[tuple[str, str]] = []
  while len(merges) < num_merges:
    pair_counts: collections.Counter[tuple[str, str]] = collections.Counter()
    for symbols, count in words:
      for pair in zip(symbols, symbols[1:]):
        pair_counts[pair] += count
    if not pair_counts:
      break
    best = min(pair_counts, key=lambda p: (-pair_counts[p], p))
    if pair_counts[best] < min_frequency:
      break
    merges.append(best)
    a, b = best
    for word in words:
      symbols, out, i = word[0], [], 0
      while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == a and symbols[i + 1] == b:
          out.append(a + b)
          i += 2
        else:
          out.append(symbols[i])
          i += 1
      word[0] = out
  return merges


def load_tokenizer(path_or_dir: str | os.PathLike[str], fast: bool = True) -> Any:
  """Loads a CLIP tokenizer directory (ours or a Hugging Face CLIP checkpoint's).

  Args:
    path_or_dir: directory holding `vocab.json` and `merges.txt`, or (fast) `tokenizer.json`
      alone (or a file inside it).
    fast: return `CLIPTokenizerFast` (default) or the pure-Python `CLIPTokenizer`.

  Returns:
    A `transformers` CLIP tokenizer.

  Raises:
    FileNotFoundError: if the directory or its `vocab.json` / `merges.txt` is missing.
    ValueError: the files cannot be read as a CLIP tokenizer (e.g. a corrupt `vocab.json`).
  """
  from transformers import CLIPTokenizer, CLIPTokenizerFast

  path = pathlib.Path(path_or_dir)
  if path.is_file():
    path = path.parent
  if not path.is_dir():
    raise FileNotFoundError(f"tokenizer directory not found: {path}")
  # The fast tokenizer is complete in `tokenizer.json` (some checkpoints ship only that).
  needed = (("tokenizer.json",) if fast and (path / "tokenizer.json").is_file()
            else ("vocab.json", "merges.txt"))
  for name in needed:
    if not (path / name).is_file():
      raise FileNotFoundError(f"tokenizer file missing: {path / name}")
  cls = CLIPTokenizerFast if fast else CLIPTokenizer
  try:
    return cls.from_pretrained(str(path))
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"Cannot build a CLIP tokenizer from {path} ({', '.join(needed)}): "
                     f"{type(e).__name__}: {e}") from e


def eos_token_id(tokenizer: Any) -> int:
  """Id of the end-of-text token (the position CLIP's text pooling reads)."""
  eos = tokenizer.eos_token_id
  if eos is None:
    raise ValueError(f"tokenizer {type(tokenizer).__name__} has no eos_token")
  return int(eos)


def tokenize(tokenizer: Any, captions: Sequence[str],
             max_length: int) -> tuple[np.ndarray, np.ndarray]:
  """Tokenizes captions to fixed-length CLIP inputs.

  Each row is `<|startoftext|> tokens... <|endoftext|>` then padding (the tokenizer's pad id).
  Over-long captions are cut so that the EOS token is still the last kept token, because CLIP's
  pooling reads the first EOS position.

  Args:
    tokenizer: a `transformers` CLIP tokenizer (slow or fast).
    captions: `[N]` texts.
    max_length: context length `L` (>= 2).

  Returns:
    `(input_ids, attention_mask)`, both int32 `[N, L]`.
  """
  if max_length < 2:
    raise ValueError(f"tokenize: max_length={max_length} must be >= 2 (BOS + EOS)")
  captions = list(captions)
  eos = eos_token_id(tokenizer)
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
  input_ids = np.full((len(captions), max_length), pad, np.int32)
  attention_mask = np.zeros((len(captions), max_length), np.int32)
  if not captions:
    return input_ids, attention_mask
  encoded = tokenizer(captions, add_special_tokens=True)["input_ids"]
  for i, ids in enumerate(encoded):
    if len(ids) > max_length:
      ids = list(ids[:max_length - 1]) + [eos]
    input_ids[i, :len(ids)] = ids
    attention_mask[i, :len(ids)] = 1
  return input_ids, attention_mask


def token_lengths(tokenizer: Any, captions: Sequence[str]) -> np.ndarray:
  """Untruncated token counts `[N]` including BOS and EOS."""
  encoded = tokenizer(list(captions), add_special_tokens=True)["input_ids"]
  return np.asarray([len(ids) for ids in encoded], np.int64)
