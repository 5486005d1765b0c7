"""Hugging Face fast tokenizer -> fixed-shape int32 numpy batches for every model kind.

Tokenising and framing are two separate steps, so text and pre-tokenised corpora share one framing code:

1. **Bodies**: the word pieces of each text WITHOUT special tokens, as :class:`Bodies` (ids padded to a width,
   plus each text's full token count). :func:`tokenize_bodies` makes them from strings with one batched call of
   the Rust tokenizer; :class:`distill_jax.data.token_cache.TokenTable` stores a whole corpus of them once and
   gathers rows with numpy.
2. **Assembly** (pure numpy, no tokenizer call): special tokens, truncation and padding to a fixed length.

   - :func:`assemble_pairs`: ``[CLS] query [SEP] passage [SEP]`` with Hugging Face's ``longest_first``
     truncation (:func:`longest_first`), for the cross-encoder teacher.
   - :func:`assemble_texts`: ``[CLS] text [SEP]`` for SPLADE and dense students.
   - :func:`assemble_colbert_queries` / :func:`assemble_colbert_documents`: ColBERT with its query/document
     marker after [CLS], [MASK] query expansion and the document punctuation mask, as Stanford ColBERT and
     PyLate.

``encode_*`` (strings in, batch out) are step 1 then step 2. Every batch is padded to a fixed length so a jitted
step compiles once per shape. The special-token layout is BERT's; :func:`layout` checks once per tokenizer that
the tokenizer's own framing of a probe pair is exactly that, and refuses any other.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import string
import threading
import warnings
import weakref
from collections.abc import Sequence
from itertools import chain
from typing import TYPE_CHECKING, Any, NamedTuple

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


# ---------------------------------------------------------------------------------------------------------------
# The tokenizer's layout and body tokens
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Layout:
    """What assembly needs from a tokenizer, read once (see :func:`layout`).

    Attributes:
      cls, sep, pad: ids of [CLS], [SEP], [PAD].
      mask: id of [MASK] (None if the tokenizer has none: only ColBERT queries need it).
      vocab_size: ids are in ``[0, vocab_size)`` (added tokens included).
      punctuation: int32 ids of the ``string.punctuation`` characters in the vocabulary (ColBERT's skiplist).
      fingerprint: sha256 of the tokenizer's full serialisation (``tokenizer.json`` as the Rust side writes
        it: vocabulary, normaliser, pre-tokeniser, added tokens): keys pre-tokenised caches.
      encoder: a private copy of the Rust ``tokenizers.Tokenizer`` with truncation and padding off.
    """

    cls: int
    sep: int
    pad: int
    mask: int | None
    vocab_size: int
    punctuation: np.ndarray
    fingerprint: str
    encoder: Any

    def token_id(self, token: str) -> int | None:
        """The id of ``token`` in the vocabulary (added tokens included), None if absent."""
        return self.encoder.token_to_id(token)


_LAYOUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LAYOUT_LOCK = threading.Lock()
_PROBE = ("Hello, world!", "x is y.")


def layout(tok: Any) -> Layout:
    """The :class:`Layout` of a fast tokenizer (computed once per tokenizer object, then cached).

    Raises:
      ValueError: no [CLS]/[SEP]/[PAD] token, truncation from the left, or a special-token framing that is not
        BERT's ``[CLS] A [SEP]`` / ``[CLS] A [SEP] B [SEP]`` with token types 0/1.
    """
    with _LAYOUT_LOCK:  # the probe calls below change the tokenizer's truncation state: one thread at a time
        cached = _LAYOUTS.get(tok)
        if cached is None:
            cached = _make_layout(tok)
            _LAYOUTS[tok] = cached
        return cached


def _make_layout(tok: Any) -> Layout:
    from tokenizers import Tokenizer

    name = type(tok).__name__
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"{name} is not a fast tokenizer; load it with distill_jax.data.tokenize.load_tokenizer")
    if getattr(tok, "truncation_side", "right") != "right":
        raise ValueError(f"{name} truncates from the {tok.truncation_side}; distill-jax keeps the start of every "
                         "text: set tokenizer.truncation_side = 'right'")
    ids = {}
    for special in ("cls", "sep", "pad"):
        ids[special] = _special_id(tok, special)
    # A private Rust copy: transformers leaves its last call's truncation/padding on the shared backend.
    serial = backend.to_str()
    encoder = Tokenizer.from_str(serial)
    encoder.no_truncation()
    encoder.no_padding()
    a, b = (e.ids for e in encoder.encode_batch(list(_PROBE), add_special_tokens=False))
    cls, sep = ids["cls"], ids["sep"]
    pair = tok(*_PROBE, return_token_type_ids=True, truncation=False, padding=False)
    single = tok(_PROBE[0], truncation=False, padding=False)
    expected = [cls, *a, sep, *b, sep]
    if (list(pair["input_ids"]) != expected or list(single["input_ids"]) != [cls, *a, sep]
            or list(pair["token_type_ids"]) != [0] * (len(a) + 2) + [1] * (len(b) + 1)):
        raise ValueError(
            f"{name} frames texts as {tok.convert_ids_to_tokens(pair['input_ids'])}, not BERT's "
            f"{tok.convert_ids_to_tokens(expected)}: distill-jax assembles [CLS] A [SEP] B [SEP] itself and "
            "supports BERT-family tokenizers only"
        )
    mask = getattr(tok, "mask_token_id", None)
    vocab = tok.get_vocab()
    punct = np.array(sorted(vocab[c] for c in string.punctuation if c in vocab), np.int32)
    return Layout(cls=cls, sep=sep, pad=ids["pad"], mask=None if mask is None else int(mask),
                  vocab_size=int(encoder.get_vocab_size(with_added_tokens=True)), punctuation=punct,
                  fingerprint=hashlib.sha256(serial.encode("utf-8")).hexdigest(), encoder=encoder)


class Bodies(NamedTuple):
    """Body tokens (no special tokens) of B texts.

    Attributes:
      ids: int32 [B, W]: row b holds the first ``min(lengths[b], W)`` tokens of text b, then zeros.
      lengths: int64 [B]: each text's full token count (before any truncation): the truncation rules need it.
    """

    ids: np.ndarray
    lengths: np.ndarray


def tokenize_bodies(tok: Any, texts: Sequence[str], width: int) -> Bodies:
    """Body tokens of ``texts`` kept to ``width`` columns, with their full lengths.

    One batched call of the Rust tokenizer (it releases the GIL and may use its own threads:
    ``TOKENIZERS_PARALLELISM``). Texts are not checked here (the ``encode_*`` functions check theirs).

    Returns:
      :class:`Bodies` with ids [B, width].
    """
    encodings = layout(tok).encoder.encode_batch(list(texts), add_special_tokens=False)
    return pack_bodies([e.ids for e in encodings], width)


def pack_bodies(id_lists: Sequence[Sequence[int]], width: int) -> Bodies:
    """Python lists of ids -> :class:`Bodies` [B, width] (each list cut to ``width``)."""
    lengths = np.fromiter(map(len, id_lists), np.int64, len(id_lists))
    kept = np.minimum(lengths, width)
    flat = np.fromiter(chain.from_iterable(x[:width] for x in id_lists), np.int32, int(kept.sum()))
    ids = np.zeros((len(id_lists), width), np.int32)
    ids[np.arange(width) < kept[:, None]] = flat  # row-major: the boolean mask visits tokens in order
    return Bodies(ids, lengths)


# ---------------------------------------------------------------------------------------------------------------
# Assembly: bodies -> fixed-shape batches (numpy only)
# ---------------------------------------------------------------------------------------------------------------


def frame(body: Bodies, length: int, prefix: Sequence[int], sep: int, fill: int) -> tuple[np.ndarray, np.ndarray]:
    """``prefix body[:room] [SEP] fill ...`` rows of ``length`` ids, truncating each body on the right.

    Args:
      body: :class:`Bodies` [B, W] with W >= ``room = length - len(prefix) - 1`` or every row fully stored.
      length: L, the padded length.
      prefix: ids before the text ([CLS], or [CLS] and a ColBERT marker).
      sep: the id closing the text.
      fill: the id after it ([PAD], or [MASK] for ColBERT query expansion).

    Returns:
      (ids int32 [B, L], real bool [B, L]: prefix, text and [SEP]).
    """
    k = len(prefix)
    _check_width(body, length - k - 1)
    kept = np.minimum(body.lengths, length - k - 1)
    pos = np.arange(length)[None, :]
    end = (k + kept)[:, None]  # position of [SEP]
    text = _take(body.ids, pos - k)
    ids = np.where(pos < end, text, np.where(pos == end, sep, fill)).astype(np.int32)
    ids[:, :k] = prefix
    return ids, pos <= end


def longest_first(len_a: np.ndarray, len_b: np.ndarray, room: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokens kept of each side of a pair under Hugging Face ``truncation="longest_first"``.

    The rule of the Rust ``tokenizers`` (``utils/truncation.rs``), with ``room = max_length - 3``: pairs that fit
    are kept whole; if the shorter side fits in half the room it is kept whole and the longer side gets the rest;
    otherwise the room is split in half, the longer side (the second one on a tie) taking the odd token.

    Args:
      len_a, len_b: int [B] full token counts of the first and second texts.
      room: tokens available for both texts.

    Returns:
      (kept_a, kept_b) int64 [B].
    """
    a, b = np.asarray(len_a, np.int64), np.asarray(len_b, np.int64)
    swap = a > b
    short, long_ = np.where(swap, b, a), np.where(swap, a, b)
    half = 2 * short > room
    k_short = np.where(half, room // 2, short)
    k_long = np.where(half, room // 2 + room % 2, room - short)
    fits = a + b <= room
    keep_a = np.where(fits, a, np.where(swap, k_long, k_short))
    keep_b = np.where(fits, b, np.where(swap, k_short, k_long))
    return np.minimum(keep_a, a), np.minimum(keep_b, b)


def assemble_pairs(queries: Bodies, passages: Bodies, max_length: int, lay: Layout) -> Batch:
    """``[CLS] q [SEP] p [SEP] [PAD] ...`` with :func:`longest_first` truncation; token type 1 on ``p [SEP]``.

    Args:
      queries, passages: :class:`Bodies` [B, Wq] and [B, Wp], W >= ``max_length - 3`` (or rows fully stored).

    Returns:
      ``input_ids``, ``attention_mask``, ``token_type_ids``: int32 [B, max_length].
    """
    if max_length < 3:
        raise ValueError(f"pair max_length={max_length} leaves no room for [CLS] q [SEP] p [SEP]; use at least 3")
    _check_width(queries, max_length - 3)
    _check_width(passages, max_length - 3)
    kq, kp = longest_first(queries.lengths, passages.lengths, max_length - 3)
    pos = np.arange(max_length)[None, :]
    sep1 = (1 + kq)[:, None]
    p0 = sep1 + 1
    sep2 = p0 + kp[:, None]
    q_tok, p_tok = _take(queries.ids, pos - 1), _take(passages.ids, pos - p0)
    ids = np.select([pos == 0, pos < sep1, pos == sep1, pos < sep2, pos == sep2],
                    [lay.cls, q_tok, lay.sep, p_tok, lay.sep], lay.pad).astype(np.int32)
    real = pos <= sep2
    return {"input_ids": ids, "attention_mask": real.astype(np.int32),
            "token_type_ids": ((pos > sep1) & real).astype(np.int32)}


def assemble_texts(body: Bodies, max_length: int, lay: Layout) -> Batch:
    """``[CLS] text [SEP] [PAD] ...``: ``input_ids``, ``attention_mask`` int32 [B, max_length]."""
    if max_length < 2:
        raise ValueError(f"max_length={max_length} leaves no room for [CLS] and [SEP]; use at least 2")
    ids, real = frame(body, max_length, (lay.cls,), lay.sep, lay.pad)
    return {"input_ids": ids, "attention_mask": real.astype(np.int32)}


def assemble_colbert_queries(body: Bodies, cfg: ColBERTConfig, lay: Layout) -> Batch:
    """``[CLS] [Q-marker] q [SEP] [MASK] ...`` to ``cfg.query_maxlen`` (see :func:`encode_colbert_queries`)."""
    length = _room(cfg.query_maxlen, "query_maxlen") + 3
    if lay.mask is None:
        raise ValueError("the tokenizer has no mask token; distill-jax needs [CLS], [SEP], [PAD] and [MASK] "
                         "(cls/sep/pad/mask special tokens)")
    ids, real = frame(body, length, (lay.cls, _marker_id(lay, cfg.query_marker, "query_marker")), lay.sep,
                      lay.mask)
    attention = np.ones_like(ids) if cfg.attend_to_expansion_tokens else real.astype(np.int32)
    return {"input_ids": ids, "attention_mask": attention, "score_mask": np.ones_like(ids)}


def assemble_colbert_documents(body: Bodies, cfg: ColBERTConfig, lay: Layout) -> Batch:
    """``[CLS] [D-marker] d [SEP] [PAD] ...`` to ``cfg.doc_maxlen`` (see :func:`encode_colbert_documents`)."""
    length = _room(cfg.doc_maxlen, "doc_maxlen") + 3
    ids, real = frame(body, length, (lay.cls, _marker_id(lay, cfg.doc_marker, "doc_marker")), lay.sep, lay.pad)
    score = real & ~np.isin(ids, lay.punctuation) if cfg.mask_punctuation else real
    return {"input_ids": ids, "attention_mask": real.astype(np.int32), "score_mask": score.astype(np.int32)}


def colbert_truncated(body: Bodies, maxlen: int) -> int:
    """How many texts lose tokens when framed as ColBERT inputs of ``maxlen`` (3 positions are special)."""
    return int(np.sum(body.lengths > maxlen - 3))


# ---------------------------------------------------------------------------------------------------------------
# Strings in, batches out
# ---------------------------------------------------------------------------------------------------------------


def encode_pairs(tok: Any, queries: Sequence[str], passages: Sequence[str], max_length: int) -> Batch:
    """Tokenises (query, passage) pairs for a cross-encoder: ``[CLS] q [SEP] p [SEP]``.

    Truncation is 'longest_first' (the longer of the two loses tokens first), exactly as the Hugging Face
    tokenizer's own pair truncation (and so sentence-transformers' CrossEncoder).

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
    width = max(max_length - 3, 1)
    return assemble_pairs(tokenize_bodies(tok, queries, width), tokenize_bodies(tok, passages, width), max_length,
                          layout(tok))


def encode_texts(tok: Any, texts: Sequence[str], max_length: int) -> Batch:
    """Tokenises single texts ``[CLS] text [SEP]`` truncated and padded to ``max_length``.

    For SPLADE and dense students.

    Returns:
      ``input_ids``, ``attention_mask``: int32 [B, max_length].
    """
    _check_texts(texts, "texts")
    return assemble_texts(tokenize_bodies(tok, texts, max(max_length - 2, 1)), max_length, layout(tok))


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
    body = tokenize_bodies(tok, queries, _room(length, "query_maxlen"))
    n_truncated = colbert_truncated(body, length)
    if n_truncated:
        warnings.warn(
            f"{n_truncated} of {len(queries)} queries have more than {length - 3} tokens and were "
            f"truncated to query_maxlen={length} (markers included); raise ColBERTConfig.query_maxlen "
            "to keep them whole",
            stacklevel=2,
        )
    return assemble_colbert_queries(body, cfg, layout(tok))


def encode_colbert_documents(tok: Any, docs: Sequence[str], cfg: ColBERTConfig) -> Batch:
    """Tokenises ColBERT documents: ``[CLS] [D-marker] tokens [SEP] [PAD] ...`` to ``cfg.doc_maxlen``.

    Longer documents are truncated (silently: documents routinely exceed ``doc_maxlen``).

    Returns:
      int32 [B, doc_maxlen] ``input_ids``; ``attention_mask`` (1 on real tokens); ``score_mask`` (the
      attention mask, with punctuation tokens set to 0 when ``cfg.mask_punctuation``, as ColBERT's
      skiplist).
    """
    _check_texts(docs, "documents")
    body = tokenize_bodies(tok, docs, _room(cfg.doc_maxlen, "doc_maxlen"))
    return assemble_colbert_documents(body, cfg, layout(tok))


def _grouped(pairs: Batch | None, query: Batch | None, docs: Batch | None, b: int, n: int) -> dict:
    shape = lambda d: {k: v.reshape(b, n, -1) for k, v in d.items()}  # noqa: E731
    if pairs is not None:
        return {"pairs": shape(pairs)}
    return {"query": query, "docs": shape(docs)}


def encode_groups(tok: Any, spec, queries: Sequence[str], docs: Sequence[str]) -> dict:
    """The token groups of a batch from its texts: B queries and their B*N candidates (query-major).

    ``spec`` is a :class:`distill_jax.kinds.TokenSpec` (layout "pairs", "colbert" or "text", and the lengths).

    Returns:
      ``{"pairs": [B, N, Lp]}`` for the pairs layout, else ``{"query": [B, Lq], "docs": [B, N, Ld]}``
      (dicts of int32 arrays as the ``encode_*`` functions return).
    """
    b = len(queries)
    if b == 0 or len(docs) % b:
        raise ValueError(f"{len(docs)} candidates for {b} queries: give N candidates per query (query-major)")
    n = len(docs) // b
    if spec.layout == "pairs":
        return _grouped(encode_pairs(tok, [q for q in queries for _ in range(n)], docs, spec.pair_maxlen),
                        None, None, b, n)
    if spec.layout == "colbert":
        return _grouped(None, encode_colbert_queries(tok, queries, spec.colbert),
                        encode_colbert_documents(tok, docs, spec.colbert), b, n)
    return _grouped(None, encode_texts(tok, queries, spec.query_maxlen), encode_texts(tok, docs, spec.doc_maxlen),
                    b, n)


def assemble_groups(spec, lay: Layout, query_bodies: Bodies, doc_bodies: Bodies, n: int) -> dict:
    """:func:`encode_groups` from pre-tokenised bodies (token tables, at least ``spec.rooms`` wide).

    Args:
      query_bodies: B query bodies; for the pairs layout one per candidate (B*N, each query repeated N times).
      doc_bodies: B*N candidate bodies, query-major.
      n: candidates per query N.
    """
    b = len(doc_bodies.lengths) // n
    if spec.layout == "pairs":
        return _grouped(assemble_pairs(query_bodies, doc_bodies, spec.pair_maxlen, lay), None, None, b, n)
    if spec.layout == "colbert":
        return _grouped(None, assemble_colbert_queries(query_bodies, spec.colbert, lay),
                        assemble_colbert_documents(doc_bodies, spec.colbert, lay), b, n)
    return _grouped(None, assemble_texts(query_bodies, spec.query_maxlen, lay),
                    assemble_texts(doc_bodies, spec.doc_maxlen, lay), b, n)


def punctuation_ids(tok: Any) -> np.ndarray:
    """Ids of the ``string.punctuation`` characters present in the vocabulary (ColBERT's skiplist)."""
    return layout(tok).punctuation.copy()


# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------


def _take(ids: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``ids[b, cols[b, j]]`` with out-of-range columns clipped (callers mask those positions)."""
    cols = np.broadcast_to(np.clip(cols, 0, max(ids.shape[1] - 1, 0)), (ids.shape[0], cols.shape[1]))
    if ids.shape[1] == 0:
        return np.zeros(cols.shape, np.int32)
    return np.take_along_axis(ids, cols, axis=1)


def _check_width(body: Bodies, room: int) -> None:
    """Refuses bodies cut narrower than the room they could fill (their missing tokens would be read as 0)."""
    width = body.ids.shape[1]
    if width < room and np.any(body.lengths > width):
        raise ValueError(f"body tokens were kept to {width} columns but this layout has room for {room}: "
                         f"gather or tokenise them with width >= {room}")


def _room(length: int, field: str) -> int:
    room = length - 3
    if room < 1:
        raise ValueError(f"ColBERTConfig.{field}={length} leaves no room for text after [CLS], marker "
                         "and [SEP]; use at least 4")
    return room


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


def _marker_id(lay: Layout, marker: str, field: str) -> int:
    """The id of a ColBERT marker token, which must already exist in the vocabulary."""
    token_id = lay.token_id(marker)
    if token_id is None:
        raise ValueError(
            f"ColBERTConfig.{field}={marker!r} is not a token of the vocabulary: pick an existing "
            "unused token (Stanford ColBERT uses '[unused0]' for queries and '[unused1]' for documents "
            "on BERT vocabularies)"
        )
    return int(token_id)
