"""Corpus indexes per student kind, all exhaustive and exact unless said otherwise.

- :class:`TokenStore` (ColBERT): every scored document token vector, and nothing else (padding and masked
  punctuation are never stored), in one flat float16 (2 bytes/dim) or int8 (1 byte/dim + a float16 scale per
  token) matrix with per-document offsets. :meth:`TokenStore.search` is exhaustive MaxSim through
  :func:`distill_jax.scoring.maxsim_corpus` over length-sorted blocks, each padded only to its own longest
  document; :meth:`TokenStore.save` / :meth:`TokenStore.load` (memory-mapped) keep it on disk.
- :class:`IVFCandidates` (ColBERT, corpora whose padded blocks are too slow to scan or whose store lives on disk):
  a faiss IVF index over the token vectors proposes documents (the ColBERTv1 route), which are then scored by exact
  MaxSim (:meth:`TokenStore.score`).
- :class:`SparseIndex` (SPLADE): documents as a ``scipy.sparse`` CSR matrix [C, V]; retrieval is one sparse matrix
  product per query batch. :func:`sparse_flops` is the expected number of multiply-adds per query-document pair.
- :class:`DenseIndex` (dense): a [C, E] matrix and :func:`distill_jax.scoring.dot_corpus`.

Every ``search`` returns ``(scores [B, k] float32, rows [B, k] int64)`` best first, rows into the corpus order the
index was built in; equal scores are ordered by row.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from distill_jax import scoring
from distill_jax.eval.encoding import buckets

STORE_DTYPES = ("float16", "int8")


# ---------------------------------------------------------------------------------------------------------------
# Top-k helpers (numpy, deterministic ties)
# ---------------------------------------------------------------------------------------------------------------


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` columns of each row of ``scores`` [B, C]: (scores [B, k], columns [B, k] int64), best first, equal
    scores by column."""
    k = min(k, scores.shape[1])
    if k < scores.shape[1]:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        # a score equal to the k-th one may sit outside the partition: take every column >= the k-th score
        kth = np.take_along_axis(scores, part, axis=1).min(axis=1, keepdims=True)
        cols = [np.nonzero(row >= t)[0] for row, t in zip(scores, kth[:, 0])]
    else:
        cols = [np.arange(scores.shape[1])] * scores.shape[0]
    out_s = np.empty((scores.shape[0], k), np.float32)
    out_i = np.empty((scores.shape[0], k), np.int64)
    for b, c in enumerate(cols):
        s = scores[b, c]
        order = np.lexsort((c, -s))[:k]
        out_s[b], out_i[b] = s[order], c[order]
    return out_s, out_i


_top_k = top_k  # sparse_rows' argument shadows the name


