"""Retrieval (distill_jax.eval.retrieve / index / encoding) and evaluation (eval.metrics, cli.evaluate).

Oracles are independent of the code under test: float64 numpy MaxSim / dot products over texts encoded one
fixed-length batch at a time with ``distill_jax.data.tokenize.encode_*`` (no length buckets), set intersections for
SPLADE FLOPS, hand-computed metric values.
"""

import dataclasses
import json

import jax
import numpy as np
import pytest
import scipy.sparse as sp

from distill_jax.data import candidates as cd
from distill_jax.data import tokenize as tk
from distill_jax.eval import index as ix
from distill_jax.eval import metrics
from distill_jax.eval import retrieve as rt
from distill_jax.eval.encoding import buckets
from distill_jax.models import ColBERTConfig, EncoderConfig, build_model, init_params

N_DOCS, N_QUERIES, DOC_MAXLEN = 40, 8, 192


@pytest.fixture(scope="module")
def tok(minilm_dir):
    return tk.load_tokenizer(minilm_dir)


@pytest.fixture(scope="module")
def corpus(shared_data, tok):
    """40 SciFact documents spread over the lengths of the first 400 (real text, 97 to 550 tokens: two length
    buckets below DOC_MAXLEN, truncation above it) and 8 test queries."""
    from distill_jax.data.collections import load_collection

    col = load_collection(str(shared_data / "scifact"), "test")
    ids, texts = col.passages()
    lengths = tk.tokenize_bodies(tok, texts[:400], 8).lengths
    order = np.argsort(lengths, kind="stable")
    pick = sorted(np.concatenate([order[:32:2], order[32::15]])[:N_DOCS])
    return [ids[i] for i in pick], [texts[i] for i in pick], dict(list(col.queries.items())[:N_QUERIES])


@pytest.fixture(scope="module")
def enc():
    """A tiny random encoder over the real 30,522-token vocabulary (so the MiniLM tokenizer's ids fit)."""
    return EncoderConfig(vocab_size=30522, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                         max_position_embeddings=512)


def _model(kind, enc, tok, seed=0, **options) -> rt.RetrievalModel:
    model = build_model(kind, enc, **options)
    params = init_params(model, jax.random.key(seed))
    return rt.RetrievalModel(kind, model, params, tok, query_maxlen=64, doc_maxlen=DOC_MAXLEN, pair_maxlen=128,
                             source="tiny random")


def _apply(rm, batch):
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    return np.asarray(rm.model.apply({"params": rm.params}, inputs), np.float64)


def _assert_same_ranking(scores, rows, oracle: np.ndarray, k: int, atol: float):
    """``(scores, rows)`` [B, k] equal the top-k of the float64 ``oracle`` [B, C]: scores within ``atol`` and the
    same documents in the same order, except where the oracle itself ties within ``atol``."""
    for b in range(oracle.shape[0]):
        order = np.lexsort((np.arange(oracle.shape[1]), -oracle[b]))[:k]
        np.testing.assert_allclose(scores[b], oracle[b, order], atol=atol, rtol=0)
        for pos in np.nonzero(rows[b] != order)[0]:  # a swap is only allowed between (near-)equal scores
            assert abs(oracle[b, rows[b, pos]] - oracle[b, order[pos]]) <= atol, (b, pos)


# ---------------------------------------------------------------------------------------------------------------
# ColBERT
# ---------------------------------------------------------------------------------------------------------------


def _colbert_oracle(rm, doc_texts, q_texts):
    """float64 MaxSim of every query with every document, each side encoded at its full fixed length."""
    cfg = rm.colbert
    qb = tk.encode_colbert_queries(rm.tokenizer, q_texts, cfg)
    db = tk.encode_colbert_documents(rm.tokenizer, doc_texts, cfg)
    q, d = _apply(rm, qb), _apply(rm, db)
    docs = [d[i][db["score_mask"][i].astype(bool)] for i in range(len(doc_texts))]
    return q, qb["score_mask"], docs


