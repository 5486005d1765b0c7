"""Retrieval with a trained (or exported, or Hugging Face) student: load, encode the corpus once, search, rerank.

    rm = load_model("runs/colbert")                             # a work directory: best, else latest checkpoint
    rm = load_model(minilm_dir, kind="dense")                   # or a HF / sentence-transformers directory
    run, report = retrieve(rm, doc_ids, doc_texts, queries, depth=1000)
    print(report.describe())                                    # docs/s, ms/query, bytes/token, nnz, FLOPS

Per kind (its ``Kind.index`` names one of :data:`INDEXES`; the indexes are :mod:`distill_jax.eval.index`):
ColBERT -> a float16/int8 token store and exhaustive MaxSim (or faiss IVF candidates then exact MaxSim); SPLADE ->
a scipy.sparse CSR matrix and a sparse product; dense -> a matrix and a jnp dot product. A cross-encoder cannot
index a corpus; it (and every other kind) reranks given candidates with :func:`rerank` (:class:`Reranker`, also
the trainer's validation). Tokenisation is :mod:`distill_jax.data.tokenize`'s framing; texts are encoded in
length buckets (:mod:`distill_jax.eval.encoding`), so a corpus of short texts is not padded to the maximum.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import numpy as np

from distill_jax import kinds
from distill_jax.data import tokenize as tk
from distill_jax.data.candidates import Run, sort_run
from distill_jax.eval import index as ix
from distill_jax.eval.encoding import ShardedApply, Timer, encode_batches

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RetrievalModel:
    """A model ready to encode texts.

    Attributes:
      kind: "colbert", "splade", "dense" or "cross_encoder".
      model: the Flax module (``model.apply({"params": params}, batch)``).
      params: its parameters.
      tokenizer: a fast tokenizer (:func:`distill_jax.data.tokenize.load_tokenizer`).
      query_maxlen, doc_maxlen: token lengths of queries and documents (ColBERT: [MASK]-expanded query length and
        document truncation; other kinds: truncation, special tokens included).
      pair_maxlen: (query, passage) length for the cross-encoder.
      source: where it was loaded from (a work directory and step, or a directory).
    """

    kind: str
    model: Any
    params: Any
    tokenizer: Any
    query_maxlen: int = 32
    doc_maxlen: int = 180
    pair_maxlen: int = 256
    source: str = ""

    def __post_init__(self):
        if self.kind not in kinds.KINDS:
            raise ValueError(f"kind {self.kind!r}: use one of {tuple(kinds.KINDS)}")

    @property
    def colbert(self):
        """The model's ColBERT settings with this model's lengths (ColBERT only)."""
        return dataclasses.replace(self.model.colbert, query_maxlen=self.query_maxlen, doc_maxlen=self.doc_maxlen)


def is_workdir(path: str) -> bool:
    """A training work directory holds ``checkpoints/``; an exported / HF directory holds ``config.json``."""
    return os.path.isdir(os.path.join(path, "checkpoints"))


def load_model(path: str, kind: str | None = None, step: int | None = None, query_maxlen: int | None = None,
               doc_maxlen: int | None = None, pair_maxlen: int | None = None, student: str | None = None,
               **options) -> RetrievalModel:
    """Loads a training work directory (its best, else latest, checkpoint, or ``step``) or a model directory.

    Args:
      path: a work directory (``checkpoints/`` inside), a Hugging Face / sentence-transformers / exported
        directory, or a hub id the package resolves (``sentence-transformers/all-MiniLM-L6-v2``).
      kind: the model kind; required for a directory whose layout does not say it (:func:`detect_kind`), ignored
        for a work directory (its config says it).
      step: checkpoint of a work directory.
      student: the student of a work directory of several (``TrainConfig.students``), by name.
      query_maxlen, doc_maxlen, pair_maxlen: override the lengths (defaults: the run's data config; for a
        directory, its sentence-transformers ``max_seq_length`` when present, else 32/180 for ColBERT and
        256 for the others).
      options: model build options for a directory (``pooling``, ``normalize``, ``projection_dim`` for dense,
        ``colbert=ColBERTConfig(...)``, ``chunk_size`` for SPLADE); ``load_pretrained`` takes the rest from the
        directory's serving layout (Pooling / Dense / Normalize modules, PyLate settings).
    """
    if is_workdir(path):
        rm = _from_workdir(path, step, student)
    else:
        rm = _from_directory(path, kind, **options)
    lengths = {k: v for k, v in (("query_maxlen", query_maxlen), ("doc_maxlen", doc_maxlen),
                                 ("pair_maxlen", pair_maxlen)) if v}
    return dataclasses.replace(rm, **lengths)


def _from_workdir(workdir: str, step: int | None, student: str | None = None) -> RetrievalModel:
    from distill_jax.models import build_model
    from distill_jax.models.hf import resolve_checkpoint_dir
    from distill_jax.train.checkpoint import restore_student
    from distill_jax.train.state import saved_geometry

    params, step, cfg = restore_student(workdir, student, step)
    m, d = cfg.model, cfg.data
    enc, base = saved_geometry(cfg, params)
    model = build_model(m.kind, enc, **kinds.get(m.kind).model_options(m, d))
    tok_dir = resolve_checkpoint_dir(d.tokenizer) if d.tokenizer else base
    if not tok_dir:
        raise ValueError(f"{workdir}: the run has no data.tokenizer and no model.checkpoint, so no tokenizer to "
                         "encode text with; retrieve from an exported directory that includes one")
    return RetrievalModel(m.kind, model, params, tk.load_tokenizer(tok_dir), d.query_maxlen, d.doc_maxlen,
                          d.pair_maxlen, f"{workdir}{f' ({student})' if student else ''} step {step}")


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def detect_kind(path: str) -> str:
    """The kind a model directory was saved as, from its sentence-transformers / PyLate / transformers files.

    Raises:
      ValueError: the layout does not say (pass the kind explicitly).
    """
    from distill_jax.models.hf import read_modules

    modules = read_modules(path) or []
    types = " ".join(str(m["type"]) for m in modules)
    st = _read_json(os.path.join(path, "config_sentence_transformers.json"))
    model_type = str(st.get("model_type", ""))
    if "Splade" in types or "MLMTransformer" in types or model_type == "SparseEncoder":
        return "splade"
    if "query_length" in st or "pylate" in types.lower() or model_type == "ColBERT":
        return "colbert"
    if model_type == "CrossEncoder":
        return "cross_encoder"
    if modules:
        return "dense"
    arch = " ".join(_read_json(os.path.join(path, "config.json")).get("architectures", []) or [])
    if "SequenceClassification" in arch:
        return "cross_encoder"
    if "MaskedLM" in arch:
        return "splade"
    raise ValueError(f"cannot tell the model kind of {path} (no sentence-transformers modules.json, config.json "
                     f"architectures {arch or 'none'}); pass --kind colbert|splade|dense|cross_encoder")



def _from_directory(path: str, kind: str | None, **options) -> RetrievalModel:
    from distill_jax.models import load_pretrained
    from distill_jax.models.hf import resolve_checkpoint_dir

    path = resolve_checkpoint_dir(path)
    kind = kind or detect_kind(path)
    model, params = load_pretrained(kind, path, **options)  # pooling, projection, ColBERT settings as saved
    seq = _read_json(os.path.join(path, "sentence_bert_config.json")).get("max_seq_length")
    colbert = getattr(model, "colbert", None)  # a ColBERT carries its lengths; the others one max_seq_length
    lengths = (colbert.query_maxlen, colbert.doc_maxlen) if colbert else (int(seq or 256), int(seq or 256))
    return RetrievalModel(kind, model, params, tk.load_tokenizer(path), *lengths, pair_maxlen=int(seq or 256),
                          source=path)


# ---------------------------------------------------------------------------------------------------------------
# Framing: tokenised bodies -> length-bucketed batches
# ---------------------------------------------------------------------------------------------------------------


def _check_texts(texts: Sequence[str], what: str) -> None:
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"{what}[{i}] is {t!r:.60}: every text must be a non-empty string")


def _subset(body: tk.Bodies, rows: np.ndarray) -> tk.Bodies:
    return tk.Bodies(body.ids[rows], body.lengths[rows])


def text_frames(rm: RetrievalModel, texts: Sequence[str], side: str, warn: bool = True
                ) -> tuple[np.ndarray, Callable[[np.ndarray, int], dict], int]:
    """How ``texts`` are framed for ``side`` ("query" or "doc") of ``rm``'s kind, by its token layout
    (``warn``: log truncated ColBERT queries).

    Returns:
      (framed lengths int [N] with special tokens, ``frame(rows, length) -> batch``, the longest frame).
    """
    _check_texts(texts, f"{side} texts")
    layout = kinds.get(rm.kind).layout
    if layout not in _FRAMES:
        raise ValueError(f"a {rm.kind} frames (query, passage) pairs, not single texts: use rerank()")
    return _FRAMES[layout](rm, texts, side, warn)


def _colbert_frames(rm: RetrievalModel, texts: Sequence[str], side: str, warn: bool):
    """ColBERT: markers; queries [MASK]-expanded to query_maxlen, documents to their own length."""
    lay = tk.layout(rm.tokenizer)
    cfg = rm.colbert
    maxlen = cfg.query_maxlen if side == "query" else cfg.doc_maxlen
    body = tk.tokenize_bodies(rm.tokenizer, texts, maxlen - 3)
    if side == "query":
        n_cut = tk.colbert_truncated(body, maxlen)
        if n_cut and warn:
            log.warning("%d of %d queries have more than %d tokens and were truncated (query_maxlen=%d)",
                        n_cut, len(texts), maxlen - 3, maxlen)
        # [MASK] expansion: every query is framed to query_maxlen
        return (np.full(len(texts), maxlen), lambda rows, _: tk.assemble_colbert_queries(
            _subset(body, rows), cfg, lay), maxlen)
    lengths = np.minimum(body.lengths, maxlen - 3) + 3
    return (lengths, lambda rows, n: tk.assemble_colbert_documents(
        _subset(body, rows), dataclasses.replace(cfg, doc_maxlen=n), lay), maxlen)


def _text_frames(rm: RetrievalModel, texts: Sequence[str], side: str, warn: bool):
    """SPLADE and dense: ``[CLS] text [SEP]`` truncated to the side's length."""
    maxlen = rm.query_maxlen if side == "query" else rm.doc_maxlen
    body = tk.tokenize_bodies(rm.tokenizer, texts, maxlen - 2)
    lay = tk.layout(rm.tokenizer)
    return (np.minimum(body.lengths, maxlen - 2) + 2,
            lambda rows, n: tk.assemble_texts(_subset(body, rows), n, lay), maxlen)


