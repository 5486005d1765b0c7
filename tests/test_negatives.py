"""Hard-negative mining: bm25s against a float64 Lucene-BM25 reference, scifact recall via ir-measures against a
hand count, model mining through a score_fn, fusion, candidate files and the `mine` command."""

import json

import numpy as np
import pytest

from distill_jax.data.collections import load_collection
from distill_jax.cli import main as cli_main
from distill_jax.data.candidates import candidates_from_run, candidates_to_run, read_candidates, write_candidates
from distill_jax.data.negatives import BM25Config, bm25_search, fuse, model_search
from distill_jax.eval.rerank import mine_bm25
from distill_jax.eval.metrics import evaluate_run


def _lucene_bm25(query, docs, k1, b):
    """float64 reference: Lucene's BM25, idf = ln(1 + (N - df + .5) / (df + .5)), whitespace tokens."""
    toks = [d.split() for d in docs]
    avg = np.mean([len(t) for t in toks])
    out = []
    for t in toks:
        s = 0.0
        for w in query.split():
            df = sum(w in u for u in toks)
            tf = t.count(w)
            s += np.log(1 + (len(toks) - df + 0.5) / (df + 0.5)) * tf / (tf + k1 * (1 - b + b * len(t) / avg))
        out.append(s)
    return np.array(out)


def test_bm25_matches_reference_formula():
    docs = ["apple banana apple", "banana cherry", "cherry cherry cherry date", "date apple fig grape", "kiwi"]
    ids = [f"d{i}" for i in range(len(docs))]
    for k1, b in [(1.2, 0.75), (0.9, 0.4)]:
        run = bm25_search(ids, docs, {"q": "apple cherry"}, 5, BM25Config(k1=k1, b=b, stopwords=None))
        ref = _lucene_bm25("apple cherry", docs, k1, b)
        order = [ids[i] for i in np.argsort(-ref) if ref[i] > 0]
        assert [d for d, _ in run["q"]] == order  # d4 ("kiwi") matches nothing and is not returned
        np.testing.assert_allclose([s for _, s in run["q"]], np.sort(ref[ref > 0])[::-1], rtol=1e-5)
    try:
        import Stemmer  # noqa: F401
    except ImportError:  # the stemmer option needs PyStemmer and says so
        with pytest.raises(ImportError, match="pip install PyStemmer"):
            bm25_search(ids, docs, {"q": "apples"}, 2, BM25Config(stemmer="english"))
    else:  # "apples" stems to "appl", as "apple" does
        assert bm25_search(ids, docs, {"q": "apples"}, 2, BM25Config(stemmer="english"))["q"][0][0] == "d0"


def test_scifact_bm25_recall(shared_data, tmp_path, capsys):
    col = load_collection(str(shared_data / "scifact"), "train")
    cands, metrics = mine_bm25(col, k=100)
    # independent hand count of the same quantity from the same run
    doc_ids, texts = col.passages()
    run = bm25_search(doc_ids, texts, col.queries, 100)
    recall = np.mean([len(set(pos) & {d for d, _ in run[q]}) / len(pos)
                      for q, pos in ((q, [d for d, g in r.items() if g > 0]) for q, r in col.qrels.items())])
    assert metrics["R@100"] == pytest.approx(recall, abs=1e-9)
    assert 0.85 < metrics["R@100"] < 0.95  # measured 0.9013 (k1 0.9, b 0.4, English stopwords, no stemming)
    assert len(cands) == 809
    for c in cands:
        assert not set(c["pos"]) & set(c["neg"]) and len(c["neg"]) <= 100 and set(c["neg"]) <= col.corpus.keys()
        assert c["pos"] == [d for d, g in col.qrels[c["qid"]].items() if g > 0]
    # the command prints the same figure and writes the same candidates
    out = tmp_path / "bm25.jsonl"
    assert cli_main(["mine", "--collection", str(shared_data / "scifact"), "--split", "train",
                     "--out", str(out)]) == 0
    assert f"R@100 (ir-measures): {metrics['R@100']:.4f}" in capsys.readouterr().out
    assert read_candidates(str(out)) == cands