def _maxsim64(q, q_mask, docs):
    out = np.zeros((len(q), len(docs)))
    for b in range(len(q)):
        qv = q[b][q_mask[b].astype(bool)]
        for c, dv in enumerate(docs):
            out[b, c] = (qv @ dv.T).max(axis=1).sum() if len(dv) else 0.0
    return out


@pytest.fixture(scope="module")
def colbert(enc, tok):
    return _model("colbert", enc, tok, colbert=ColBERTConfig(dim=16, doc_maxlen=DOC_MAXLEN))


@pytest.fixture(scope="module")
def colbert_store(colbert, corpus):
    return rt.encode_corpus(colbert, corpus[1], batch_size=8, desc=None)


def test_colbert_exhaustive_equals_float64_brute_force(corpus, colbert, colbert_store):
    ids, texts, queries = corpus
    rm, store = colbert, colbert_store
    q_texts = list(queries.values())
    q_ref, qm_ref, docs_ref = _colbert_oracle(rm, texts, q_texts)

    # length buckets really were used (real text spans several frame lengths) ...
    lengths, _, _ = rt.text_frames(rm, texts, "doc")
    assert len({n for _, n in buckets(lengths, 8, DOC_MAXLEN)}) > 1
    # ... and change nothing: exactly the scored tokens are stored (no padding, no punctuation), to fp16 accuracy
    assert store.vectors.dtype == np.float16
    np.testing.assert_array_equal(store.lengths, [len(d) for d in docs_ref])
    for c in range(N_DOCS):
        np.testing.assert_allclose(store.tokens(np.arange(store.offsets[c], store.offsets[c + 1])), docs_ref[c],
                                   atol=1e-3, rtol=0)
    # bytes per token: 2 bytes a dimension plus the offsets
    assert store.bytes_per_token == pytest.approx(2 * 16 + 8 * (N_DOCS + 1) / store.n_tokens)

    q, qm = rt.encode_queries(rm, q_texts)
    np.testing.assert_allclose(q, q_ref, atol=1e-5)
    # the oracle scores the stored (float16) vectors in float64: differences are float32 accumulation only
    stored = [np.float64(d.astype(np.float16)) for d in docs_ref]
    oracle = _maxsim64(q_ref, qm_ref, stored)
    scores, rows = store.search(q, qm, k=10, block_docs=16, chunk_size=8)  # several blocks, several chunks
    _assert_same_ranking(scores, rows, oracle, 10, atol=1e-4)
    # and it is a real ranking: the top document beats the tenth by far more than the tolerance
    assert np.all(scores[:, 0] - scores[:, 9] > 1e-2)


def test_colbert_int8_store(corpus, colbert, colbert_store):
    ids, texts, queries = corpus
    rm, f16 = colbert, colbert_store
    i8 = rt.encode_corpus(rm, texts, batch_size=8, store_dtype="int8", desc=None)
    assert i8.vectors.dtype == np.int8 and i8.scales.dtype == np.float16
    assert i8.bytes_per_token == pytest.approx(16 + 2 + 8 * (N_DOCS + 1) / i8.n_tokens)
    every = np.arange(f16.n_tokens)
    err = np.abs(i8.tokens(every) - f16.tokens(every)).max(axis=1)
    assert np.all(err <= i8.scales.astype(np.float32) * 0.51 + 1e-3)  # half a quantisation step (+ fp16 of f16)
    q, qm = rt.encode_queries(rm, list(queries.values()))
    s16, r16 = f16.search(q, qm, 5)
    s8, r8 = i8.search(q, qm, 5)
    np.testing.assert_allclose(s8, s16, atol=0.05)
    # each query's int8 search equals exact MaxSim over the int8 store (score() is the reranking path)
    for b in range(len(q)):
        np.testing.assert_allclose(i8.score(q[b], qm[b], r8[b]), s8[b], atol=1e-5)


def test_token_store_save_load_mmap(colbert_store, tmp_path):
    store = colbert_store
    back = ix.TokenStore.load(store.save(str(tmp_path / "store")))
    assert isinstance(back.vectors, np.memmap)
    np.testing.assert_array_equal(back.vectors, store.vectors)
    np.testing.assert_array_equal(back.offsets, store.offsets)