_FRAMES = {"colbert": _colbert_frames, "text": _text_frames}  # token layout -> framing


# ---------------------------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------------------------


def _encode(rm: RetrievalModel, apply: ShardedApply | None, frames, batch_size: int, desc: str | None):
    apply = apply or ShardedApply(rm.model, rm.params)
    lengths, frame, maxlen = frames
    return encode_batches(apply, lengths, frame, maxlen, batch_size, n_devices=apply.n_devices, desc=desc)


def encode_corpus(rm: RetrievalModel, texts: Sequence[str], batch_size: int = 32, store_dtype: str = "float16",
                  splade_top_k: int = 0, apply: ShardedApply | None = None, desc: str | None = "encode corpus"):
    """Encodes documents into the kind's index (rows in the order of ``texts``).

    Args:
      store_dtype: ColBERT token store precision, "float16" or "int8".
      splade_top_k: keep each SPLADE document's largest ``splade_top_k`` weights (0: all non-zeros).
      apply: a :class:`ShardedApply` of ``rm`` to reuse (one is made otherwise).

    Returns:
      :class:`~distill_jax.eval.index.TokenStore` (ColBERT), :class:`~distill_jax.eval.index.SparseIndex`
      (SPLADE) or :class:`~distill_jax.eval.index.DenseIndex` (dense).
    """
    how = _retrieval(rm, "scores (query, passage) pairs and cannot index a corpus: rerank a first-stage run "
                         "instead (`distill-jax retrieve --rerank RUN.trec`)")
    batches = _encode(rm, apply, text_frames(rm, texts, "doc"), batch_size, desc)
    return how.documents(batches, len(texts), {"store_dtype": store_dtype, "splade_top_k": splade_top_k})


