"""Hugging Face fast tokenizer -> fixed-shape int32 numpy batches for every model kind.

Every batch is padded to a fixed length so a jitted step compiles once per shape. Each function makes
one batched call of the (Rust) fast tokenizer and assembles special tokens with numpy: no per-token
Python loop.

- :func:`encode_pairs`: ``[CLS] query [SEP] passage [SEP]`` for the cross-encoder teacher.
- :func:`encode_texts`: ``[CLS] text [SEP]`` for SPLADE and dense students.
- :func:`encode_colbert_queries` / :func:`encode_colbert_documents`: ColBERT with its query/document
  marker after [CLS], [MASK] query expansion and the document punctuation mask, as Stanford ColBERT and
  PyLate.
"""

from __future__ import annotations

import os
import string
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from distill_jax.models.colbert import ColBERTConfig

Batch = dict[str, np.ndarray]

# Files that carry a vocabulary: a directory with none of them holds no usable tokenizer.
VOCAB_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
               "sentencepiece.bpe.model")


def load_tokenizer(path_or_id: str) -> Any:
    """Loads the fast (Rust) tokenizer of a checkpoint directory or hub id.

    Raises:
      FileNotFoundError: the directory holds no tokenizer files.
      ValueError: only a slow (pure-Python) tokenizer exists for this checkpoint.
    """
    from transformers import AutoTokenizer

    has_vocab = any(os.path.exists(os.path.join(path_or_id, f)) for f in VOCAB_FILES)
    if os.path.isdir(path_or_id) and not has_vocab:
        # transformers would build a near-empty tokenizer from config.json alone: silently wrong ids.
        raise FileNotFoundError(
            f"directory {path_or_id} has no tokenizer vocabulary (none of {', '.join(VOCAB_FILES)}): "
            "save the tokenizer next to the model with tokenizer.save_pretrained(dir), or pass its "
            "directory"
        )
    try:
        tok = AutoTokenizer.from_pretrained(path_or_id, use_fast=True)
    except (OSError, ValueError, TypeError) as e:
        where = f"directory {path_or_id}" if os.path.isdir(path_or_id) else f"checkpoint {path_or_id!r}"
        raise FileNotFoundError(
            f"no tokenizer could be loaded from {where} ({type(e).__name__}: {e}); it needs "
            "tokenizer.json (or vocab.txt) and tokenizer_config.json: save the tokenizer next to the "
            "model with tokenizer.save_pretrained(dir)"
        ) from e
    if not getattr(tok, "is_fast", False):
        raise ValueError(
            f"the tokenizer of {path_or_id} is a slow Python tokenizer ({type(tok).__name__}); "
            "distill-jax needs a fast one: convert it (AutoTokenizer.from_pretrained(..., "
            "from_slow=True).save_pretrained(dir)) so the directory has a tokenizer.json"
        )
    return tok


def encode_pairs(tok: Any, queries: Sequence[str], passages: Sequence[str], max_length: int) -> Batch:
    """Tokenises (query, passage) pairs for a cross-encoder: ``[CLS] q [SEP] p [SEP]``.

    Truncation is 'longest_first' (the longer of the two loses tokens first), as sentence-transformers'
    CrossEncoder.

    Args:
      tok: a fast tokenizer (:func:`load_tokenizer`).
      queries: B query strings.
      passages: B passage strings.
      max_length: L, the padded length.

    Returns:
      ``input_ids``, ``attention_mask``, ``token_type_ids``: int32 [B, L].
    """
    _check_texts(queries, "queries")
    _check_texts(passages, "passages")
    if len(queries) != len(passages):
        raise ValueError(f"{len(queries)} queries but {len(passages)} passages: pairs need equal counts")
    enc = tok(list(queries), list(passages), truncation="longest_first", max_length=max_length,
              padding="max_length", padding_side="right", return_tensors="np",
              return_token_type_ids=True)
    ids = enc["input_ids"].astype(np.int32)
    types = enc.get("token_type_ids")
    return {
        "input_ids": ids,
        "attention_mask": enc["attention_mask"].astype(np.int32),
        "token_type_ids": np.zeros_like(ids) if types is None else types.astype(np.int32),
    }


def encode_texts(tok: Any, texts: Sequence[str], max_length: int) -> Batch:
    """Tokenises single texts ``[CLS] text [SEP]`` truncated and padded to ``max_length``.

    For SPLADE and dense students.

    Returns:
      ``input_ids``, ``attention_mask``: int32 [B, max_length].
    """
    _check_texts(texts, "texts")
    enc = tok(list(texts), truncation=True, max_length=max_length, padding="max_length",
              padding_side="right", return_tensors="np", return_token_type_ids=False)
    return {"input_ids": enc["input_ids"].astype(np.int32),
            "attention_mask": enc["attention_mask"].astype(np.int32)}