# ---------------------------------------------------------------------------------------------------------------
# SPLADE
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def splade(enc, tok):
    return _model("splade", enc, tok)


def test_splade_sparse_retrieval_equals_dense_dot(corpus, splade, tok):
    ids, texts, queries = corpus
    rm = splade
    q_texts = list(queries.values())
    index = rt.encode_corpus(rm, texts, batch_size=8, desc=None)
    d_ref = _apply(rm, tk.encode_texts(tok, texts, DOC_MAXLEN))
    q_ref = _apply(rm, tk.encode_texts(tok, q_texts, 64))
    np.testing.assert_allclose(index.docs.toarray(), d_ref, rtol=1e-5, atol=1e-4)
    q = rt.encode_queries(rm, q_texts)
    oracle = q_ref @ d_ref.T
    scores, rows = index.search(q, k=10)
    _assert_same_ranking(scores, rows, oracle, 10, atol=1e-3 * np.abs(oracle).max() * 1e-2)
    np.testing.assert_allclose(index.score(q[0], rows[0]), scores[0], rtol=1e-6)


def test_splade_pruning_and_flops(corpus, splade, tok):
    ids, texts, queries = corpus
    rm = splade
    index = rt.encode_corpus(rm, texts, batch_size=8, splade_top_k=40, desc=None)
    q = rt.encode_queries(rm, list(queries.values()), splade_top_k=10)
    assert np.all(np.diff(index.docs.indptr) == 40) and np.all(np.diff(q.indptr) == 10)
    # the pruned vector keeps exactly the 40 largest weights of the full one
    full = _apply(rm, tk.encode_texts(tok, texts, DOC_MAXLEN))
    for c in (0, 7):
        kept = index.docs[c].indices
        assert set(kept) == set(np.argsort(-full[c], kind="stable")[:40])
        np.testing.assert_allclose(index.docs[c].data, full[c][kept], rtol=1e-5)
    # pruned retrieval still equals the dense dot product of the pruned vectors
    oracle = np.float64(q.toarray()) @ np.float64(index.docs.toarray()).T
    scores, rows = index.search(q, k=5)
    _assert_same_ranking(scores, rows, oracle, 5, atol=1e-4 * np.abs(oracle).max())
    # FLOPS = expected |terms(q) & terms(d)| over all query-document pairs
    qs = [set(q[i].indices) for i in range(q.shape[0])]
    ds = [set(index.docs[i].indices) for i in range(index.docs.shape[0])]
    expected = np.mean([len(a & b) for a in qs for b in ds])
    assert ix.sparse_flops(q, index.docs) == pytest.approx(expected, rel=1e-12)
    assert 0 < expected < 10
    assert ix.mean_nnz(index.docs) == 40.0


def test_sparse_flops_hand_example():
    q = sp.csr_matrix(np.array([[1, 0, 2, 0], [0, 0, 1, 1]], np.float32))
    d = sp.csr_matrix(np.array([[1, 1, 0, 0], [0, 0, 3, 0], [0, 1, 1, 1]], np.float32))
    # p_q = (.5, 0, 1, .5), p_d = (1/3, 2/3, 2/3, 1/3): sum = 1/6 + 2/3 + 1/6 = 1
    assert ix.sparse_flops(q, d) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------------------
# Dense
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dense(enc, tok):
    return _model("dense", enc, tok, pooling="mean", normalize=True)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_dense_exhaustive_equals_float64(corpus, enc, tok, dense, pooling):
    ids, texts, queries = corpus
    rm = dense if pooling == "mean" else _model("dense", enc, tok, pooling="cls")
    index = rt.encode_corpus(rm, texts, batch_size=8, desc=None)
    d_ref = _apply(rm, tk.encode_texts(tok, texts, DOC_MAXLEN))
    np.testing.assert_allclose(index.vectors, d_ref, atol=1e-5)
    q = rt.encode_queries(rm, list(queries.values()))
    oracle = _apply(rm, tk.encode_texts(tok, list(queries.values()), 64)) @ d_ref.T
    scores, rows = index.search(q, k=10, chunk_size=7)
    _assert_same_ranking(scores, rows, oracle, 10, atol=1e-5)