def merge_top_k(best: tuple[np.ndarray, np.ndarray], new: tuple[np.ndarray, np.ndarray],
                k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merges two (scores [B, k1], rows [B, k1]) candidate lists into the top ``k``, equal scores by row."""
    s = np.concatenate([best[0], new[0]], axis=1)
    i = np.concatenate([best[1], new[1]], axis=1)
    order = np.lexsort((i, -s), axis=-1)[:, :k]
    return np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)



# ---------------------------------------------------------------------------------------------------------------
# ColBERT: the token store
# ---------------------------------------------------------------------------------------------------------------


def quantize_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: ``x ~= q * scale``; returns (q int8 [T, D], scale float16 [T]).

    A unit-length ColBERT vector keeps each component to within ``max|x| / 254`` (about 1e-3 for D = 128).
    """
    x = np.asarray(x, np.float32)
    scale = np.maximum(np.abs(x).max(axis=1), 1e-8) / 127.0
    scale = scale.astype(np.float16)
    q = np.clip(np.rint(x / scale.astype(np.float32)[:, None]), -127, 127).astype(np.int8)
    return q, scale


@dataclasses.dataclass(frozen=True)
class TokenStore:
    """Scored token vectors of a corpus, flat.

    Attributes:
      vectors: [T, D] float16, or int8 (then ``scales`` holds the per-token factor).
      offsets: int64 [C + 1]; document c owns rows ``offsets[c]:offsets[c + 1]`` (possibly none: a document whose
        every token is masked scores 0).
      scales: float16 [T] for int8 vectors, else None.
    """

    vectors: np.ndarray
    offsets: np.ndarray
    scales: np.ndarray | None = None

    @classmethod
    def from_docs(cls, docs: Sequence[np.ndarray], dtype: str = "float16") -> TokenStore:
        """Builds the store from one [n_c, D] float array per document, in corpus order."""
        if dtype not in STORE_DTYPES:
            raise ValueError(f"token store dtype {dtype!r}: use one of {STORE_DTYPES}")
        if not docs:
            raise ValueError("a token store needs at least one document")
        dim = docs[0].shape[-1]
        lengths = np.fromiter((len(d) for d in docs), np.int64, len(docs))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        flat = np.concatenate([np.asarray(d, np.float32).reshape(-1, dim) for d in docs])
        if dtype == "int8":
            q, scales = quantize_int8(flat)
            return cls(q, offsets, scales)
        return cls(flat.astype(np.float16), offsets)

    @property
    def n_docs(self) -> int:
        return len(self.offsets) - 1

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def n_tokens(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def lengths(self) -> np.ndarray:
        """int64 [C] stored tokens per document."""
        return np.diff(self.offsets)

    @property
    def nbytes(self) -> int:
        """Bytes of the store: vectors, scales and offsets."""
        return int(self.vectors.nbytes + self.offsets.nbytes + (0 if self.scales is None else self.scales.nbytes))

    @property
    def bytes_per_token(self) -> float:
        """All bytes of the store over the number of stored tokens (offsets included)."""
        return self.nbytes / max(self.n_tokens, 1)

    def tokens(self, start: np.ndarray) -> np.ndarray:
        """Dequantised float32 vectors of token rows ``start`` (any int shape) -> [..., D]."""
        v = self.vectors[start].astype(np.float32)
        if self.scales is not None:
            v *= self.scales[start].astype(np.float32)[..., None]
        return v

    def padded(self, rows: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Documents ``rows`` [n] padded to ``length`` tokens.

        Returns:
          (float16 [n, length, D] vectors, zero at padding; int32 [n, length] mask, 1 on stored tokens).
        """
        rows = np.asarray(rows, np.int64)
        lens = self.lengths[rows]
        if len(lens) and lens.max() > length:
            raise ValueError(f"a document has {lens.max()} stored tokens, more than the padded length {length}")
        pos = np.arange(length)[None, :]
        mask = pos < lens[:, None]
        idx = np.where(mask, self.offsets[rows][:, None] + pos, 0)
        v = self.tokens(idx) if self.n_tokens else np.zeros((*idx.shape, self.dim), np.float32)
        v[~mask] = 0.0
        return v.astype(np.float16), mask.astype(np.int32)

    # -- exhaustive MaxSim ---------------------------------------------------------------------------------

    def blocks(self, block_docs: int = 2048, multiple: int = 16) -> list[tuple[np.ndarray, jax.Array, jax.Array]]:
        """The store as padded device arrays, for many searches: blocks of ``block_docs`` documents sorted by
        length, each padded to its own longest document (rounded up to ``multiple``).

        They take about the store's memory again (plus the padding inside each block), so they suit corpora that
        fit in (device) memory; :meth:`search` without them pads one block at a time.

        Returns:
          ``[(rows int64 [n], vectors float16 [n, Ld, D], mask int32 [n, Ld])]``.
        """
        return [(rows, *(jnp.asarray(x) for x in self.padded(rows, length)))
                for rows, length in buckets(self.lengths, block_docs, max(int(self.lengths.max(initial=0)), 1),
                                            multiple)]

    def search(self, q: np.ndarray, q_mask: np.ndarray, k: int, blocks: list | None = None, block_docs: int = 2048,
               query_batch: int = 32, chunk_size: int = 64, multiple: int = 16,
               desc: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exhaustive MaxSim top-``k`` of every query over the whole store.

        Documents are scanned in blocks of ``block_docs`` sorted by length, each padded to its own longest
        document (rounded up to ``multiple``); each block goes through :func:`scoring.maxsim_corpus` (chunks of
        ``chunk_size`` documents), and the blocks' top-k lists are merged. Working memory is one padded block
        (or the prepared ``blocks``) plus ``query_batch * chunk_size * Lq * Ld`` float32 similarities.

        Args:
          q: [B, Lq, D] query token vectors.
          q_mask: [B, Lq] 1 on scored query tokens.
          k: documents per query (clipped to the corpus size).
          blocks: :meth:`blocks` prepared once (None: padded here, one at a time).

        Returns:
          (scores [B, k] float32, rows [B, k] int64), best first.
        """
        from tqdm.auto import tqdm

        k = min(k, self.n_docs)
        q = np.asarray(q, np.float32)
        q_mask = np.asarray(q_mask, np.int32)
        b = q.shape[0]
        query_batch = min(query_batch, b)  # one query alone is not padded to a batch
        best_s, best_i = np.full((b, k), -np.inf, np.float32), np.full((b, k), -1, np.int64)
        if blocks is None:
            plan = buckets(self.lengths, block_docs, max(int(self.lengths.max(initial=0)), 1), multiple)
            blocks = ((rows, *(jnp.asarray(x) for x in self.padded(rows, length))) for rows, length in plan)
            n_blocks = len(plan)
        else:
            n_blocks = len(blocks)
        for rows, d, m in tqdm(blocks, desc=desc, unit="block", total=n_blocks, disable=desc is None):
            kb = min(k, len(rows))
            for start in range(0, b, query_batch):
                qb, mb = _pad_queries(q[start:start + query_batch], q_mask[start:start + query_batch], query_batch)
                s, i = scoring.maxsim_corpus(jnp.asarray(qb), jnp.asarray(mb), d, m,
                                             chunk_size=min(chunk_size, len(rows)), k=kb)
                end = min(b, start + query_batch)
                s, i = np.asarray(s)[:end - start], rows[np.asarray(i)[:end - start]]
                best_s[start:end], best_i[start:end] = merge_top_k((best_s[start:end], best_i[start:end]), (s, i), k)
        return best_s, best_i

    def score(self, q: np.ndarray, q_mask: np.ndarray, rows: np.ndarray, multiple: int = 16,
              pad_docs: int = 64) -> np.ndarray:
        """Exact MaxSim of one query against documents ``rows`` (reranking, and IVF candidates).

        Args:
          q: [Lq, D] one query's token vectors; q_mask: [Lq].
          rows: int [n] document rows.
          multiple / pad_docs: the padded length and document count are rounded up to these (few compiles).

        Returns:
          float32 [n] scores in the order of ``rows``.
        """
        rows = np.asarray(rows, np.int64)
        if len(rows) == 0:
            return np.zeros(0, np.float32)
        longest = max(int(self.lengths[rows].max()), 1)
        n_pad = -(-len(rows) // pad_docs) * pad_docs
        d, m = self.padded(np.concatenate([rows, np.repeat(rows[:1], n_pad - len(rows))]),
                           -(-longest // multiple) * multiple)
        s = scoring.maxsim_in_batch(jnp.asarray(q[None], jnp.float32), jnp.asarray(q_mask[None], jnp.int32),
                                    jnp.asarray(d), jnp.asarray(m))
        return np.asarray(s)[0, :len(rows)]

    # -- on disk -----------------------------------------------------------------------------------------------

    def save(self, directory: str) -> str:
        """Writes ``vectors.npy``, ``offsets.npy`` (and ``scales.npy``) plus ``store.json`` into ``directory``."""
        os.makedirs(directory, exist_ok=True)
        np.save(os.path.join(directory, "vectors.npy"), self.vectors)
        np.save(os.path.join(directory, "offsets.npy"), self.offsets)
        if self.scales is not None:
            np.save(os.path.join(directory, "scales.npy"), self.scales)
        meta = {"dtype": str(self.vectors.dtype), "n_docs": self.n_docs, "n_tokens": self.n_tokens, "dim": self.dim}
        with open(os.path.join(directory, "store.json"), "w") as f:
            json.dump(meta, f)
        return directory

    @classmethod
    def load(cls, directory: str, mmap: bool = True) -> TokenStore:
        """Reads a saved store; ``mmap=True`` maps the vectors from disk instead of reading them (large corpora)."""
        if not os.path.isfile(os.path.join(directory, "store.json")):
            raise FileNotFoundError(f"{directory} holds no token store (store.json); write one with "
                                    "TokenStore.save or `distill-jax retrieve --index DIR`")
        mode = "r" if mmap else None
        vectors = np.load(os.path.join(directory, "vectors.npy"), mmap_mode=mode)
        offsets = np.load(os.path.join(directory, "offsets.npy"))
        scales_path = os.path.join(directory, "scales.npy")
        scales = np.load(scales_path, mmap_mode=mode) if os.path.exists(scales_path) else None
        return cls(vectors, offsets, scales)


def _pad_queries(q: np.ndarray, m: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Pads a query batch to ``rows`` with copies of its first query (fixed shapes; results dropped)."""
    if len(q) == rows:
        return q, m
    take = np.concatenate([np.arange(len(q)), np.zeros(rows - len(q), np.int64)])
    return q[take], m[take]



# ---------------------------------------------------------------------------------------------------------------
# ColBERT at scale: IVF candidate generation (faiss), then exact MaxSim
# ---------------------------------------------------------------------------------------------------------------


class IVFCandidates:
    """Approximate candidate generation over a :class:`TokenStore` with a faiss IVF index (inner product).

    Each scored query token fetches its ``k_tokens`` nearest stored tokens from ``nprobe`` of ``n_lists``
    clusters; a document is a candidate when one of its tokens is fetched, and candidates are ranked by the sum,
    over query tokens, of their best fetched similarity (0 when none) and cut to ``n_candidates``. The index
    stores each token as 8-bit scalars (``SQ8``: D bytes a token) and holds no copy of the store, which can stay
    memory-mapped on disk for the exact scoring that follows.

    Args:
      store: the token store (its rows are the document rows returned).
      n_lists: IVF clusters (default ~ 4 sqrt(T), as faiss recommends).
      train_tokens: tokens sampled to train the clusters.
      seed: the sample's seed.
    """

    def __init__(self, store: TokenStore, n_lists: int | None = None, train_tokens: int = 100_000, seed: int = 0,
                 add_batch: int = 262_144):
        try:
            import faiss
        except ImportError:
            raise ImportError("IVF candidate generation needs faiss: pip install faiss-cpu") from None
        self.store = store
        self.token_doc = np.repeat(np.arange(store.n_docs, dtype=np.int64), store.lengths)
        t = store.n_tokens
        self.n_lists = int(n_lists or max(1, min(int(4 * np.sqrt(t)), t // 39)))
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(t, size=min(t, max(train_tokens, 39 * self.n_lists)), replace=False))
        self.index = faiss.index_factory(store.dim, f"IVF{self.n_lists},SQ8", faiss.METRIC_INNER_PRODUCT)
        self.index.train(np.ascontiguousarray(store.tokens(sample)))
        for start in range(0, t, add_batch):
            self.index.add(np.ascontiguousarray(store.tokens(np.arange(start, min(t, start + add_batch)))))

    @property
    def nbytes(self) -> int:
        """Approximate bytes of the index (codes, ids, centroids)."""
        return int(self.store.n_tokens * (self.store.dim + 8) + self.n_lists * self.store.dim * 4)

    def candidates(self, q: np.ndarray, q_mask: np.ndarray, n_candidates: int, k_tokens: int = 32,
                   nprobe: int = 8) -> list[np.ndarray]:
        """Candidate document rows of each query, best (approximate) first.

        Args:
          q: [B, Lq, D] query token vectors; q_mask: [B, Lq].
          n_candidates: at most this many documents per query.

        Returns:
          B int64 arrays of document rows.
        """
        self.index.nprobe = nprobe
        out = []
        for vec, mask in zip(np.asarray(q, np.float32), np.asarray(q_mask).astype(bool)):
            sims, ids = self.index.search(np.ascontiguousarray(vec[mask]), k_tokens)  # [Lq', k_tokens]
            n_q = sims.shape[0]
            valid = ids >= 0
            token = np.repeat(np.arange(n_q), k_tokens).reshape(n_q, k_tokens)[valid]
            doc, sim = self.token_doc[ids[valid]], sims[valid]
            # each (document, query token): its best fetched similarity; a document: the sum over query tokens
            key = doc * n_q + token
            order = np.lexsort((-sim, key))
            first = np.r_[True, key[order][1:] != key[order][:-1]]
            rows, inverse = np.unique(key[order][first] // n_q, return_inverse=True)
            approx = np.bincount(inverse, weights=sim[order][first], minlength=len(rows))
            out.append(rows[np.lexsort((rows, -approx))][:n_candidates])
        return out


# ---------------------------------------------------------------------------------------------------------------
# SPLADE: sparse vectors and a sparse matrix product
# ---------------------------------------------------------------------------------------------------------------


def sparse_rows(vectors: np.ndarray, top_k: int = 0):
    """Dense non-negative vectors [B, V] -> a float32 CSR matrix [B, V] of their non-zeros.

    Args:
      top_k: keep only each vector's ``top_k`` largest weights (0: keep all non-zeros); ties at the cut are
        broken by term id.
    """
    import scipy.sparse as sp

    v = np.asarray(vectors, np.float32)
    if top_k and top_k < v.shape[1]:
        values, cols = _top_k(v, top_k)
        v = np.zeros_like(v)
        np.put_along_axis(v, cols, values, 1)
    return sp.csr_matrix(v)


class SparseIndex:
    """SPLADE documents as a CSR matrix [C, V]; scores are sparse dot products (scipy.sparse).

    Args:
      docs: ``scipy.sparse`` matrix [C, V] (any format; stored as CSR float32).
    """

    def __init__(self, docs):
        import scipy.sparse as sp

        self.docs = sp.csr_matrix(docs, dtype=np.float32)
        self._docs_t = self.docs.T.tocsr()  # [V, C]: q @ D^T touches only the query's terms' postings

    @property
    def n_docs(self) -> int:
        return self.docs.shape[0]

    @property
    def nbytes(self) -> int:
        return int(self.docs.data.nbytes + self.docs.indices.nbytes + self.docs.indptr.nbytes)

    def search(self, q, k: int, query_batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` documents of each query row of ``q`` (CSR [B, V]) by dot product.

        Returns:
          (scores [B, k] float32, rows [B, k] int64), best first, equal scores by row.
        """
        out_s, out_i = [], []
        for start in range(0, q.shape[0], query_batch):
            scores = (q[start:start + query_batch] @ self._docs_t).toarray()  # [b, C]
            s, i = top_k(scores, k)
            out_s.append(s)
            out_i.append(i)
        return np.concatenate(out_s), np.concatenate(out_i)

    def score(self, q_row, rows: np.ndarray) -> np.ndarray:
        """Dot products of one query (CSR [1, V]) with documents ``rows`` -> float32 [n]."""
        return np.asarray((self.docs[np.asarray(rows, np.int64)] @ q_row.T).toarray()[:, 0], np.float32)


def mean_nnz(m) -> float:
    """Mean number of non-zeros per row of a sparse matrix."""
    return float(m.nnz / max(m.shape[0], 1))


def sparse_flops(q, d) -> float:
    """Expected multiply-adds of one query-document dot product: ``sum_j p_q(j) p_d(j)``, with ``p(j)`` the share of
    queries (documents) whose term ``j`` is non-zero (Paria et al. 2020's FLOPS; ``q`` [B, V], ``d`` [C, V]
    sparse)."""
    import scipy.sparse as sp

    q, d = sp.csr_matrix(q), sp.csr_matrix(d)
    p_q = np.bincount(q.indices, minlength=q.shape[1]) / max(q.shape[0], 1)
    p_d = np.bincount(d.indices, minlength=d.shape[1]) / max(d.shape[0], 1)
    return float(np.dot(p_q, p_d))


# ---------------------------------------------------------------------------------------------------------------
# Dense: exhaustive dot product
# ---------------------------------------------------------------------------------------------------------------


class DenseIndex:
    """Document embeddings [C, E] float32; scores are dot products through :func:`scoring.dot_corpus`."""

    def __init__(self, vectors: np.ndarray):
        self.vectors = np.asarray(vectors, np.float32)
        self._device = jnp.asarray(self.vectors)

    @property
    def n_docs(self) -> int:
        return self.vectors.shape[0]

    @property
    def nbytes(self) -> int:
        return int(self.vectors.nbytes)

    def search(self, q: np.ndarray, k: int, chunk_size: int = 4096,
               query_batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` documents of each query embedding [B, E]: (scores [B, k] float32, rows [B, k] int64)."""
        k = min(k, self.n_docs)
        out_s, out_i = [], []
        q = np.asarray(q, np.float32)
        for start in range(0, len(q), query_batch):
            qb = q[start:start + query_batch]
            s, i = scoring.dot_corpus(jnp.asarray(qb), self._device, chunk_size=min(chunk_size, self.n_docs), k=k)
            # lax.top_k does not promise an order among equal scores: make it by row, as the other indexes
            s, i = np.asarray(s), np.asarray(i).astype(np.int64)
            order = np.lexsort((i, -s), axis=-1)
            out_s.append(np.take_along_axis(s, order, 1))
            out_i.append(np.take_along_axis(i, order, 1))
        return np.concatenate(out_s), np.concatenate(out_i)

    def score(self, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Dot products of one query embedding [E] with documents ``rows`` -> float32 [n]."""
        return (self.vectors[np.asarray(rows, np.int64)] @ np.asarray(q, np.float32)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Any index on disk
# ---------------------------------------------------------------------------------------------------------------


def save_index(index, directory: str, meta: dict) -> str:
    """Writes a :class:`TokenStore`, :class:`SparseIndex` or :class:`DenseIndex` into ``directory`` with
    ``index.json`` = ``{"type": ..., **meta}`` (``meta`` says what it was built from: model, corpus, settings)."""
    import scipy.sparse as sp

    os.makedirs(directory, exist_ok=True)
    if isinstance(index, TokenStore):
        index.save(directory)
    elif isinstance(index, SparseIndex):
        sp.save_npz(os.path.join(directory, "docs.npz"), index.docs)
    elif isinstance(index, DenseIndex):
        np.save(os.path.join(directory, "vectors.npy"), index.vectors)
    else:
        raise TypeError(f"cannot save a {type(index).__name__}")
    with open(os.path.join(directory, "index.json"), "w") as f:
        json.dump({"type": type(index).__name__, **meta}, f, indent=2)
    return directory


def load_index(directory: str) -> tuple[object, dict]:
    """Reads what :func:`save_index` wrote: (the index, its meta). A token store is memory-mapped.

    Raises:
      FileNotFoundError: ``directory`` holds no ``index.json``.
    """
    import scipy.sparse as sp

    file = os.path.join(directory, "index.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{directory} holds no saved index (index.json)")
    with open(file) as f:
        meta = json.load(f)
    readers = {"TokenStore": TokenStore.load,
               "SparseIndex": lambda d: SparseIndex(sp.load_npz(os.path.join(d, "docs.npz"))),
               "DenseIndex": lambda d: DenseIndex(np.load(os.path.join(d, "vectors.npy")))}
    saved = meta.pop("type")
    if saved not in readers:
        raise ValueError(f"{file}: unknown index type {saved!r}")
    return readers[saved](directory), meta


__all__ = ["TokenStore", "IVFCandidates", "SparseIndex", "DenseIndex", "top_k", "merge_top_k", "quantize_int8",
           "sparse_rows", "mean_nnz", "sparse_flops", "save_index", "load_index", "STORE_DTYPES"]
