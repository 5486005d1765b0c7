"""Relevance scores of students: late-interaction MaxSim (ColBERT), vector dot products (SPLADE, dense).

Pure ``jax.numpy``, vectorised, masked, jit-compiled (static shapes: one compile per shape). Three
families:

- per-candidate: each query against its own N candidates -> [B, N] (distillation losses);
- in-batch: every query against every document of the batch -> [B, M] (in-batch negatives);
- corpus: every query against a whole corpus, scanned in chunks with a running top-k -> ([B, k], [B, k])
  (evaluation), never holding all [B, C, Lq, Ld] similarities.

Masking convention (see docs/scoring.md). A query token with ``q_mask == 0`` contributes nothing. A
document token with ``d_mask == 0`` is excluded from the max by filling its similarity with -inf
*before* the max (as Stanford ColBERT and sentence-transformers v6 do), not multiplied by zero as PyLate
does: with a zero fill, a masked token beats every genuinely negative similarity. A document with no
unmasked token scores 0. Padded positions are also zeroed before the matmul, so garbage (even inf or
NaN) there never reaches a score or a gradient. Accumulation is float32 whatever the input dtype.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def _zero_padding(x: Array, mask: Array) -> Array:
    """Zeroes the vectors [..., L, D] at positions where ``mask`` [..., L] is 0."""
    return jnp.where(mask.astype(bool)[..., None], x, jnp.zeros((), x.dtype))


def _maxsim_reduce(sim: Array, q_mask: Array, d_mask: Array, normalize_by_query_length: bool) -> Array:
    """Masked max over document tokens, then masked sum (or mean) over query tokens.

    Args:
      sim: [..., Lq, Ld] float32 token similarities.
      q_mask: [..., Lq] query mask, broadcastable against ``sim[..., 0]``.
      d_mask: [..., Ld] document mask, broadcastable against ``sim[..., 0, :]``.
      normalize_by_query_length: divide by the number of unmasked query tokens (MeanMaxSim).

    Returns:
      [...] float32 scores.
    """
    q_mask = q_mask.astype(bool)
    d_mask = d_mask.astype(bool)
    best = jnp.max(jnp.where(d_mask[..., None, :], sim, -jnp.inf), axis=-1)  # [..., Lq]
    # A document with no token left would give -inf for every query token; it scores 0 instead.
    best = jnp.where(jnp.any(d_mask, axis=-1)[..., None], best, 0.0)
    score = jnp.sum(jnp.where(q_mask, best, 0.0), axis=-1)
    if normalize_by_query_length:
        score = score / jnp.maximum(jnp.sum(q_mask, axis=-1), 1).astype(jnp.float32)
    return score


@functools.partial(jax.jit, static_argnames="normalize_by_query_length")
def maxsim(q: Array, q_mask: Array, d: Array, d_mask: Array,
           normalize_by_query_length: bool = False) -> Array:
    """MaxSim of each query against its own N candidates.

    ``score[b, n] = sum_i q_mask[b, i] * max_{j: d_mask[b, n, j]} <q[b, i], d[b, n, j]>``.

    Args:
      q: [B, Lq, D] query token vectors (any float dtype).
      q_mask: [B, Lq] 1 on scored query tokens.
      d: [B, N, Ld, D] candidate document token vectors.
      d_mask: [B, N, Ld] 1 on scored document tokens.
      normalize_by_query_length: the mean over scored query tokens instead of the sum (MeanMaxSim).

    Returns:
      [B, N] float32 scores.
    """
    q = _zero_padding(q, q_mask)
    d = _zero_padding(d, d_mask)
    sim = jnp.einsum("bqe,bnke->bnqk", q, d, preferred_element_type=jnp.float32)
    return _maxsim_reduce(sim, q_mask[:, None, :], d_mask, normalize_by_query_length)


@functools.partial(jax.jit, static_argnames="normalize_by_query_length")
def maxsim_in_batch(q: Array, q_mask: Array, d: Array, d_mask: Array,
                    normalize_by_query_length: bool = False) -> Array:
    """MaxSim of every query against every document of the batch (in-batch negatives).

    Args:
      q: [B, Lq, D] query token vectors.
      q_mask: [B, Lq] 1 on scored query tokens.
      d: [M, Ld, D] document token vectors (e.g. the B x N candidates flattened to M = B * N).
      d_mask: [M, Ld] 1 on scored document tokens.
      normalize_by_query_length: MeanMaxSim instead of the sum.

    Returns:
      [B, M] float32 scores.
    """
    q = _zero_padding(q, q_mask)
    d = _zero_padding(d, d_mask)
    sim = jnp.einsum("bqe,mke->bmqk", q, d, preferred_element_type=jnp.float32)
    return _maxsim_reduce(sim, q_mask[:, None, :], d_mask[None], normalize_by_query_length)


@jax.jit
def dot(q: Array, d: Array) -> Array:
    """Dot product of each query vector with its own N candidates (SPLADE [V] or dense [E] vectors).

    Args:
      q: [B, V] query vectors.
      d: [B, N, V] candidate vectors.

    Returns:
      [B, N] float32 scores.
    """
    return jnp.einsum("bv,bnv->bn", q, d, preferred_element_type=jnp.float32)


@jax.jit
def dot_in_batch(q: Array, d: Array) -> Array:
    """Dot product of every query vector with every document vector of the batch.

    Args:
      q: [B, V] query vectors.
      d: [M, V] document vectors.

    Returns:
      [B, M] float32 scores.
    """
    return jnp.einsum("bv,mv->bm", q, d, preferred_element_type=jnp.float32)


# SPLADE and dense students score the same way; the names say which representation a caller holds.
sparse_dot = dense_dot = dot
sparse_dot_in_batch = dense_dot_in_batch = dot_in_batch


def _chunked_top_k(score_chunk: Callable[[Array, int], Array], n_queries: int, n_docs: int,
                   chunk_size: int, k: int) -> tuple[Array, Array]:
    """Scans a corpus in chunks keeping a running top-k per query.

    The corpus is never padded or copied: every chunk is a ``dynamic_slice`` of ``chunk`` documents, and
    the last one slides back to end at ``n_docs``; the documents it re-reads were scored by the chunk
    before and are set to -inf, so each document enters the top-k at most once.

    Args:
      score_chunk: ``(start, size) -> [B, size]`` float32 scores of documents ``start`` to
        ``start + size - 1``.
      n_queries: B.
      n_docs: C, the corpus size.
      chunk_size: documents scored per step (bounds the working memory).
      k: how many documents to keep per query (1 <= k <= C).

    Returns:
      (scores [B, k] float32 in decreasing order, indices [B, k] int32 into the corpus).
    """
    if not 1 <= k <= n_docs:
        raise ValueError(f"k={k} must be between 1 and the corpus size {n_docs}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be positive")
    chunk = min(chunk_size, n_docs)
    n_chunks = -(-n_docs // chunk)

    def step(carry, i):
        best_s, best_i = carry
        nominal = i * chunk
        start = jnp.minimum(nominal, n_docs - chunk)
        ids = start + jnp.arange(chunk, dtype=jnp.int32)
        s = jnp.where(ids >= nominal, score_chunk(start, chunk), -jnp.inf)
        cand_s = jnp.concatenate([best_s, s], axis=1)
        cand_i = jnp.concatenate([best_i, jnp.broadcast_to(ids, s.shape)], axis=1)
        top_s, pos = lax.top_k(cand_s, k)
        return (top_s, jnp.take_along_axis(cand_i, pos, axis=1)), None

    init = (jnp.full((n_queries, k), -jnp.inf, jnp.float32), jnp.full((n_queries, k), -1, jnp.int32))
    (scores, indices), _ = lax.scan(step, init, jnp.arange(n_chunks, dtype=jnp.int32))
    return scores, indices


@functools.partial(jax.jit, static_argnames=("chunk_size", "k", "normalize_by_query_length"))
def maxsim_corpus(q: Array, q_mask: Array, corpus: Array, corpus_mask: Array, chunk_size: int, k: int,
                  normalize_by_query_length: bool = False) -> tuple[Array, Array]:
    """Top-k documents of a whole corpus for each query by MaxSim, scanning the corpus in chunks.

    Working memory is about ``B * chunk_size * Lq * Ld`` float32 similarities, whatever C is.

    Args:
      q: [B, Lq, D] query token vectors.
      q_mask: [B, Lq] 1 on scored query tokens.
      corpus: [C, Ld, D] document token vectors (bf16/fp16 halves the memory of a large corpus).
      corpus_mask: [C, Ld] 1 on scored document tokens.
      chunk_size: documents per scan step (C need not be a multiple of it).
      k: documents kept per query, 1 <= k <= C.
      normalize_by_query_length: MeanMaxSim instead of the sum.

    Returns:
      (scores [B, k] float32, decreasing; indices [B, k] int32 into the corpus).
    """
    q = _zero_padding(q, q_mask)

    def score_chunk(start, size):
        d = lax.dynamic_slice_in_dim(corpus, start, size, axis=0)
        m = lax.dynamic_slice_in_dim(corpus_mask, start, size, axis=0)
        sim = jnp.einsum("bqe,mke->bmqk", q, _zero_padding(d, m), preferred_element_type=jnp.float32)
        return _maxsim_reduce(sim, q_mask[:, None, :], m[None], normalize_by_query_length)

    return _chunked_top_k(score_chunk, q.shape[0], corpus.shape[0], chunk_size, k)


@functools.partial(jax.jit, static_argnames=("chunk_size", "k"))
def dot_corpus(q: Array, corpus: Array, chunk_size: int, k: int) -> tuple[Array, Array]:
    """Top-k documents of a corpus for each query by dot product (SPLADE or dense vectors), in chunks.

    Args:
      q: [B, V] query vectors.
      corpus: [C, V] document vectors.
      chunk_size: documents per scan step (C need not be a multiple of it).
      k: documents kept per query, 1 <= k <= C.

    Returns:
      (scores [B, k] float32, decreasing; indices [B, k] int32 into the corpus).
    """

    def score_chunk(start, size):
        return dot_in_batch(q, lax.dynamic_slice_in_dim(corpus, start, size, axis=0))

    return _chunked_top_k(score_chunk, q.shape[0], corpus.shape[0], chunk_size, k)