def encode_colbert_queries(tok: Any, queries: Sequence[str], cfg: ColBERTConfig) -> Batch:
    """Tokenises ColBERT queries: ``[CLS] [Q-marker] tokens [SEP] [MASK] ...`` to ``cfg.query_maxlen``.

    The [MASK] padding is query expansion: the model fills those positions with vectors that MaxSim
    scores like real tokens. A query with more than ``query_maxlen - 3`` tokens is truncated, with a
    warning.

    Returns:
      int32 [B, query_maxlen] ``input_ids``; ``attention_mask`` (1 on real tokens, 0 on the expansion
      unless ``cfg.attend_to_expansion_tokens``); ``score_mask`` (1 everywhere: all are scored).
    """
    _check_texts(queries, "queries")
    length = cfg.query_maxlen
    body, n, n_truncated = _body_tokens(tok, queries, length, "query_maxlen")
    if n_truncated:
        warnings.warn(
            f"{n_truncated} of {len(queries)} queries have more than {length - 3} tokens and were "
            f"truncated to query_maxlen={length} (markers included); raise ColBERTConfig.query_maxlen "
            "to keep them whole",
            stacklevel=2,
        )
    mask_id = _special_id(tok, "mask")
    marker = _marker_id(tok, cfg.query_marker, "query_marker")
    ids, real = _assemble(tok, body, n, length, marker, mask_id)
    attention = np.ones_like(ids) if cfg.attend_to_expansion_tokens else real.astype(np.int32)
    return {"input_ids": ids, "attention_mask": attention, "score_mask": np.ones_like(ids)}


def encode_colbert_documents(tok: Any, docs: Sequence[str], cfg: ColBERTConfig) -> Batch:
    """Tokenises ColBERT documents: ``[CLS] [D-marker] tokens [SEP] [PAD] ...`` to ``cfg.doc_maxlen``.

    Longer documents are truncated (silently: documents routinely exceed ``doc_maxlen``).

    Returns:
      int32 [B, doc_maxlen] ``input_ids``; ``attention_mask`` (1 on real tokens); ``score_mask`` (the
      attention mask, with punctuation tokens set to 0 when ``cfg.mask_punctuation``, as ColBERT's
      skiplist).
    """
    _check_texts(docs, "documents")
    length = cfg.doc_maxlen
    body, n, _ = _body_tokens(tok, docs, length, "doc_maxlen")
    ids, real = _assemble(tok, body, n, length, _marker_id(tok, cfg.doc_marker, "doc_marker"),
                          _special_id(tok, "pad"))
    score = real & ~np.isin(ids, punctuation_ids(tok)) if cfg.mask_punctuation else real
    return {"input_ids": ids, "attention_mask": real.astype(np.int32),
            "score_mask": score.astype(np.int32)}


def punctuation_ids(tok: Any) -> np.ndarray:
    """Ids of the ``string.punctuation`` characters present in the vocabulary (ColBERT's skiplist)."""
    vocab = tok.get_vocab()
    return np.array(sorted(vocab[c] for c in string.punctuation if c in vocab), np.int32)


def _check_texts(texts: Sequence[str], what: str) -> None:
    """Fails on anything but a sequence of non-blank strings, naming the first bad index."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise TypeError(f"{what} must be a list of strings, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{what}[{i}] is a {type(text).__name__}, not a string: {text!r:.80}")
        if not text.strip():
            raise ValueError(f"{what}[{i}] is empty or whitespace only ({text!r:.80}); "
                             "drop or fix that record")


def _special_id(tok: Any, name: str) -> int:
    token_id = getattr(tok, f"{name}_token_id", None)
    if token_id is None:
        raise ValueError(f"the tokenizer {type(tok).__name__} has no {name} token; distill-jax needs "
                         "[CLS], [SEP], [PAD] and [MASK] (cls/sep/pad/mask special tokens)")
    return int(token_id)


def _marker_id(tok: Any, marker: str, field: str) -> int:
    """The id of a ColBERT marker token, which must already exist in the vocabulary."""
    vocab = tok.get_vocab()
    if marker not in vocab:
        raise ValueError(
            f"ColBERTConfig.{field}={marker!r} is not a token of the vocabulary: pick an existing "
            "unused token (Stanford ColBERT uses '[unused0]' for queries and '[unused1]' for documents "
            "on BERT vocabularies)"
        )
    return int(vocab[marker])


def _body_tokens(tok: Any, texts: Sequence[str], length: int,
                 field: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Tokens of each text without special tokens, cut to ``length - 3`` (room for [CLS], marker, [SEP]).

    One token beyond the room is requested so truncation can be counted without a second tokenisation.

    Returns:
      (ids [B, length - 3] int32, counts [B] of kept tokens, number of texts that lost tokens).
    """
    room = length - 3
    if room < 1:
        raise ValueError(f"ColBERTConfig.{field}={length} leaves no room for text after [CLS], marker "
                         "and [SEP]; use at least 4")
    enc = tok(list(texts), add_special_tokens=False, truncation=True, max_length=room + 1,
              padding="max_length", padding_side="right", return_tensors="np",
              return_token_type_ids=False)
    counts = enc["attention_mask"].sum(axis=1)
    ids = enc["input_ids"][:, :room].astype(np.int32)
    return ids, np.minimum(counts, room), int(np.sum(counts > room))


def _assemble(tok: Any, body: np.ndarray, n: np.ndarray, length: int, marker: int,
              fill: int) -> tuple[np.ndarray, np.ndarray]:
    """``[CLS] marker body[:n] [SEP] fill ...`` rows of ``length`` ids, and the mask of the real tokens.

    Args:
      body: [B, length - 3] token ids (valid up to each row's count).
      n: [B] count of real body tokens per row.

    Returns:
      (ids [B, length] int32, real [B, length] bool: [CLS], marker, text and [SEP]).
    """
    pos = np.arange(length)
    real = pos < (n + 3)[:, None]
    ids = np.full((len(body), length), fill, np.int32)
    ids[:, 0] = _special_id(tok, "cls")
    ids[:, 1] = marker
    ids[:, 2:length - 1] = np.where(pos[2:length - 1] < (n + 2)[:, None], body, fill)
    ids[np.arange(len(body)), n + 2] = _special_id(tok, "sep")
    return ids, real