def test_asymmetric_retrieval_queries_by_one_model_documents_by_another(corpus, enc, tok, dense):
    """``doc_model``: the corpus encoded by a second dense model (a LEAF student's teacher), the queries by the
    first; the run's scores are the float64 dot products of the two models' vectors; another kind is refused."""
    ids, texts, queries = corpus
    other = _model("dense", enc, tok, seed=3)
    run, report = rt.retrieve(dense, ids, texts, queries, depth=5, latency_queries=0, progress=False,
                              doc_model=other)
    q = _apply(dense, tk.encode_texts(tok, list(queries.values()), 64))
    d = _apply(other, tk.encode_texts(tok, texts, DOC_MAXLEN))
    oracle = q @ d.T
    for b, qid in enumerate(queries):
        order = np.lexsort((np.arange(len(ids)), -oracle[b]))[:5]
        np.testing.assert_allclose([s for _, s in run[qid]], oracle[b, order], atol=1e-5)
    assert report.extra["documents encoded by"] == "tiny random"
    symmetric, _ = rt.retrieve(dense, ids, texts, queries, depth=5, latency_queries=0, progress=False)
    assert symmetric != run  # the documents' model matters
    with pytest.raises(ValueError, match="needs one kind"):
        rt.retrieve(dense, ids, texts, queries, depth=5, latency_queries=0, progress=False,
                    doc_model=_model("splade", enc, tok))


def test_retrieve_writes_a_deterministic_run(corpus, dense, tmp_path):
    ids, texts, queries = corpus
    rm = dense
    run, report = rt.retrieve(rm, ids, texts, queries, depth=7, latency_queries=2, progress=False)
    assert list(run) == list(queries) and all(len(r) == 7 for r in run.values())
    assert report.n_docs == N_DOCS and report.docs_per_second > 0 and report.latency_ms > 0
    path = cd.write_trec_run(str(tmp_path / "dense.trec"), run, "dense")
    back = cd.read_trec_run(path)
    assert list(back) == list(run)
    for q in run:
        assert [d for d, _ in back[q]] == [d for d, _ in run[q]]
        np.testing.assert_allclose([s for _, s in back[q]], [s for _, s in run[q]], atol=1e-6)
    lines = open(path).read().split("\n")
    first = lines[0].split()
    assert first[1] == "Q0" and first[3] == "1" and first[5] == "dense"


def test_to_run_breaks_ties_by_doc_id():
    scores = np.array([[2.0, 1.0, 1.0, 1.0]], np.float32)
    rows = np.array([[3, 0, 2, 1]])
    run = rt.to_run(["q"], ["d9", "d1", "d5", "d0"], scores, rows)
    assert run == {"q": [("d0", 2.0), ("d1", 1.0), ("d5", 1.0), ("d9", 1.0)]}


def test_top_k_ties_and_merge():
    s = np.array([[1.0, 3.0, 3.0, 0.5, 3.0]])
    top_s, top_i = ix.top_k(s, 2)
    np.testing.assert_array_equal(top_i, [[1, 2]])  # ties by column, even across the partition
    merged = ix.merge_top_k((np.array([[3.0, 1.0]]), np.array([[7, 2]])), (np.array([[3.0, 2.0]]), np.array([[4, 9]])),
                            3)
    np.testing.assert_array_equal(merged[1], [[4, 7, 9]])


# ---------------------------------------------------------------------------------------------------------------
# Reranking
# ---------------------------------------------------------------------------------------------------------------