def encode_queries(rm: RetrievalModel, texts: Sequence[str], batch_size: int = 32, splade_top_k: int = 0,
                   apply: ShardedApply | None = None, desc: str | None = None, warn: bool = True):
    """Encodes queries for the kind's ``search`` (``warn``: log how many ColBERT queries were truncated).

    Returns:
      ColBERT: (token vectors [B, Lq, D] float32, score mask [B, Lq] int32); SPLADE: CSR [B, V] (pruned to
      ``splade_top_k`` terms when > 0); dense: [B, E] float32.
    """
    how = _retrieval(rm, "does not encode queries alone; use rerank()")
    return how.queries(_encode(rm, apply, text_frames(rm, texts, "query", warn), batch_size, desc), len(texts),
                       splade_top_k)


def _token_store(batches, n: int, store_dtype: str) -> ix.TokenStore:
    """ColBERT document outputs -> the token store of their scored tokens (padding and masked punctuation are
    never stored)."""
    docs: list[np.ndarray | None] = [None] * n
    for rows, batch, out in batches:
        keep = batch["score_mask"].astype(bool)
        for j, r in enumerate(rows):
            docs[r] = out[j][keep[j]]
    return ix.TokenStore.from_docs(docs, store_dtype)


def _gather_rows(batches, n: int, score_mask: bool = False):
    """Outputs yielded in bucket order -> float32 [n, ...] in input order (and, with ``score_mask``, the int32
    [n, L] score masks of the batches: ColBERT queries)."""
    vectors, masks = None, None
    for rows, batch, out in batches:
        if vectors is None:
            vectors = np.zeros((n, *out.shape[1:]), np.float32)
            masks = np.zeros((n, out.shape[1]), np.int32) if score_mask else None
        vectors[rows] = out
        if score_mask:
            masks[rows] = batch["score_mask"]
    return (vectors, masks) if score_mask else vectors


