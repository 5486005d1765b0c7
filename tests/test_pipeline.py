"""Training loader: exactly-once over 4 simulated hosts, determinism, resume in a new process, state mismatch,
teacher combination and sampling against numpy references, tokenisation per model kind, bad records."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from distill_jax.data import scores as ts
from distill_jax.data.collections import DataError, TextTable
from distill_jax.data.pipeline import LoaderConfig, TrainLoader, combine_teachers, sample_candidates

R = 37  # records: a prime, so every batch size leaves a remainder
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()


def _corpus_queries(seed=0):
    rng = np.random.default_rng(seed)
    corpus = {f"p{i}": " ".join(rng.choice(WORDS, 10)) for i in range(120)}
    queries = {f"q{i}": " ".join(rng.choice(WORDS, 3)) for i in range(R)}
    return corpus, queries


def _write(out, records, shards=3, teachers=("a", "b"), validate=True):
    bounds = np.linspace(0, len(records), shards + 1).astype(int)
    for i in range(shards):
        ts.write_teacher_scores(records[bounds[i]:bounds[i + 1]], out, i, shards, list(teachers),
                                validate=validate)
    return out


def _records(seed=0, m=10):
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(R):
        pids = [f"p{j}" for j in rng.choice(120, m - (i % 3), replace=False)]  # 8..10 candidates
        labels = np.zeros(len(pids), np.int32)
        labels[rng.choice(len(pids), 1 + (i % 2), replace=False)] = 1
        recs.append(ts.make_record(f"q{i}", pids, labels, rng.normal(size=(len(pids), 2)) * [1.0, 5.0]))
    return recs


@pytest.fixture(scope="module")
def data(tmp_path_factory, minilm_dir):
    from distill_jax.data.tokenize import load_tokenizer

    out = _write(str(tmp_path_factory.mktemp("ds") / "ds"), _records())
    corpus, queries = _corpus_queries()
    return {"path": out, "corpus": TextTable.from_mapping(corpus), "corpus_dict": corpus, "queries": queries,
            "tok": load_tokenizer(minilm_dir), "records": _records()}


def _loader(data, pi=0, pc=1, **kw):
    cfg = dict(batch_size=8, num_candidates=4, model_kind="dense", query_maxlen=8, doc_maxlen=16, num_epochs=2,
               num_threads=2, prefetch=2)
    cfg.update(kw)
    return TrainLoader(data["path"], data["corpus"], data["queries"], data["tok"], LoaderConfig(**cfg),
                       process_index=pi, process_count=pc)


def _equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            _equal(a[k], b[k])
        else:
            assert a[k].dtype == b[k].dtype
            np.testing.assert_array_equal(a[k], b[k])


def test_exactly_once_over_four_hosts(data):
    hosts = [list(_loader(data, pi, 4, sampling="random", top_k=5)) for pi in range(4)]
    steps_per_epoch = -(-R // 8)  # 5
    assert [len(h) for h in hosts] == [2 * steps_per_epoch] * 4  # every host: the same number of steps
    orders = []
    for epoch in range(2):
        seen, padding = [], 0
        for step in range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch):
            for h in hosts:
                b = h[step]
                assert b["index"].shape == (2,) and b["weight"].shape == (2,)
                real = b["index"] >= 0
                np.testing.assert_array_equal(b["weight"], real.astype(np.float32))
                seen += b["index"][real].tolist()
                padding += int((~real).sum())
                assert np.isfinite(b["teacher_scores"]).all() and (b["mask"][:, 0] == 1).all()
        assert sorted(seen) == list(range(R)) and padding == 40 - R
        orders.append(seen)
    assert orders[0] != orders[1]  # a new shuffle every epoch


def test_same_seed_same_batches_and_new_seed_differs(data):
    a = list(_loader(data, 1, 2, sampling="random"))
    b = list(_loader(data, 1, 2, sampling="random"))
    for x, y in zip(a, b, strict=True):
        _equal(x, y)
    c = list(_loader(data, 1, 2, sampling="random", seed=1))
    assert any((x["index"] != y["index"]).any() for x, y in zip(a, c))


def test_resume_in_a_new_process(data, tmp_path):
    k = 3
    it = iter(_loader(data, 2, 4, sampling="random", top_k=6, num_epochs=None))
    for _ in range(k):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(8)]  # crosses the epoch boundary (5 steps an epoch)
    (tmp_path / "state.json").write_text(json.dumps(state))
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        from distill_jax.data.collections import TextTable
        from distill_jax.data.pipeline import LoaderConfig, TrainLoader
        from distill_jax.data.tokenize import load_tokenizer
        corpus = json.load(open(sys.argv[1]))
        queries = json.load(open(sys.argv[2]))
        cfg = LoaderConfig(batch_size=8, num_candidates=4, model_kind="dense", query_maxlen=8, doc_maxlen=16,
                           sampling="random", top_k=6, num_threads=2, prefetch=2)
        loader = TrainLoader({data['path']!r}, TextTable.from_mapping(corpus), queries,
                             load_tokenizer({data['tok'].name_or_path!r}), cfg, process_index=2, process_count=4)
        it = iter(loader)
        it.set_state(json.load(open(sys.argv[3])))
        out = {{}}
        for i in range(8):
            b = next(it)
            out.update({{f"{{i}}/{{k}}": v for k, v in b.items() if not isinstance(v, dict)}})
            out.update({{f"{{i}}/{{k}}/{{kk}}": vv for k, v in b.items() if isinstance(v, dict) for kk, vv in v.items()}})
        np.savez(sys.argv[4], **out)
    """)
    (tmp_path / "corpus.json").write_text(json.dumps(data["corpus_dict"]))
    (tmp_path / "queries.json").write_text(json.dumps(data["queries"]))
    (tmp_path / "resume.py").write_text(script)
    env = dict(os.environ, PYTHONHASHSEED="123")
    subprocess.run([sys.executable, str(tmp_path / "resume.py"), str(tmp_path / "corpus.json"),
                    str(tmp_path / "queries.json"), str(tmp_path / "state.json"), str(tmp_path / "out.npz")],
                   check=True, env=env, timeout=600)  # generous: a loaded CI machine is slow
    got = np.load(tmp_path / "out.npz")
    for i, b in enumerate(expected):
        for key, v in b.items():
            for kk, vv in (v.items() if isinstance(v, dict) else [(None, v)]):
                name = f"{i}/{key}" if kk is None else f"{i}/{key}/{kk}"
                np.testing.assert_array_equal(got[name], vv, err_msg=name)