def test_rerank_cross_encoder_equals_pair_logits(corpus, enc, tok):
    ids, texts, queries = corpus
    rm = _model("cross_encoder", enc, tok)
    passages = dict(zip(ids, texts))
    rng = np.random.default_rng(0)
    cands = {q: list(rng.choice(ids, 6, replace=False)) for q in list(queries)[:4]}
    run = rt.rerank(rm, queries, passages, cands, batch_size=8, progress=False)
    for q, docs in cands.items():
        ref = _apply(rm, tk.encode_pairs(tok, [queries[q]] * len(docs), [passages[d] for d in docs], 128))
        expect = sorted(zip(docs, ref), key=lambda x: (-x[1], x[0]))
        assert [d for d, _ in run[q]] == [d for d, _ in expect]
        np.testing.assert_allclose([s for _, s in run[q]], [s for _, s in expect], atol=1e-5)


@pytest.mark.parametrize("kind", ["colbert", "dense"])
def test_rerank_bi_encoder_equals_retrieval_scores(corpus, colbert, dense, kind):
    ids, texts, queries = corpus
    rm = colbert if kind == "colbert" else dense
    full, _ = rt.retrieve(rm, ids, texts, queries, depth=N_DOCS, latency_queries=0, progress=False)
    # rerank a reversed, truncated candidate list: same scores, order restored
    cands = {q: [d for d, _ in r[:12]][::-1] for q, r in full.items()}
    run = rt.rerank(rm, queries, dict(zip(ids, texts)), cands, progress=False)
    for q in queries:
        assert [d for d, _ in run[q]] == [d for d, _ in full[q][:12]]
        np.testing.assert_allclose([s for _, s in run[q]], [s for _, s in full[q][:12]], atol=1e-4)


@pytest.mark.parametrize("kind", ["colbert", "splade", "cross_encoder"])
def test_reranker_called_with_params_equals_a_model_holding_them(corpus, enc, tok, kind):
    """The validation path: a Reranker built once without params and called with each step's params scores
    what a model holding those params scores (one compiled apply, parameters swapped)."""
    ids, texts, queries = corpus
    options = {"colbert": ColBERTConfig(dim=16, doc_maxlen=DOC_MAXLEN)} if kind == "colbert" else {}
    a, b = _model(kind, enc, tok, seed=1, **options), _model(kind, enc, tok, seed=2, **options)
    passages = dict(zip(ids, texts))
    q_texts = list(queries.values())[:3]
    cands = [ids[i:i + 5] for i in (0, 7, 30)]
    blank = rt.Reranker(dataclasses.replace(a, params=None), q_texts, cands, passages.__getitem__, batch_size=8)
    for rm in (a, b):
        want = rt.Reranker(rm, q_texts, cands, passages.__getitem__, batch_size=8)()
        got = blank(rm.params)
        assert [len(g) for g in got] == [5, 5, 5]
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
    assert not np.allclose(blank(a.params)[0], blank(b.params)[0])  # the params really changed


def test_cross_encoder_cannot_index(corpus, enc, tok):
    rm = _model("cross_encoder", enc, tok)
    with pytest.raises(ValueError, match="rerank"):
        rt.encode_corpus(rm, corpus[1][:2], desc=None)


# ---------------------------------------------------------------------------------------------------------------
# Evaluation: the table and the JSON are evaluate_run's numbers
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_qrels(tmp_path):
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td5\t1\nq2\td6\t1\n")
    return tmp_path