def _gather_sparse(batches, n: int, top_k: int):
    """CSR [n, V] of SPLADE outputs yielded in bucket order, put back in input order."""
    import scipy.sparse as sp

    parts, order = [], []
    for rows, _, out in batches:
        parts.append(ix.sparse_rows(out, top_k))
        order.append(rows)
    stacked = sp.vstack(parts).tocsr()
    inverse = np.empty(n, np.int64)
    inverse[np.concatenate(order)] = np.arange(n)
    return stacked[inverse]


@dataclasses.dataclass(frozen=True)
class Retrieval:
    """How a model kind retrieves: the index its documents' encoder outputs make and the query representation
    that index searches (``Kind.index`` names one of :data:`INDEXES`).

    Attributes:
      documents: ``(batches, n, settings) -> index`` from :func:`~distill_jax.eval.encoding.encode_batches`'s
        ``(rows, batch, outputs)`` of ``n`` documents; ``settings``: ``store_dtype``, ``splade_top_k``.
      queries: ``(batches, n, top_k) -> query representation`` (``top_k``: SPLADE's query pruning).
      settings: the settings that change what ``documents`` builds (:func:`index_meta` records them).
    """

    documents: Callable[[Any, int, dict], Any]
    queries: Callable[[Any, int, int], Any]
    settings: tuple[str, ...] = ()


INDEXES: dict[str, Retrieval] = {
    "tokens": Retrieval(lambda b, n, s: _token_store(b, n, s["store_dtype"]),
                        lambda b, n, top_k: _gather_rows(b, n, score_mask=True), ("store_dtype",)),
    "sparse": Retrieval(lambda b, n, s: ix.SparseIndex(_gather_sparse(b, n, s["splade_top_k"])), _gather_sparse,
                        ("splade_top_k",)),
    "dense": Retrieval(lambda b, n, s: ix.DenseIndex(_gather_rows(b, n)), lambda b, n, top_k: _gather_rows(b, n)),
}


def _retrieval(rm: RetrievalModel, refusal: str) -> Retrieval:
    """``rm``'s kind's :class:`Retrieval`; a kind without one (the cross-encoder) is refused with ``refusal``."""
    name = kinds.get(rm.kind).index
    if name is None:
        raise ValueError(f"a {rm.kind.replace('_', '-')} {refusal}")
    return INDEXES[name]


# ---------------------------------------------------------------------------------------------------------------
# Search and the report
# ---------------------------------------------------------------------------------------------------------------