def test_evaluate_run_against_hand_values():
    qrels = {"a": {"d1": 1, "d2": 1}, "b": {"d3": 2}, "c": {"d9": 1}}
    run = {"a": {"d1": 3.0, "x": 2.0, "d2": 1.0}, "b": {"x": 5.0, "d3": 4.0}}  # "c" is missing: counts 0
    m = evaluate_run(qrels, run, ("R@2", "MRR@10", "nDCG@10"))
    assert m["R@2"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert m["MRR@10"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    ndcg_a = (1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3))
    ndcg_b = (3 / np.log2(3)) / 3  # gain 2^2 - 1 = 3 at rank 2, ideal at rank 1
    assert m["nDCG@10"] == pytest.approx((ndcg_a + ndcg_b + 0) / 3, rel=1e-6)


def test_model_search_with_score_fn():
    rng = np.random.default_rng(0)
    doc_emb, q_emb = rng.normal(size=(50, 8)), rng.normal(size=(7, 8))
    doc_ids = [f"d{i}" for i in range(50)]
    queries = {f"q{i}": f"text {i}" for i in range(7)}
    calls = []

    def score_fn(texts):  # a "student": dot products, top 5
        calls.append(len(texts))
        s = q_emb[[int(t.split()[1]) for t in texts]] @ doc_emb.T
        idx = np.argsort(-s, axis=1)[:, :5]
        return np.take_along_axis(s, idx, 1), idx

    run = model_search(score_fn, doc_ids, queries, batch_size=3)
    assert calls == [3, 3, 1]
    full = q_emb @ doc_emb.T
    for i in range(7):
        assert [d for d, _ in run[f"q{i}"]] == [f"d{j}" for j in np.argsort(-full[i])[:5]]
    with pytest.raises(ValueError, match="expected two"):
        model_search(lambda t: (np.zeros((len(t), 3)), np.zeros((len(t), 2), int)), doc_ids, queries)
    with pytest.raises(ValueError, match="corpus has 50"):
        model_search(lambda t: (np.zeros((len(t), 1)), np.full((len(t), 1), 50)), doc_ids, queries)


def test_fusion():
    r1 = {"q": [("a", 9.0), ("b", 8.0), ("c", 7.0)]}
    r2 = {"q": [("c", 1.0), ("d", 0.5)], "q2": [("z", 1.0)]}
    rrf = fuse([r1, r2], "rrf", rrf_k=60)
    ref = {"a": 1 / 61, "b": 1 / 62, "c": 1 / 63 + 1 / 61, "d": 1 / 62}
    assert [d for d, _ in rrf["q"]] == ["c", "a", "b", "d"]  # b and d tie: first appearance wins
    for d, s in rrf["q"]:
        assert s == pytest.approx(ref[d])
    assert rrf["q2"] == [("z", pytest.approx(1 / 61))]
    rr = fuse([r1, r2], "round_robin", k=3)
    assert [d for d, _ in rr["q"]] == ["a", "c", "b"]
    with pytest.raises(ValueError, match="rrf"):
        fuse([r1], "borda")


def test_candidates_files_and_merge_command(tmp_path, capsys):
    qrels = {"q1": {"p": 1, "x": 0}, "q2": {"p2": 1}, "q3": {"n": 0}}
    run = {"q1": [("n1", 3.0), ("p", 2.0), ("n2", 1.0)], "q2": [("p2", 1.0)], "q3": [("n", 1.0)]}
    cands = candidates_from_run(run, qrels, k=5)
    assert cands == [{"qid": "q1", "pos": ["p"], "neg": ["n1", "n2"]}, {"qid": "q2", "pos": ["p2"], "neg": []}]
    write_candidates(str(tmp_path / "a.jsonl"), cands)
    write_candidates(str(tmp_path / "b.jsonl"), [{"qid": "q1", "pos": ["p"], "neg": ["n3", "n2"]}])
    assert read_candidates(str(tmp_path / "a.jsonl")) == cands
    assert candidates_to_run(cands)["q1"] == [("n1", 0.0), ("n2", -1.0)]
    assert cli_main(["mine", "--merge", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"),
                     "--out", str(tmp_path / "m.jsonl"), "--k", "10"]) == 0
    merged = {c["qid"]: c for c in read_candidates(str(tmp_path / "m.jsonl"))}
    # rrf: n2 is ranked 2nd in both lists (2/62) and beats n1 and n3 (1/61 each)
    assert merged["q1"]["neg"] == ["n2", "n1", "n3"] and merged["q1"]["pos"] == ["p"]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"qid": 1, "pos": [2]}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: expected"):
        read_candidates(str(tmp_path / "bad.jsonl"))


def test_bm25_pair_scores_equal_the_search_scores_and_the_reference():
    docs = ["apple banana apple", "banana cherry", "cherry cherry cherry date", "date apple fig grape", "kiwi"]
    ids = [f"d{i}" for i in range(len(docs))]
    from distill_jax.data.negatives import BM25Index

    index = BM25Index(ids, docs, BM25Config(k1=1.2, b=0.75, stopwords=None))
    queries = ["apple cherry", "kiwi zebra", "zebra"]  # a term the index never saw; a query of unseen terms only
    texts = [q for q in queries for _ in ids]
    pairs = index.pair_scores(texts, ids * len(queries)).reshape(len(queries), len(ids))
    for row, q in enumerate(queries):
        ref = _lucene_bm25(q, docs, 1.2, 0.75)
        np.testing.assert_allclose(pairs[row], ref, rtol=1e-5, atol=1e-7)
        found = dict(index.search({"q": q}, 5)["q"])
        assert {d: float(pairs[row][ids.index(d)]) for d in found} == pytest.approx(found, rel=1e-6)
    with pytest.raises(KeyError, match="'d9' is not in the BM25 index"):
        index.pair_scores(["apple"], ["d9"])