def test_evaluate_cli_table_and_json(tiny_qrels, tmp_path, capsys):
    from distill_jax.cli import main as dispatch
    from distill_jax.cli.evaluate import main

    a = {"q1": [("d2", 3.0), ("d1", 2.0)], "q2": [("d5", 1.0)]}  # q1: first hit at rank 2; q2: 1 of 2 at rank 1
    b = {"q1": [("d1", 1.0)]}  # q2 missing: counts 0
    cd.write_trec_run(str(tmp_path / "a.trec"), a)
    cd.write_trec_run(str(tmp_path / "b.trec"), b)
    out_json = tmp_path / "m.json"
    assert main(["--collection", str(tiny_qrels), "--split", "test", "--run", str(tmp_path / "a.trec"),
                 "--run", str(tmp_path / "b.trec"), "--json", str(out_json)]) == 0
    table = capsys.readouterr().out
    data = json.loads(out_json.read_text())
    assert data["measures"] == ["nDCG@10", "MRR@10", "R@100", "MAP"]
    qrels = {"q1": {"d1": 1}, "q2": {"d5": 1, "d6": 1}}
    for name, run in (("a", a), ("b", b)):
        ref = metrics.evaluate_run(qrels, cd.as_scores(run), metrics.REPORT_MEASURES)
        assert data["runs"][name] == pytest.approx({metrics.LABELS.get(k, k): v for k, v in ref.items()}, abs=0)
        row = next(line for line in table.splitlines() if line.split()[0] == name)
        assert [float(x) for x in row.split()[1:]] == pytest.approx(list(ref.values()), abs=5e-5)
    # hand values: a: MRR = (1/2 + 1) / 2, MAP = (1/2 + 1/2) / 2, R@100 = (1 + 1/2) / 2
    assert data["runs"]["a"]["MRR@10"] == pytest.approx(0.75)
    assert data["runs"]["a"]["MAP"] == pytest.approx(0.5)
    assert data["runs"]["a"]["R@100"] == pytest.approx(0.75)
    ndcg_q2 = 1.0 / (1.0 + 1.0 / np.log2(3))
    assert data["runs"]["a"]["nDCG@10"] == pytest.approx((1 / np.log2(3) + ndcg_q2) / 2)
    assert data["runs"]["b"]["MRR@10"] == pytest.approx(0.5)
    # and through the dispatcher
    assert dispatch(["evaluate", "--collection", str(tiny_qrels), "--run", str(tmp_path / "b.trec")]) == 0


def test_run_names_disambiguate(tmp_path):
    assert metrics.run_names(["x/bm25.trec", "y/dense.trec"]) == ["bm25", "dense"]
    assert metrics.run_names(["x/run.trec", "y/run.trec"]) == ["x/run", "y/run"]


# ---------------------------------------------------------------------------------------------------------------
# The command line, end to end on a made-up collection with the real MiniLM (dense, as it ships)
# ---------------------------------------------------------------------------------------------------------------


def test_retrieve_cli_minilm_dense(minilm_dir, tmp_path, capsys):
    from distill_jax.cli import main as dispatch

    docs = ["The cat sat on the mat.", "Stock markets fell sharply on Monday.", "Photosynthesis turns light into "
            "chemical energy in plants.", "The football match ended in a draw.", "Vaccines train the immune system.",
            "A recipe for apple pie with cinnamon."]
    queries = ["how do plants make energy from light", "immune response to vaccination", "cinnamon apple dessert"]
    gold = ["d2", "d4", "d5"]
    col = tmp_path / "col"
    (col / "qrels").mkdir(parents=True)
    (col / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "title": "", "text": t}) + "\n"
                                              for i, t in enumerate(docs)))
    (col / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": t}) + "\n"
                                               for i, t in enumerate(queries)))
    (col / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"q{i}\t{g}\t1\n" for i, g in enumerate(gold)))
    out = tmp_path / "minilm.trec"
    assert dispatch(["retrieve", "--model", minilm_dir, "--collection", str(col), "--out", str(out), "--depth", "3",
                     "--latency-queries", "0", "--report", str(tmp_path / "r.json")]) == 0
    printed = capsys.readouterr().out
    assert "docs/s" in printed and "ms/query" in printed
    run = cd.read_trec_run(str(out))
    assert [run[f"q{i}"][0][0] for i in range(3)] == gold  # the ST layout's mean pooling + Normalize are used
    assert all(len(r) == 3 for r in run.values())
    assert all(s <= 1.0 + 1e-5 for r in run.values() for _, s in r)  # cosine scores: normalised embeddings
    assert json.loads((tmp_path / "r.json").read_text())["kind"] == "dense"


# ---------------------------------------------------------------------------------------------------------------
# ColBERT IVF candidates (faiss), and loading a training work directory
# ---------------------------------------------------------------------------------------------------------------