def test_state_mismatch_names_the_field(data, tmp_path):
    it = iter(_loader(data, 0, 2))
    next(it)
    state = it.get_state()
    json.dumps(state)  # JSON-serialisable, as orbax's grain handler stores it
    for kw, field in [({"seed": 5}, "seed"), ({"num_candidates": 3}, "num_candidates")]:
        with pytest.raises(ValueError, match=f"mismatch in field '{field}'"):
            iter(_loader(data, 0, 2, **kw)).set_state(state)
    with pytest.raises(ValueError, match="mismatch in field 'process_count': saved 2"):
        iter(_loader(data, 0, 4)).set_state(state)
    other = _write(str(tmp_path / "other"), _records(seed=1))
    loader = TrainLoader(other, data["corpus"], data["queries"], data["tok"], _loader(data).config,
                         process_index=0, process_count=2)
    with pytest.raises(ValueError, match="mismatch in field 'fingerprint'"):
        iter(loader).set_state(state)
    with pytest.raises(ValueError, match="batch_size 8 is not divisible by the 3 processes"):
        _loader(data, 0, 3)


def test_combine_teachers_reference():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(7, 3)).astype(np.float32) * [1, 10, 100]
    s64 = s.astype(np.float64)
    np.testing.assert_allclose(combine_teachers(s, "column", 2), s64[:, 2])
    np.testing.assert_allclose(combine_teachers(s, "mean"), s64.sum(1) / 3)
    z = [(s64[:, j] - s64[:, j].mean()) / np.sqrt(((s64[:, j] - s64[:, j].mean()) ** 2).mean()) for j in range(3)]
    np.testing.assert_allclose(combine_teachers(s, "zmean"), np.mean(z, axis=0), rtol=1e-12)
    # invariant to each teacher's affine scale
    np.testing.assert_allclose(combine_teachers(s * [2, 0.1, 7] + [5, -3, 1], "zmean"), combine_teachers(s, "zmean"),
                               rtol=1e-5, atol=1e-6)
    const = np.ones((4, 2), np.float32)
    assert (combine_teachers(const, "zmean") == 0).all()