def search(index, queries, k: int, desc: str | None = None, blocks: list | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of every query in ``index`` (what :func:`encode_corpus` / :func:`encode_queries` made).

    Args:
      blocks: a token store's :meth:`~distill_jax.eval.index.TokenStore.blocks`, prepared once for many searches.

    Returns:
      (scores [B, k] float32, rows [B, k] int64).
    """
    if isinstance(index, ix.TokenStore):  # ColBERT queries are (vectors, masks)
        return index.search(queries[0], queries[1], k, blocks=blocks, desc=desc)
    return index.search(queries, k)


def score(index, queries, b: int, rows: np.ndarray) -> np.ndarray:
    """Exact scores of query ``b`` of ``queries`` (as for :func:`search`) against documents ``rows`` -> [n]."""
    if isinstance(index, ix.TokenStore):
        return index.score(queries[0][b], queries[1][b], rows)
    return index.score(queries[b], rows)


def to_run(qids: Sequence[str], doc_ids: Sequence[str], scores: np.ndarray, rows: np.ndarray,
           k: int | None = None) -> Run:
    """(scores, rows) [B, k] -> a :class:`~distill_jax.data.candidates.Run`, ties by doc id (``sort_run``)."""
    return sort_run({q: {doc_ids[int(r)]: float(s) for s, r in zip(scores[b], rows[b]) if r >= 0}
                     for b, q in enumerate(qids)}, k)


@dataclasses.dataclass
class RetrievalReport:
    """Cost figures of one retrieval. Times are wall seconds on this machine, compiles included.

    Attributes:
      kind, source: the model.
      n_docs, n_queries: sizes.
      doc_maxlen, query_maxlen: lengths used.
      encode_seconds: corpus encoding (tokenising, model, building the index), or reading a saved index.
      index_from: the directory a saved index was read from (None: encoded here).
      query_seconds: all queries: encoding and search, batched.
      latency_ms: one query at a time (encoding + search), median over a few queries after a warm-up (None:
        not measured).
      index_bytes: bytes of the index.
      n_tokens, bytes_per_token: ColBERT token store (None for other kinds).
      mean_query_nnz, mean_doc_nnz, flops: SPLADE non-zeros and the expected multiply-adds per query-document
        pair (None for other kinds).
    """

    kind: str
    source: str
    n_docs: int
    n_queries: int
    doc_maxlen: int
    query_maxlen: int
    encode_seconds: float = 0.0
    query_seconds: float = 0.0
    latency_ms: float | None = None
    index_from: str | None = None
    index_bytes: int = 0
    n_tokens: int | None = None
    bytes_per_token: float | None = None
    mean_query_nnz: float | None = None
    mean_doc_nnz: float | None = None
    flops: float | None = None
    extra: dict = dataclasses.field(default_factory=dict)

    @property
    def docs_per_second(self) -> float:
        return self.n_docs / max(self.encode_seconds, 1e-9)

    @property
    def ms_per_query(self) -> float:
        return 1000.0 * self.query_seconds / max(self.n_queries, 1)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(docs_per_second=self.docs_per_second, ms_per_query=self.ms_per_query)
        return d

    def describe(self) -> str:
        """Human-readable lines (what ``distill-jax retrieve`` prints)."""
        lines = [f"{self.kind} from {self.source}: {self.n_docs} documents (doc length {self.doc_maxlen}), "
                 f"{self.n_queries} queries (length {self.query_maxlen})",
                 (f"corpus index read from {self.index_from} in {self.encode_seconds:.1f} s" if self.index_from
                  else f"corpus encoding: {self.encode_seconds:.1f} s = {self.docs_per_second:.1f} docs/s"),
                 f"queries (batched, encode + search): {self.query_seconds:.2f} s = {self.ms_per_query:.1f} ms/query"]
        if self.latency_ms is not None:
            lines.append(f"one query at a time: {self.latency_ms:.1f} ms (median)")
        if self.bytes_per_token is not None:
            lines.append(f"token store: {self.n_tokens} tokens, {self.index_bytes / 2**20:.1f} MiB = "
                         f"{self.bytes_per_token:.1f} bytes/token")
        elif self.index_bytes:
            lines.append(f"index: {self.index_bytes / 2**20:.1f} MiB")
        if self.flops is not None:
            lines.append(f"SPLADE non-zeros: {self.mean_query_nnz:.1f} per query, {self.mean_doc_nnz:.1f} per "
                         f"document; FLOPS {self.flops:.2f} multiply-adds per query-document pair")
        lines += [f"{k}: {v}" for k, v in self.extra.items()]
        return "\n".join(lines)


def _single_query_latency(fn: Callable[[list[str]], Any], texts: Sequence[str], n: int) -> float | None:
    """Median milliseconds of ``fn([text])`` over ``n`` queries, each run once before as a warm-up (the compiles
    of its shapes)."""
    if n <= 0 or not texts:
        return None
    for t in list(texts)[:n]:
        fn([t])
    times = []
    for t in list(texts)[:n]:
        start = time.perf_counter()
        fn([t])
        times.append(1000.0 * (time.perf_counter() - start))
    return float(np.median(times))


def retrieve(rm: RetrievalModel, doc_ids: Sequence[str], doc_texts: Sequence[str], queries: Mapping[str, str],
             depth: int = 1000, batch_size: int = 32, store_dtype: str = "float16", splade_top_k: int = 0,
             query_top_k: int = 0, ivf: dict | None = None, latency_queries: int = 10,
             index_dir: str | None = None, progress: bool = True, doc_model: RetrievalModel | None = None
             ) -> tuple[Run, RetrievalReport]:
    """Encodes the corpus once, then retrieves the top ``depth`` documents of every query.

    Args:
      rm: the model (not a cross-encoder).
      doc_ids, doc_texts: the corpus [C].
      queries: ``{qid: text}``.
      depth: documents per query.
      batch_size: texts per encoder call (split over the local devices).
      store_dtype: ColBERT token store, "float16" or "int8".
      splade_top_k, query_top_k: SPLADE per-vector pruning of documents / queries (0: none).
      ivf: ColBERT only: ``{"n_candidates": ..., "k_tokens": ..., "nprobe": ..., "n_lists": ...}`` to take
        candidates from a faiss IVF index and score them by exact MaxSim, instead of the exhaustive scan.
      latency_queries: measure one-query-at-a-time latency on this many queries (0: skip).
      index_dir: read the corpus index from this directory when it holds one built from the same model, corpus
        and settings (a token store is memory-mapped); otherwise build it and write it there.
      doc_model: asymmetric retrieval: the corpus is encoded by this model (of the same kind and vector space,
        e.g. the teacher a LEAF student was aligned to) and the queries by ``rm`` (None: ``rm`` encodes both).

    Returns:
      (the run, best first with ties by doc id; the :class:`RetrievalReport`).

    Raises:
      ValueError: ``doc_model`` of another kind than ``rm``.
    """
    doc_rm = doc_model or rm
    if doc_rm.kind != rm.kind:
        raise ValueError(f"asymmetric retrieval needs one kind: queries by a {rm.kind} ({rm.source}), documents "
                         f"by a {doc_rm.kind} ({doc_rm.source})")
    qids = list(queries)
    q_texts = [queries[q] for q in qids]
    apply = ShardedApply(rm.model, rm.params)
    doc_apply = apply if doc_rm is rm else ShardedApply(doc_rm.model, doc_rm.params)
    report = RetrievalReport(rm.kind, rm.source, len(doc_ids), len(qids), doc_rm.doc_maxlen, rm.query_maxlen)
    if doc_rm is not rm:
        report.extra["documents encoded by"] = doc_rm.source
    built_from = index_meta(doc_rm, doc_ids, store_dtype, splade_top_k)
    index = _saved_index(index_dir, built_from) if index_dir else None
    with Timer() as t:
        if index is None:
            index = encode_corpus(doc_rm, doc_texts, batch_size, store_dtype, splade_top_k, doc_apply,
                                  "encode corpus" if progress else None)
            if index_dir:
                ix.save_index(index, index_dir, built_from)
        else:
            report.index_from = index_dir
        # exhaustive ColBERT: pad the store into device blocks once for all searches (corpora that fit)
        blocks = index.blocks() if isinstance(index, ix.TokenStore) and ivf is None else None
    report.encode_seconds = t.seconds
    report.index_bytes = index.nbytes
    candidates = None
    if ivf is not None:
        if not isinstance(index, ix.TokenStore):
            raise ValueError("IVF candidate generation is for ColBERT token stores; SPLADE and dense search "
                             "exhaustively")
        ivf = dict(ivf)
        build = {k: ivf.pop(k) for k in ("n_lists", "train_tokens") if k in ivf}
        with Timer() as t:
            candidates = ix.IVFCandidates(index, **build)
        report.extra["IVF"] = (f"{candidates.n_lists} lists over {index.n_tokens} tokens, built in "
                               f"{t.seconds:.1f} s, ~{candidates.nbytes / 2**20:.1f} MiB; {ivf}")

    def run_queries(texts: list[str], desc: str | None = None, warn: bool = False):
        reps = encode_queries(rm, texts, batch_size, query_top_k, apply, warn=warn)
        if candidates is None:
            return reps, search(index, reps, depth, desc, blocks)
        return reps, _ivf_search(index, candidates, reps, depth, **ivf)

    with Timer() as t:
        q_reps, (scores, rows) = run_queries(q_texts, "search" if progress else None, warn=True)
    report.query_seconds = t.seconds
    report.latency_ms = _single_query_latency(run_queries, q_texts, latency_queries)
    if isinstance(index, ix.TokenStore):
        report.n_tokens, report.bytes_per_token = index.n_tokens, index.bytes_per_token
    if isinstance(index, ix.SparseIndex):
        report.mean_query_nnz, report.mean_doc_nnz = ix.mean_nnz(q_reps), ix.mean_nnz(index.docs)
        report.flops = ix.sparse_flops(q_reps, index.docs)
    return to_run(qids, doc_ids, scores, rows, depth), report


def index_meta(rm: RetrievalModel, doc_ids: Sequence[str], store_dtype: str, splade_top_k: int) -> dict:
    """What a corpus index is built from: the model, its document length, the corpus ids and the settings."""
    import hashlib

    ids = hashlib.sha256("\n".join(doc_ids).encode("utf-8")).hexdigest()
    name = kinds.get(rm.kind).index
    used = INDEXES[name].settings if name else ()
    settings = {"store_dtype": store_dtype, "splade_top_k": splade_top_k}
    return {"kind": rm.kind, "model": rm.source, "doc_maxlen": rm.doc_maxlen, "n_docs": len(doc_ids),
            "doc_ids_sha256": ids, **{k: v if k in used else None for k, v in settings.items()}}


def _saved_index(directory: str, built_from: dict):
    """The index saved in ``directory`` if it was built from ``built_from``; None when there is none.

    Raises:
      ValueError: it was built from something else (naming the differences).
    """
    if not os.path.isfile(os.path.join(directory, "index.json")):
        return None
    index, meta = ix.load_index(directory)
    diff = {k: (meta.get(k), v) for k, v in built_from.items() if meta.get(k) != v}
    if diff:
        raise ValueError(f"the index in {directory} was built from something else ({diff}: saved vs now); "
                         "pass another --index directory or remove this one")
    return index


def _ivf_search(store: ix.TokenStore, ivf: ix.IVFCandidates, reps, k: int, n_candidates: int = 1000,
                k_tokens: int = 32, nprobe: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """IVF candidates of each query scored by exact MaxSim; (scores [B, k], rows [B, k]) padded with -inf / -1."""
    q, m = reps
    cands = ivf.candidates(q, m, max(n_candidates, k), k_tokens, nprobe)
    out_s = np.full((len(q), k), -np.inf, np.float32)
    out_i = np.full((len(q), k), -1, np.int64)
    for b, rows in enumerate(cands):
        s = store.score(q[b], m[b], rows)
        order = np.lexsort((rows, -s))[:k]
        out_s[b, :len(order)], out_i[b, :len(order)] = s[order], rows[order]
    return out_s, out_i


# ---------------------------------------------------------------------------------------------------------------
# Reranking
# ---------------------------------------------------------------------------------------------------------------


class Reranker:
    """Scores each query's own candidates with a model of any kind, for any parameters.

    Texts are tokenised once, at construction; each call then scores with the parameters it is given (one
    compile for all calls). A cross-encoder scores every (query, candidate) pair through the answer-key engine
    (:class:`distill_jax.teacher.scorer.PairScorer`: bucketed, sharded pair scoring); the other kinds encode the
    union of the candidates once and score each query against its own, exactly as retrieval does (MaxSim over
    the kind's token store, sparse or dense dot products), on this host's devices.

    Args:
      rm: the model; ``rm.params`` are the parameters of a call without any (may be None).
      queries: query texts [Q].
      candidates: per query, its candidate doc ids (a first-stage run's top ``depth``).
      passage: doc id -> text.
      batch_size: texts (pairs, for a cross-encoder) per device call.
      store_dtype: the ColBERT token store's precision ("float16" or "int8").
      desc: a progress label for encoding the candidates (None: no bar).
    """

    def __init__(self, rm: RetrievalModel, queries: Sequence[str], candidates: Sequence[Sequence[str]],
                 passage: Callable[[str], str], batch_size: int = 32, store_dtype: str = "float16",
                 desc: str | None = None):
        self.rm, self.batch_size, self.store_dtype, self.desc = rm, batch_size, store_dtype, desc
        self.counts = [len(c) for c in candidates]
        if kinds.get(rm.kind).scores_pairs:
            from distill_jax.teacher.scorer import PairScorer, pair_buckets

            self.tokens = tk.encode_pairs(rm.tokenizer, [q for q, c in zip(queries, candidates) for _ in c],
                                          [passage(d) for c in candidates for d in c], rm.pair_maxlen)
            self.pairs = PairScorer(rm.model, rm.params, batch_size, pair_buckets(rm.pair_maxlen))
            return
        self.pairs = None
        docs = list(dict.fromkeys(d for c in candidates for d in c))
        row = {d: i for i, d in enumerate(docs)}
        self.rows = [np.array([row[d] for d in c], np.int64) for c in candidates]
        self.how = _retrieval(rm, "reranks through its pair scorer")
        self.apply = ShardedApply(rm.model, rm.params)
        self.doc_frames = text_frames(rm, [passage(d) for d in docs], "doc")
        self.query_frames = text_frames(rm, queries, "query")

    def __call__(self, params=None) -> list[np.ndarray]:
        """Scores with ``params`` (default: ``rm.params``): one float32 array per query, aligned with its
        candidates."""
        if self.pairs is not None:
            flat = self.pairs.score(self.tokens, params=params)
            ends = np.cumsum(self.counts)
            return [flat[e - n:e] for e, n in zip(ends, self.counts)]
        apply = self.apply if params is None else self.apply.with_params(params)
        batches = _encode(self.rm, apply, self.doc_frames, self.batch_size, self.desc)
        index = self.how.documents(batches, len(self.doc_frames[0]), {"store_dtype": self.store_dtype,
                                                                      "splade_top_k": 0})
        reps = self.how.queries(_encode(self.rm, apply, self.query_frames, self.batch_size, None),
                                len(self.query_frames[0]), 0)
        return [score(index, reps, b, rows) for b, rows in enumerate(self.rows)]


def rerank(rm: RetrievalModel, queries: Mapping[str, str], passages: Mapping[str, str],
           candidates: Mapping[str, Sequence[str]], batch_size: int = 32, store_dtype: str = "float16",
           progress: bool = True) -> Run:
    """Scores each query's candidate documents with ``rm`` and ranks them (any kind, through :class:`Reranker`).

    Args:
      queries: ``{qid: text}`` (candidates of other queries are ignored).
      passages: ``{doc id: text}``; every candidate must be there.
      candidates: ``{qid: [doc ids]}``, e.g. a first-stage run's top ``depth``.

    Returns:
      the reranked run, every candidate kept, ties by doc id.
    """
    qids = [q for q in candidates if q in queries]
    if not qids:
        raise ValueError("no candidate list belongs to a query of this split: check the run's query ids")
    missing = sorted({d for q in qids for d in candidates[q] if d not in passages})
    if missing:
        raise KeyError(f"{len(missing)} candidate documents are not in the corpus (first: {missing[:5]}); "
                       "rerank a run of this collection")
    cands = [list(candidates[q]) for q in qids]
    scores = Reranker(rm, [queries[q] for q in qids], cands, passages.__getitem__, batch_size, store_dtype,
                      "rerank" if progress else None)()
    return sort_run({q: {d: float(v) for d, v in zip(c, s)} for q, c, s in zip(qids, cands, scores)})


__all__ = ["RetrievalModel", "RetrievalReport", "Retrieval", "INDEXES", "Reranker", "load_model", "detect_kind",
           "is_workdir", "text_frames", "index_meta", "encode_corpus", "encode_queries", "search", "score", "to_run",
           "retrieve", "rerank"]
