"""Scoring kernels vs float64 numpy references; masking invariances; corpus top-k; no recompiles."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax import scoring

RTOL = 1e-5


@pytest.fixture(autouse=True)
def highest_precision():
    # GPUs run float32 matmuls in TF32 by default; the references below are float64.
    with jax.default_matmul_precision("highest"):
        yield


def ref_maxsim_pair(q, qm, d, dm, normalize=False):
    """float64 MaxSim of one query [Lq, D] and one document [Ld, D], with loops over query tokens."""
    q, d = np.asarray(q, np.float64), np.asarray(d, np.float64)
    kept_docs = d[np.asarray(dm, bool)]
    total = 0.0
    for i in range(q.shape[0]):
        if qm[i] and len(kept_docs):
            total += max(float(q[i] @ tok) for tok in kept_docs)
    if normalize:
        total /= max(int(np.sum(qm)), 1)
    return total


def assert_close(got, ref):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape
    scale = max(np.abs(ref).max(), 1.0)
    err = np.abs(got - ref).max() / scale
    assert err < RTOL, f"relative error {err:.2e} >= {RTOL}"


def ragged_mask(rng, shape, min_len=1):
    """Prefix masks of random length along the last axis with random holes (like punctuation) inside."""
    length = shape[-1]
    lens = rng.integers(min_len, length + 1, size=shape[:-1])
    mask = np.arange(length) < lens[..., None]
    holes = rng.random(shape) < 0.2
    holes[..., 0] = False  # keep at least one token where the prefix has one
    return (mask & ~holes).astype(np.int32)


def unit(rng, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture
def colbert_batch():
    rng = np.random.default_rng(0)
    B, N, Lq, Ld, D = 3, 4, 6, 9, 16
    q, d = unit(rng, (B, Lq, D)), unit(rng, (B, N, Ld, D))
    qm = ragged_mask(rng, (B, Lq))
    dm = ragged_mask(rng, (B, N, Ld))
    dm[1, 2] = 0  # a fully masked document
    return q, qm, d, dm


@pytest.mark.parametrize("normalize", [False, True])
def test_maxsim_matches_float64_reference(colbert_batch, normalize):
    q, qm, d, dm = colbert_batch
    got = scoring.maxsim(q, qm, d, dm, normalize_by_query_length=normalize)
    ref = [[ref_maxsim_pair(q[b], qm[b], d[b, n], dm[b, n], normalize) for n in range(d.shape[1])]
           for b in range(q.shape[0])]
    assert got.dtype == jnp.float32
    assert_close(got, ref)
    assert float(got[1, 2]) == 0.0  # a document with no token left scores 0


@pytest.mark.parametrize("normalize", [False, True])
def test_maxsim_in_batch_matches_float64_reference(colbert_batch, normalize):
    q, qm, d, dm = colbert_batch
    flat_d, flat_m = d.reshape(-1, *d.shape[2:]), dm.reshape(-1, dm.shape[-1])
    got = scoring.maxsim_in_batch(q, qm, flat_d, flat_m, normalize_by_query_length=normalize)
    ref = [[ref_maxsim_pair(q[b], qm[b], flat_d[m], flat_m[m], normalize) for m in range(len(flat_d))]
           for b in range(q.shape[0])]
    assert_close(got, ref)
    # The per-candidate scores are the diagonal blocks of the in-batch matrix.
    per_candidate = scoring.maxsim(q, qm, d, dm, normalize_by_query_length=normalize)
    b = np.arange(q.shape[0])
    blocks = np.asarray(got).reshape(len(b), len(b), d.shape[1])[b, b]
    np.testing.assert_allclose(blocks, per_candidate, rtol=1e-6, atol=1e-6)


def test_masked_document_tokens_are_excluded_not_zeroed():
    # Real similarities are all -1; PyLate's multiplicative mask (zero fill) would give 0 per token.
    D = 4
    q = np.zeros((1, 2, D), np.float32)
    q[0, :, 0] = 1.0
    d = np.zeros((1, 1, 3, D), np.float32)
    d[0, 0, :, 0] = -1.0
    qm = np.ones((1, 2), np.int32)
    dm = np.array([[[1, 1, 0]]], np.int32)
    assert float(scoring.maxsim(q, qm, d, dm)[0, 0]) == pytest.approx(-2.0)
    mean = scoring.maxsim(q, qm, d, dm, normalize_by_query_length=True)
    assert float(mean[0, 0]) == pytest.approx(-1.0)


@pytest.mark.parametrize("garbage", [1e30, -1e30, np.inf, np.nan])
def test_padded_positions_never_change_a_score(colbert_batch, garbage):
    q, qm, d, dm = colbert_batch
    clean = scoring.maxsim(q, qm, d, dm)
    clean_ib = scoring.maxsim_in_batch(q, qm, d.reshape(-1, *d.shape[2:]), dm.reshape(-1, dm.shape[-1]))
    q2, d2 = q.copy(), d.copy()
    q2[qm == 0] = garbage
    d2[dm == 0] = garbage
    np.testing.assert_array_equal(scoring.maxsim(q2, qm, d2, dm), clean)
    got_ib = scoring.maxsim_in_batch(q2, qm, d2.reshape(-1, *d.shape[2:]), dm.reshape(-1, dm.shape[-1]))
    np.testing.assert_array_equal(got_ib, clean_ib)
    flat = (d.reshape(-1, *d.shape[2:]), d2.reshape(-1, *d.shape[2:]), dm.reshape(-1, dm.shape[-1]))
    clean_top = scoring.maxsim_corpus(q, qm, flat[0], flat[2], chunk_size=5, k=3)
    got_top = scoring.maxsim_corpus(q2, qm, flat[1], flat[2], chunk_size=5, k=3)
    np.testing.assert_array_equal(got_top[0], clean_top[0])
    np.testing.assert_array_equal(got_top[1], clean_top[1])


def test_maxsim_gradient_is_the_best_document_token_and_finite_with_garbage_padding(colbert_batch):
    q, qm, d, dm = colbert_batch
    d2 = d.copy()
    d2[dm == 0] = np.nan
    grad_q = jax.grad(lambda x: scoring.maxsim(x, qm, d2, dm).sum())(jnp.asarray(q))
    grad_q = np.asarray(grad_q, np.float64)
    ref = np.zeros(q.shape)
    for b in range(q.shape[0]):
        for n in range(d.shape[1]):
            kept = np.flatnonzero(dm[b, n])
            if not len(kept):
                continue
            for i in np.flatnonzero(qm[b]):
                j = kept[np.argmax(d[b, n, kept].astype(np.float64) @ q[b, i].astype(np.float64))]
                ref[b, i] += d[b, n, j]
    assert np.isfinite(grad_q).all()
    np.testing.assert_allclose(grad_q, ref, atol=1e-6)
    # Garbage at padded query positions must not poison the document gradients either.
    q2 = q.copy()
    q2[qm == 0] = np.nan
    grad_d = jax.grad(lambda x: scoring.maxsim(q2, qm, x, dm).sum())(jnp.asarray(d))
    clean = jax.grad(lambda x: scoring.maxsim(q, qm, x, dm).sum())(jnp.asarray(d))
    np.testing.assert_array_equal(grad_d, clean)


def test_dot_kernels_match_float64_reference():
    rng = np.random.default_rng(1)
    B, N, V = 3, 5, 50
    # SPLADE-like: non-negative and mostly zero.
    q = np.maximum(rng.standard_normal((B, V)), 0).astype(np.float32)
    d = np.maximum(rng.standard_normal((B, N, V)) - 1.0, 0).astype(np.float32)
    ref = np.array([[sum(float(q[b, v]) * float(d[b, n, v]) for v in range(V)) for n in range(N)]
                    for b in range(B)])
    assert_close(scoring.sparse_dot(q, d), ref)
    assert_close(scoring.dense_dot(q, d), ref)
    flat = d.reshape(-1, V)
    ref_ib = q.astype(np.float64) @ flat.astype(np.float64).T
    assert_close(scoring.sparse_dot_in_batch(q, flat), ref_ib)
    assert_close(scoring.dense_dot_in_batch(q, flat), ref_ib)


def test_bf16_inputs_accumulate_in_float32(colbert_batch):
    q, qm, d, dm = colbert_batch
    qb, db = jnp.asarray(q, jnp.bfloat16), jnp.asarray(d, jnp.bfloat16)
    # Reference on the bf16-rounded values: products of bf16 numbers are exact in float32, so only the
    # float32 accumulation separates the kernel from float64.
    qr, dr = np.asarray(qb.astype(jnp.float32)), np.asarray(db.astype(jnp.float32))
    got = scoring.maxsim(qb, qm, db, dm)
    assert got.dtype == jnp.float32
    ref = [[ref_maxsim_pair(qr[b], qm[b], dr[b, n], dm[b, n]) for n in range(d.shape[1])]
           for b in range(q.shape[0])]
    assert_close(got, ref)
    vq, vd = qb[:, 0], db[:, :, 0]
    assert_close(scoring.dot(vq, vd), np.einsum("be,bne->bn", qr[:, 0].astype(np.float64), dr[:, :, 0]))


def brute_force_top_k(scores, k):
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), order


@pytest.mark.parametrize("chunk_size,k", [(16, 5), (7, 103), (103, 10), (500, 1), (1, 4)])
def test_maxsim_corpus_equals_brute_force_top_k(chunk_size, k):
    rng = np.random.default_rng(2)
    B, C, Lq, Ld, D = 3, 103, 5, 6, 8  # 103 is prime: no chunk size divides it
    q, corpus = unit(rng, (B, Lq, D)), unit(rng, (C, Ld, D))
    qm, cm = ragged_mask(rng, (B, Lq)), ragged_mask(rng, (C, Ld))
    ref = np.array([[ref_maxsim_pair(q[b], qm[b], corpus[c], cm[c]) for c in range(C)]
                    for b in range(B)])
    ref_s, ref_i = brute_force_top_k(ref, k)
    got_s, got_i = scoring.maxsim_corpus(q, qm, corpus, cm, chunk_size=chunk_size, k=k)
    assert got_i.dtype == jnp.int32 and got_s.shape == (B, k)
    np.testing.assert_array_equal(got_i, ref_i)
    assert_close(got_s, ref_s)


def test_dot_corpus_equals_brute_force_top_k():
    rng = np.random.default_rng(3)
    B, C, E = 4, 97, 12
    q = rng.standard_normal((B, E)).astype(np.float32)
    corpus = rng.standard_normal((C, E)).astype(np.float32)
    ref_s, ref_i = brute_force_top_k(q.astype(np.float64) @ corpus.astype(np.float64).T, 9)
    got_s, got_i = scoring.dot_corpus(q, corpus, chunk_size=10, k=9)
    np.testing.assert_array_equal(got_i, ref_i)
    assert_close(got_s, ref_s)


def test_corpus_ties_keep_the_lower_index_first():
    q, corpus = np.ones((2, 4), np.float32), np.ones((11, 4), np.float32)
    _, idx = scoring.dot_corpus(q, corpus, chunk_size=3, k=7)
    np.testing.assert_array_equal(idx, np.tile(np.arange(7), (2, 1)))


def test_corpus_rejects_impossible_k():
    q, corpus = np.ones((1, 4), np.float32), np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="k=4 must be between 1 and the corpus size 3"):
        scoring.dot_corpus(q, corpus, chunk_size=2, k=4)


@contextlib.contextmanager
def count_compiles():
    events = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            events.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def test_second_call_with_same_shapes_does_not_recompile():
    rng = np.random.default_rng(4)
    B, N, Lq, Ld, D, C = 2, 3, 4, 5, 8, 29

    def inputs():
        return (unit(rng, (B, Lq, D)), ragged_mask(rng, (B, Lq)), unit(rng, (B, N, Ld, D)),
                ragged_mask(rng, (B, N, Ld)), unit(rng, (C, Ld, D)), ragged_mask(rng, (C, Ld)))

    def run_all(q, qm, d, dm, corpus, cm):
        jax.block_until_ready((
            scoring.maxsim(q, qm, d, dm),
            scoring.maxsim_in_batch(q, qm, d.reshape(-1, Ld, D), dm.reshape(-1, Ld)),
            scoring.maxsim_corpus(q, qm, corpus, cm, chunk_size=8, k=3),
            scoring.dot_corpus(q[:, 0], corpus[:, 0], chunk_size=8, k=3),
        ))

    with count_compiles() as first:
        run_all(*inputs())
    with count_compiles() as second:
        run_all(*inputs())
    assert len(first) >= 4  # the counter does see compilations
    assert second == []