def test_sampling_strategies():
    labels = np.array([0, 1, 0, 0, 1, 0, 0], np.int32)
    t = np.array([5.0, 9.0, 7.0, 1.0, 8.0, 7.0, 3.0])
    np.testing.assert_array_equal(sample_candidates(labels, t, 4, "hardest", None, None), [1, 2, 5, 0])
    seen = set()
    for s in range(200):
        c = sample_candidates(labels, t, 3, "random", 3, np.random.default_rng(s))
        assert labels[c[0]] == 1 and (labels[c[1:]] == 0).all() and len(set(c)) == 3
        assert set(c[1:]) <= {2, 5, 0}  # the top-3 negatives by teacher score
        seen.add(int(c[0]))
        seen.update(c[1:].tolist())
    assert seen == {1, 4, 2, 5, 0}
    assert len(sample_candidates(labels, t, 10, "hardest", None, None)) == 6  # fewer candidates than N


def test_batch_contents_match_the_records(data):
    from distill_jax.data.tokenize import encode_texts

    loader = _loader(data, 0, 1, teacher_combine="zmean", sampling="hardest", num_candidates=9)
    b = loader.batch(0)
    for row, idx in enumerate(b["index"]):
        rec = data["records"][idx]
        t = combine_teachers(rec["scores"], "zmean")
        chosen = sample_candidates(rec["labels"], t, 9, "hardest", None, None)
        n = len(chosen)
        np.testing.assert_array_equal(b["mask"][row], [1.0] * n + [0.0] * (9 - n))
        np.testing.assert_allclose(b["teacher_scores"][row, :n], t[chosen].astype(np.float32))
        # column 0: the best-scored positive; then the hardest negatives, best first
        assert rec["labels"][chosen[0]] == 1 and t[chosen[0]] == t[rec["labels"] > 0].max()
        neg_t = np.sort(t[rec["labels"] <= 0])[::-1][: 8]
        np.testing.assert_allclose(b["teacher_scores"][row, 1:n], neg_t.astype(np.float32))
        texts = [data["corpus_dict"][rec["pids"][c]] for c in chosen]
        ref = encode_texts(data["tok"], texts, 16)
        np.testing.assert_array_equal(b["docs"]["input_ids"][row, :n], ref["input_ids"])
        q = encode_texts(data["tok"], [data["queries"][rec["qid"]]], 8)
        np.testing.assert_array_equal(b["query"]["input_ids"][row], q["input_ids"][0])
    assert b["teacher_scores"].dtype == np.float32 and b["index"].dtype == np.int64
    assert b["docs"]["input_ids"].dtype == np.int32 and b["docs"]["input_ids"].shape == (8, 9, 16)