def test_ivf_candidates_then_exact_maxsim(corpus, colbert, colbert_store):
    pytest.importorskip("faiss")
    _, _, queries = corpus
    store = colbert_store
    q, qm = rt.encode_queries(colbert, list(queries.values()))
    exact_s, exact_r = store.search(q, qm, 10)
    ivf = ix.IVFCandidates(store, n_lists=4)
    # probing every list and fetching every token's neighbours makes every document a candidate: exact search
    everything = rt._ivf_search(store, ivf, (q, qm), 10, n_candidates=N_DOCS, k_tokens=store.n_tokens, nprobe=4)
    np.testing.assert_array_equal(everything[1], exact_r)
    np.testing.assert_allclose(everything[0], exact_s, atol=1e-5)
    # a narrow search: fewer candidates, each scored by exact MaxSim, and the best ones still found
    s, r = rt._ivf_search(store, ivf, (q, qm), 5, n_candidates=8, k_tokens=4, nprobe=1)
    for b in range(len(q)):
        np.testing.assert_allclose(store.score(q[b], qm[b], r[b]), s[b], atol=1e-5)
    assert np.mean([len(set(r[b]) & set(exact_r[b, :5])) for b in range(len(q))]) >= 2.5


def test_load_model_from_a_work_directory(tmp_path, minilm_dir, corpus):
    from distill_jax import kinds
    from distill_jax.config import load_config, to_dict
    from distill_jax.train.checkpoint import Checkpointer

    cfg = load_config("configs/tiny.py:dense", ["model.vocab_size=30522", f"data.tokenizer={minilm_dir}",
                                                "data.doc_maxlen=96", "data.query_maxlen=24",
                                                "model.dense_pooling=cls", "checkpoint.async_save=False"])
    model = build_model("dense", _tiny_encoder(cfg),
                        **kinds.get("dense").model_options(cfg.model, cfg.data))
    params = init_params(model, jax.random.key(3))
    ck = Checkpointer(str(tmp_path / "run" / "checkpoints"), cfg.checkpoint, {"config": to_dict(cfg)})
    ck.save(7, {"params": params, "step": np.int32(7)}, {"position": 7})
    ck.close()
    rm = rt.load_model(str(tmp_path / "run"))
    assert (rm.kind, rm.query_maxlen, rm.doc_maxlen, rm.model.pooling) == ("dense", 24, 96, "cls")
    assert "step 7" in rm.source
    ids, texts, queries = corpus
    direct = rt.RetrievalModel("dense", model, params, rm.tokenizer, 24, 96)
    a, _ = rt.retrieve(rm, ids, texts, queries, depth=5, latency_queries=0, progress=False)
    b, _ = rt.retrieve(direct, ids, texts, queries, depth=5, latency_queries=0, progress=False)
    assert a == b
    assert rt.load_model(str(tmp_path / "run"), doc_maxlen=64).doc_maxlen == 64


def _tiny_encoder(cfg):
    from distill_jax.train.state import encoder_config

    return encoder_config(cfg.model)


@pytest.mark.parametrize("kind", ["colbert", "splade"])
def test_saved_index_is_reused_only_for_the_same_build(corpus, colbert, splade, tmp_path, kind):
    ids, texts, queries = corpus
    rm = colbert if kind == "colbert" else splade
    where = str(tmp_path / "index")
    first, r1 = rt.retrieve(rm, ids, texts, queries, depth=5, latency_queries=0, index_dir=where, progress=False)
    again, r2 = rt.retrieve(rm, ids, texts, queries, depth=5, latency_queries=0, index_dir=where, progress=False)
    assert r1.index_from is None and r2.index_from == where and "read from" in r2.describe()
    assert again == first and r2.index_bytes == r1.index_bytes
    other = {"store_dtype": "int8"} if kind == "colbert" else {"splade_top_k": 7}
    with pytest.raises(ValueError, match="built from something else"):
        rt.retrieve(rm, ids, texts, queries, depth=5, latency_queries=0, index_dir=where, progress=False, **other)
    with pytest.raises(ValueError, match="built from something else"):
        rt.retrieve(rm, ids[:-1], texts[:-1], queries, depth=5, latency_queries=0, index_dir=where, progress=False)