def test_colbert_and_cross_encoder_batches(data):
    from distill_jax.data.tokenize import encode_colbert_documents, encode_pairs
    from distill_jax.models.colbert import ColBERTConfig

    b = _loader(data, 0, 1, model_kind="colbert", query_maxlen=12, doc_maxlen=20).batch(1)
    assert {k: v.shape for k, v in b["query"].items()} == {k: (8, 12) for k in
                                                          ("input_ids", "attention_mask", "score_mask")}
    assert {k: v.shape for k, v in b["docs"].items()} == {k: (8, 4, 20) for k in
                                                         ("input_ids", "attention_mask", "score_mask")}
    rec = data["records"][b["index"][0]]
    chosen = sample_candidates(rec["labels"], combine_teachers(rec["scores"], "mean"), 4, "hardest", None, None)
    ref = encode_colbert_documents(data["tok"], [data["corpus_dict"][rec["pids"][c]] for c in chosen],
                                   ColBERTConfig(query_maxlen=12, doc_maxlen=20))
    for key in ref:
        np.testing.assert_array_equal(b["docs"][key][0], ref[key])
    c = _loader(data, 0, 1, model_kind="cross_encoder", pair_maxlen=24).batch(1)
    assert set(c) == {"pairs", "teacher_scores", "mask", "weight", "index"}
    ref = encode_pairs(data["tok"], [data["queries"][rec["qid"]]] * 4,
                       [data["corpus_dict"][rec["pids"][j]] for j in chosen], 24)
    for key in ref:
        np.testing.assert_array_equal(c["pairs"][key][0], ref[key])


def test_bad_records_fail_at_load_time(data, tmp_path):
    recs = _records()
    recs[5]["scores"][2, 1] = np.nan
    recs[11]["pids"][0] = "not-in-corpus"
    recs[12] = dict(recs[12], qid="unknown-query")
    path = _write(str(tmp_path / "bad"), recs, shards=1, validate=False)  # as a buggy foreign writer would
    cfg = _loader(data).config
    with pytest.raises(DataError, match=r"record 5 \(qid 'q5'\): nonfinite_score: field 'scores' .* is nan"):
        TrainLoader(path, data["corpus"], data["queries"], data["tok"], cfg, process_index=0, process_count=1)
    loose = LoaderConfig(**{**cfg.__dict__, "policy": ts.BadInputPolicy("skip", max_skip_fraction=0.1)})
    loader = TrainLoader(path, data["corpus"], data["queries"], data["tok"], loose, process_index=0,
                         process_count=1)
    assert loader.skipped == {"nonfinite_score": 1, "missing_pid": 1, "missing_query": 1}
    seen = [i for b in list(loader)[:loader.steps_per_epoch] for i in b["index"] if i >= 0]
    assert sorted(seen) == sorted(set(range(R)) - {5, 11, 12})
    tight = LoaderConfig(**{**cfg.__dict__, "policy": ts.BadInputPolicy("skip", max_skip_fraction=0.05)})
    with pytest.raises(DataError, match="3 of 37 records are bad"):
        TrainLoader(path, data["corpus"], data["queries"], data["tok"], tight, process_index=0, process_count=1)


@pytest.fixture(scope="module")
def scifact_data(tmp_path_factory, shared_data, minilm_dir):
    """A teacher-score dataset over real scifact texts: 24 queries x 12 candidates, among them the longest
    passages, the shortest, passages used as queries (pairs whose two sides both exceed the length) and tiny
    texts."""
    from distill_jax.data.collections import load_collection
    from distill_jax.data.tokenize import load_tokenizer

    col = load_collection(str(shared_data / "scifact"), None)
    ids, texts = col.passages()
    by_len = np.argsort([len(t) for t in texts], kind="stable")
    rng = np.random.default_rng(3)
    pick = np.concatenate([by_len[-30:], by_len[:30], rng.choice(len(texts), 100, replace=False)])
    corpus = {ids[i]: texts[i] for i in pick}
    corpus.update({"tiny-a": "a", "tiny-zero": "\u200b", "tiny-q": "?"})
    qtexts = list(col.queries.values())
    queries = {f"q{i}": qtexts[i] for i in range(16)}
    queries.update({f"q{16 + i}": texts[by_len[-1 - i]] for i in range(6)})  # long passages as queries
    queries.update({"q22": "a", "q23": "\u200b"})
    pids = list(corpus)
    records = []
    for i in range(24):
        cand = [pids[j] for j in rng.choice(len(pids), 12, replace=False)]
        labels = np.zeros(12, np.int32)
        labels[0] = 1
        records.append(ts.make_record(f"q{i}", cand, labels, rng.normal(size=(12, 1))))
    out = _write(str(tmp_path_factory.mktemp("scifact") / "ds"), records, shards=2, teachers=("t",))
    return {"path": out, "corpus": TextTable.from_mapping(corpus), "queries": queries,
            "tok": load_tokenizer(minilm_dir), "cache": str(tmp_path_factory.mktemp("token_cache"))}


@pytest.mark.parametrize("kind", ["colbert", "dense", "splade", "cross_encoder"])
def test_table_path_batches_equal_text_path_batches_on_scifact(scifact_data, kind):
    import warnings

    d = scifact_data
    cfg = dict(batch_size=8, num_candidates=6, model_kind=kind, query_maxlen=32, doc_maxlen=180, pair_maxlen=64,
               sampling="random", top_k=8, num_threads=1, prefetch=1, token_cache_dir=d["cache"])

    def loader(pretokenize):
        c = LoaderConfig(pretokenize=pretokenize, **cfg)
        return TrainLoader(d["path"], d["corpus"], d["queries"], d["tok"], c, process_index=0, process_count=1)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table, text = loader(True), loader(False)
        pairs = [(table.batch(s), text.batch(s)) for s in range(table.steps_per_epoch + 1)]  # every record, twice
        mapped = loader(True)
    for a, b in pairs:
        _equal(a, b)
    long_query = [w for w in caught if "queries have more than 29 tokens" in str(w.message)]
    assert bool(long_query) == (kind == "colbert")
    # One cached table of passages and one of queries serves every kind; a new loader maps them from disk.
    assert table.doc_tokens.cap == 178 and len(table.doc_tokens) == len(d["corpus"])
    assert len(os.listdir(d["cache"])) == 2
    assert isinstance(mapped.doc_tokens.ids, np.memmap)
    _equal(mapped.batch(1), pairs[1][0])
    g = pairs[0][0]["pairs" if kind == "cross_encoder" else "docs"]
    assert g["input_ids"].shape == (8, 6, 64 if kind == "cross_encoder" else 180)
    if kind == "cross_encoder":  # all three longest_first cases occurred: whole, one side cut, both cut in half
        att = np.stack([a["pairs"]["attention_mask"] for a, _ in pairs])
        q_kept = np.stack([(1 - a["pairs"]["token_type_ids"]) * a["pairs"]["attention_mask"] for a, _ in pairs])
        q_kept = q_kept.sum(-1) - 2  # minus [CLS] and the first [SEP]
        full = att.sum(-1) == 64
        assert (~full).any() and (full & (q_kept < 30)).any() and (full & (q_kept == 30)).any()


def _bucketed_pair(d, kind, sampling, pc=1, pi=0, batch_size=2, num_candidates=3):
    """(full-length loader, bucketed loader) over the real SciFact texts, at lengths up to 512 (most SciFact
    abstracts are 185-500 tokens: at 180 nearly every batch holds one that fills it)."""
    cfg = dict(batch_size=batch_size, num_candidates=num_candidates, model_kind=kind, query_maxlen=32,
               doc_maxlen=512, pair_maxlen=512,
               sampling=sampling, top_k=8, num_threads=1, prefetch=1, token_cache_dir=d["cache"])
    make = lambda **extra: TrainLoader(d["path"], d["corpus"], d["queries"], d["tok"],  # noqa: E731
                                       LoaderConfig(**cfg, **extra), process_index=pi, process_count=pc)
    return make(), make(length_buckets=BUCKETS)


BUCKETS = (16, 48, 96, 128, 256, 384)


@pytest.mark.parametrize("kind,sampling", [("colbert", "hardest"), ("splade", "random"),
                                           ("cross_encoder", "hardest"), ("dense", "random")])
def test_length_buckets_cut_only_padding_and_agree_across_hosts(scifact_data, kind, sampling):
    """Bucketed batches are the unbucketed ones cut to a listed length (or the maximum) that drops only padding;
    every host of a 2-host job cuts each step alike; with "hardest" sampling the cut is the tightest bucket of
    the global batch (the bound is exact), and real text gives more than one length."""
    d = scifact_data
    (full0, cut0), (full1, cut1) = _bucketed_pair(d, kind, sampling, 2, 0), _bucketed_pair(d, kind, sampling, 2, 1)
    groups = ("pairs",) if kind == "cross_encoder" else ("query", "docs")
    seen = set()
    for step in range(2 * full0.steps_per_epoch):
        a0, b0, a1, b1 = full0.batch(step), cut0.batch(step), full1.batch(step), cut1.batch(step)
        lengths = {}
        for g in groups:
            n = b0[g]["input_ids"].shape[-1]
            assert b1[g]["input_ids"].shape[-1] == n  # both hosts alike
            maxlen = a0[g]["input_ids"].shape[-1]
            assert n in BUCKETS + (maxlen,) and n <= maxlen
            for a, b in ((a0, b0), (a1, b1)):
                assert not a[g]["attention_mask"][..., n:].any()  # only padding was cut
                for k in a[g]:
                    np.testing.assert_array_equal(b[g][k], a[g][k][..., :n])
            longest = max(int(a[g]["attention_mask"].sum(-1).max()) for a in (a0, a1))
            if sampling == "hardest" and not (kind == "colbert" and g == "query"):
                assert n == min([x for x in BUCKETS if longest <= x <= maxlen] + [maxlen]), (g, step)
            lengths[g] = n
        for k in ("teacher_scores", "mask", "weight", "index"):
            np.testing.assert_array_equal(a0[k], b0[k])
        seen.add(tuple(lengths.values()))
    assert len(seen) > 1, seen
    if kind == "colbert":  # ColBERT queries keep their [MASK] expansion to query_maxlen
        assert {s[0] for s in seen} == {32}


def test_length_buckets_train_the_same_losses_with_a_compile_per_bucket(scifact_data):
    """The train step on bucketed batches gives the losses of the full-length batches (dropout off; padding is
    masked everywhere), compiling once per length used."""
    import jax

    from distill_jax import distributed
    from distill_jax.config import load_config
    from distill_jax.train import state as state_lib
    from distill_jax.train.step import HOST_ONLY_KEYS, compile_train_step

    cfg = load_config("configs/tiny.py:splade", ["model.vocab_size=30522", "model.num_layers=1", "model.dropout=0",
                                                 "model.max_position_embeddings=512",
                                                 "data.batch_size=8", "data.n_candidates=6", "steps=6"])
    mesh = distributed.make_mesh(devices=jax.devices()[:1])
    model, _, _ = state_lib.make_model(cfg)
    tx = state_lib.make_optimizer(cfg.optim, cfg.steps)
    losses, compiles = {}, {}
    for name, loader in zip(("full", "cut"), _bucketed_pair(scifact_data, "splade", "hardest")):
        state, shardings = state_lib.create_state(model, tx, mesh, 0)
        step = compile_train_step(model, cfg, tx, mesh, shardings)
        losses[name] = []
        for s in range(6):
            batch = {k: v for k, v in loader.batch(s).items() if k not in HOST_ONLY_KEYS}
            state, m = step(state, distributed.global_batch(batch, mesh))
            losses[name].append(float(m["loss"]))
        compiles[name] = step._cache_size()
        lengths = {tuple(loader.bucket_lengths(s).values()) for s in range(6)} if name == "cut" else {()}
    np.testing.assert_allclose(losses["cut"], losses["full"], rtol=1e-5, atol=1e-6)
    assert compiles["full"] == 1 and compiles["cut"] == len(lengths) > 1
