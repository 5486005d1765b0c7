"""Serving exports: a run's params -> the directories PyLate / sentence-transformers load, scoring as distill-jax
does; those directories back into distill-jax bit for bit; export never deletes what it did not write.

Also :func:`distill_jax.train.checkpoint.restore_params`, which export reads runs with."""

import dataclasses
import functools
import json
import os

import jax
import numpy as np
import pytest

from distill_jax.config import CheckpointConfig, load_config, to_dict
from distill_jax.train import checkpoint as ckpt_lib


def _same(a, b) -> bool:
    """Equal trees, leaf for leaf, bit for bit (dtype included)."""
    if jax.tree.structure(a) != jax.tree.structure(b):
        return False
    return all(np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y)
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _saved_run(workdir: str, kind: str = "cross_encoder", steps=(2, 4), cfg=None):
    """A tiny run's checkpoints as the trainer writes them: a real TrainState (params, AdamW state, step, rng)
    after optimiser updates with random gradients, saved at ``steps`` with the config in ``meta``.

    Returns:
      (params at the last step as host numpy, the config).
    """
    import optax

    from distill_jax import distributed
    from distill_jax.train import state as state_lib

    if cfg is None:
        cfg = load_config(f"configs/tiny.py:{kind}")
        cfg = dataclasses.replace(cfg, workdir=workdir,
                                  checkpoint=dataclasses.replace(cfg.checkpoint, async_save=False))
    mesh = distributed.make_mesh(devices=jax.devices()[:2])
    model, _, pretrained = state_lib.make_model(cfg)
    tx = state_lib.make_optimizer(cfg.optim, cfg.steps)
    state, _ = state_lib.create_state(model, tx, mesh, cfg.seed, pretrained)
    ck = ckpt_lib.Checkpointer(f"{workdir}/checkpoints", cfg.checkpoint, {"config": to_dict(cfg)})
    @jax.jit
    def update(state, key):
        leaves, treedef = jax.tree.flatten(state.params)
        keys = jax.random.split(key, len(leaves))
        grads = jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        return state.replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state,
                             step=state.step + 1)

    for step in range(1, max(steps) + 1):
        state = update(state, jax.random.key(step))
        if step in steps:
            ck.save(step, state, {"position": step})
    ck.close()
    return jax.tree.map(np.asarray, jax.device_get(state.params)), cfg


# ---------------------------------------------------------------------------------------------------------------
# restore_params
# ---------------------------------------------------------------------------------------------------------------


def test_restore_params_is_the_trained_state_bit_for_bit(tmp_path, monkeypatch):
    final, cfg = _saved_run(str(tmp_path / "run"))
    # no optimiser, no train state, no Hugging Face weights on the way
    from distill_jax.train import state as state_lib

    for name in ("make_optimizer", "create_state", "state_shardings", "make_model"):
        monkeypatch.setattr(state_lib, name, lambda *a, **k: pytest.fail("restore_params built a model/state"))
    params, step, saved = ckpt_lib.restore_params(str(tmp_path / "run"))
    assert step == 4 and saved == cfg
    assert _same(params, final)
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(params))
    earlier, step2, _ = ckpt_lib.restore_params(str(tmp_path / "run"), step=2)
    assert step2 == 2 and not _same(earlier, final)  # step 2 really is another checkpoint
    with pytest.raises(ValueError, match=r"no checkpoint for step 3; saved steps: \[2, 4\]"):
        ckpt_lib.restore_params(str(tmp_path / "run"), step=3)


def test_restore_params_picks_the_best_by_the_validation_metric(tmp_path):
    cfg = load_config("configs/tiny.py:cross_encoder")
    cfg = dataclasses.replace(cfg, checkpoint=CheckpointConfig(keep=5, keep_best=1, best_metric="nDCG@10",
                                                               best_mode="max", async_save=False))
    ck = ckpt_lib.Checkpointer(str(tmp_path / "run" / "checkpoints"), cfg.checkpoint, {"config": to_dict(cfg)})
    for step in (1, 2, 3, 4):
        ck.save(step, {"params": {"w": np.full((2, 3), step, np.float32)}, "step": np.int32(step)},
                {"position": step}, metrics={"nDCG@10": 0.1 * step} if step < 4 else None)
    ck.close()
    # The trainer's validation rows; step 3 was validated twice (a resumed run repeats it: the later row counts),
    # step 5 has no checkpoint, the last line was cut by a kill.
    rows = [{"step": 1, "val/nDCG@10": 0.30}, {"step": 2, "val/nDCG@10": 0.52}, {"step": 3, "val/nDCG@10": 0.61},
            {"step": 3, "loss": 0.2}, {"step": 3, "val/nDCG@10": 0.41}, {"step": 5, "val/nDCG@10": 0.90}]
    (tmp_path / "run" / "metrics.jsonl").write_text("\n".join(map(json.dumps, rows)) + '\n{"step": 6, "val/nD')
    params, step, _ = ckpt_lib.restore_params(str(tmp_path / "run"))
    assert step == 2 and np.array_equal(params["w"], np.full((2, 3), 2, np.float32))

    # min mode ranks the other way; with no metric at all, the latest step wins
    low = dataclasses.replace(cfg.checkpoint, best_mode="min")
    manager = ckpt_lib._read_only_manager(str(tmp_path / "run" / "checkpoints"))
    try:
        assert ckpt_lib.select_step(manager, low, str(tmp_path / "run")) == 1
        assert ckpt_lib.select_step(manager, dataclasses.replace(low, best_metric="MRR@10"),
                                    str(tmp_path / "run")) == 4
    finally:
        manager.close()


def test_restore_params_errors_name_the_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="work directory .*nope does not exist"):
        ckpt_lib.restore_params(str(tmp_path / "nope"))
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="holds no finished checkpoint"):
        ckpt_lib.restore_params(str(tmp_path / "empty"))
    (tmp_path / "file").mkdir()
    (tmp_path / "file" / "checkpoints").write_text("x")
    with pytest.raises(NotADirectoryError, match="checkpoints is a file"):
        ckpt_lib.restore_params(str(tmp_path / "file"))


# ---------------------------------------------------------------------------------------------------------------
# Export never deletes what it did not write (issue #17, defect 1)
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny cross-encoder run (random 2-layer encoder, no tokenizer) with checkpoints at steps 2 and 4."""
    workdir = str(tmp_path_factory.mktemp("tiny") / "run")
    final, _ = _saved_run(workdir)
    return workdir, final


def _cli(*args) -> tuple[int, str]:
    import contextlib
    import io

    from distill_jax.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["export", *args])
    return code, err.getvalue()


def _tree(d) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_export_refuses_a_directory_it_did_not_write(tmp_path, tiny_run):
    workdir, _ = tiny_run
    foreign = tmp_path / "photos"
    (foreign / "2024").mkdir(parents=True)
    (foreign / "2024" / "a.jpg").write_bytes(b"\xff\xd8 not a model")
    before = _tree(foreign)
    code, err = _cli(workdir, "--out", str(foreign), "--format", "transformers")
    assert code == 2 and "photos exists and holds files distill-jax export did not write" in err
    assert "never deletes them" in err and _tree(foreign) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]  # no partial directory left beside it
    (tmp_path / "file").write_text("x")
    code, err = _cli(workdir, "--out", str(tmp_path / "file"), "--format", "transformers")
    assert code == 2 and "is not a directory" in err and (tmp_path / "file").read_text() == "x"


def test_export_refuses_the_work_directory_and_inside_it(tmp_path, tiny_run):
    workdir, _ = tiny_run
    before = _tree(__import__("pathlib").Path(workdir))
    for out in (workdir, os.path.join(workdir, "export"), os.path.join(workdir, "checkpoints")):
        code, err = _cli(workdir, "--out", out, "--format", "transformers")
        assert code == 2 and "inside the work directory" in err and "-export" in err, out
    code, err = _cli(workdir, "--out", os.path.dirname(workdir), "--format", "transformers")
    assert code == 2 and "holds the work directory" in err
    assert _tree(__import__("pathlib").Path(workdir)) == before  # checkpoints and metrics untouched


def test_export_replaces_its_own_earlier_export_only(tmp_path, tiny_run):
    from distill_jax.export import MARKER, export_run
    from distill_jax.models import load_pretrained

    workdir, final = tiny_run
    out = tmp_path / "export"
    assert _cli(workdir, "--out", str(out), "--format", "transformers", "--step", "2")[0] == 0
    marker = json.loads((out / MARKER).read_text())
    assert (marker["kind"], marker["format"], marker["step"]) == ("cross_encoder", "transformers", 2)
    assert marker["workdir"] == os.path.abspath(workdir) and "model.safetensors" in marker["files"]
    # a rerun replaces it (an earlier export: every file listed in its marker) with the latest step
    assert export_run(workdir, str(out), fmt="transformers") == (str(out), 4)
    assert json.loads((out / MARKER).read_text())["step"] == 4
    assert _same(jax.tree.map(np.asarray, load_pretrained("cross_encoder", str(out))[1]), final)
    # a file the user put into the export makes it theirs: refused, nothing deleted
    (out / "notes.txt").write_text("mine")
    before = _tree(out)
    code, err = _cli(workdir, "--out", str(out), "--format", "transformers")
    assert code == 2 and "also holds files it did not write (notes.txt)" in err and _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    # an empty directory is fine
    (tmp_path / "empty").mkdir()
    assert export_run(workdir, str(tmp_path / "empty"), fmt="transformers")[1] == 4


def test_native_export_needs_a_fitting_tokenizer(tmp_path, tiny_run, minilm_dir):
    workdir, _ = tiny_run
    code, err = _cli(workdir, "--out", str(tmp_path / "a"))
    assert code == 2 and "needs a tokenizer" in err and "--tokenizer DIR" in err
    code, err = _cli(workdir, "--out", str(tmp_path / "b"), "--tokenizer", minilm_dir)
    assert code == 2 and "embedding has 512 rows" in err
    assert not list(tmp_path.iterdir())  # nothing written, no partial directories


# ---------------------------------------------------------------------------------------------------------------
# Serving parity: export -> PyLate / sentence-transformers, on real SciFact text
# ---------------------------------------------------------------------------------------------------------------

# Documents scored per kind (DISTILL_JAX_SERVING_DOCS=1000 for the full check by hand; see docs/serving.md).
N_DOCS = int(os.environ.get("DISTILL_JAX_SERVING_DOCS", "200"))
N_QUERIES = 12
LENGTHS = {"query_maxlen": 16, "doc_maxlen": 64, "pair_maxlen": 96}
MODELS = {  # a non-default head everywhere, so a setting lost on the way shows
    "colbert": {"colbert_dim": 96},
    "splade": {},
    "cross_encoder": {},
    "dense": {"dense_pooling": "cls", "dense_projection_dim": 64, "dense_normalize": True},
}
LOSSES = {"colbert": "margin_mse", "splade": "mse", "cross_encoder": "kl", "dense": "margin_mse"}


@pytest.fixture(scope="module")
def scifact(shared_data):
    """(queries, documents): SciFact test queries (short ones and the longest, which ``query_maxlen`` truncates)
    and corpus passages (title + abstract, truncated at ``doc_maxlen``) with some titles alone (padded)."""
    from distill_jax.data.collections import load_collection

    c = load_collection(str(shared_data / "scifact"), split="test")
    qids = sorted(c.qrels, key=lambda q: (len(c.queries[q]), q))
    queries = [c.queries[q] for q in qids[:N_QUERIES // 2] + qids[-(N_QUERIES - N_QUERIES // 2):]]
    ids = sorted(c.corpus)[:N_DOCS]
    docs = [c.passage(d) for d in ids[:N_DOCS - 10]] + [c.corpus[d][0] or c.passage(d) for d in ids[N_DOCS - 10:]]
    return queries, docs


@functools.lru_cache(maxsize=None)
def _exported(kind: str, root: str, minilm_dir: str):
    """A run of ``kind`` from all-MiniLM-L6-v2 (3 AdamW steps at lr 1e-3 on random gradients), exported native.

    Returns:
      (export dir, params restored from the run, the run's config).
    """
    from distill_jax.config import DataConfig, LossConfig, ModelConfig, OptimConfig, TrainConfig
    from distill_jax.export import export_run

    cfg = TrainConfig(name=f"serve_{kind}", workdir=f"{root}/run_{kind}", steps=3,
                      model=ModelConfig(kind=kind, checkpoint=minilm_dir, **MODELS[kind]),
                      loss=LossConfig(name=LOSSES[kind]), optim=OptimConfig(learning_rate=1e-3, warmup_steps=0),
                      data=DataConfig(**LENGTHS), checkpoint=CheckpointConfig(async_save=False))
    jax.config.update("jax_disable_most_optimizations", True)  # compiles of init and update: seconds, not minutes
    try:
        _saved_run(cfg.workdir, cfg=cfg, steps=(3,))
    finally:
        jax.config.update("jax_disable_most_optimizations", False)
    out, step = export_run(cfg.workdir, f"{root}/export_{kind}")
    assert step == 3
    params, _, saved = ckpt_lib.restore_params(cfg.workdir)
    return out, params, saved


@pytest.fixture(scope="module")
def exported(tmp_path_factory, minilm_dir):
    root = str(tmp_path_factory.mktemp("serving"))
    return lambda kind: _exported(kind, root, minilm_dir)


def _apply_batched(model, params, batch: dict, size: int = 32) -> np.ndarray:
    """``model.apply`` over rows of ``batch`` in fixed-size chunks (one compile; the last chunk padded)."""
    import jax.numpy as jnp

    n = len(next(iter(batch.values())))
    f = jax.jit(lambda b: model.apply({"params": params}, b))
    out = []
    for i in range(0, n, size):
        chunk = {k: v[i:i + size] for k, v in batch.items()}
        pad = size - len(chunk["input_ids"])
        chunk = {k: jnp.asarray(np.pad(v, [(0, pad)] + [(0, 0)] * (v.ndim - 1))) for k, v in chunk.items()}
        with jax.default_matmul_precision("highest"):
            out.append(np.asarray(f(chunk))[:size - pad])
    return np.concatenate(out)


def _ours(kind, params, cfg, queries, docs):
    """distill-jax's own encodings / scores, from the run's restored params (not from the export)."""
    from distill_jax import kinds
    from distill_jax.data import tokenize as tk
    from distill_jax.models import EncoderConfig, build_model

    enc = EncoderConfig.from_pretrained_dir(cfg.model.checkpoint)
    model = build_model(kind, enc, **kinds.get(kind).model_options(cfg.model, cfg.data))
    tok = tk.load_tokenizer(cfg.model.checkpoint)
    d = cfg.data
    if kind == "colbert":
        c = kinds.colbert_config(cfg.model, d)
        with pytest.warns(UserWarning, match="truncated to query_maxlen=16"):  # the longest queries are cut
            qb = tk.encode_colbert_queries(tok, queries, c)
        db = tk.encode_colbert_documents(tok, docs, c)
        keep = ("input_ids", "attention_mask")
        return {"q": _apply_batched(model, params, {k: qb[k] for k in keep}), "q_mask": qb["score_mask"],
                "d": _apply_batched(model, params, {k: db[k] for k in keep}), "d_mask": db["score_mask"]}
    if kind == "cross_encoder":
        pairs = [(q, p) for q in queries[:2] for p in docs]
        return {"logits": _apply_batched(model, params, tk.encode_pairs(tok, *zip(*pairs), d.pair_maxlen))}
    return {"q": _apply_batched(model, params, tk.encode_texts(tok, queries, d.query_maxlen)),
            "d": _apply_batched(model, params, tk.encode_texts(tok, docs, d.doc_maxlen))}


def _top10(scores: np.ndarray) -> np.ndarray:
    """[Q, N] scores -> [Q, 10] document indices, ties broken by the lower index."""
    return np.stack([np.lexsort((np.arange(len(row)), -row))[:10] for row in scores])


def test_export_reads_back_bit_for_bit(exported):
    """export -> load_pretrained reproduces the run's params exactly, for every kind and its head settings."""
    from distill_jax.models import load_pretrained

    for kind in MODELS:
        out, params, cfg = exported(kind)
        model, back = load_pretrained(kind, out)  # every option from the directory itself
        assert _same(jax.tree.map(np.asarray, back), params), kind
        if kind == "colbert":
            assert (model.colbert.dim, model.colbert.query_maxlen, model.colbert.doc_maxlen) == (96, 16, 64)
        if kind == "dense":
            assert (model.pooling, model.projection_dim, model.normalize) == ("cls", 64, True)


def test_pylate_colbert_scores_as_distill_jax(exported, scifact):
    torch = pytest.importorskip("torch")
    models = pytest.importorskip("pylate.models")
    from pylate.scores import colbert_scores

    out, params, cfg = exported("colbert")
    queries, docs = scifact
    ours = _ours("colbert", params, cfg, queries, docs)
    pm = models.ColBERT(model_name_or_path=out, device="cpu")
    assert (pm.query_length, pm.document_length, pm.query_prefix, pm.document_prefix) == (16, 64, "[unused0]",
                                                                                           "[unused1]")
    pq = pm.encode(queries, is_query=True, batch_size=32)
    pd = pm.encode(docs, is_query=False, batch_size=32)
    # token vectors: the same tokens kept (punctuation and padding dropped from documents), the same values
    q_diff = max(float(np.abs(pq[i] - ours["q"][i]).max()) for i in range(len(queries)))
    kept = [ours["d_mask"][j].astype(bool) for j in range(len(docs))]
    assert [len(v) for v in pd] == [int(k.sum()) for k in kept]
    d_diff = max(float(np.abs(pd[j] - ours["d"][j][kept[j]]).max()) for j in range(len(docs)))
    # MaxSim: PyLate's scorer on each document's own vectors vs distill-jax's scorer on its padded batch
    theirs = np.stack([colbert_scores(torch.as_tensor(np.stack(pq)), torch.as_tensor(v)[None]).numpy()[:, 0]
                       for v in pd], axis=1)
    from distill_jax import scoring

    with jax.default_matmul_precision("highest"):
        mine = np.asarray(scoring.maxsim_in_batch(ours["q"], ours["q_mask"], ours["d"], ours["d_mask"]))
    s_diff = float(np.abs(theirs - mine).max())
    print(f"\ncolbert {len(docs)} docs: token vectors max|diff| query {q_diff:.2e} doc {d_diff:.2e}; "
          f"MaxSim max|diff| {s_diff:.2e} (scores {mine.min():.1f}..{mine.max():.1f})")
    assert q_diff < 1e-5 and d_diff < 1e-5 and s_diff < 1e-4
    np.testing.assert_array_equal(_top10(theirs), _top10(mine))


def test_sparse_encoder_vectors_as_distill_jax(exported, scifact):
    pytest.importorskip("torch")
    st = pytest.importorskip("sentence_transformers")

    out, params, cfg = exported("splade")
    queries, docs = scifact
    ours = _ours("splade", params, cfg, queries, docs)
    model = st.SparseEncoder(out, device="cpu")
    assert model.max_seq_length == 64
    docs_v = model.encode_document(docs, batch_size=32, convert_to_tensor=True).to_dense().numpy()
    model.max_seq_length = cfg.data.query_maxlen  # queries as trained (docs/serving.md)
    queries_v = model.encode_query(queries, batch_size=32, convert_to_tensor=True).to_dense().numpy()
    diffs, flips = {}, 0
    for side, theirs, mine in (("query", queries_v, ours["q"]), ("doc", docs_v, ours["d"])):
        diffs[side] = float(np.abs(theirs - mine).max())
        # the same terms above 1e-3; float32 rounding may only move a weight within 1e-5 of the threshold across
        flip = (theirs > 1e-3) != (mine > 1e-3)
        assert np.all(np.abs(np.maximum(theirs, mine)[flip] - 1e-3) < 1e-5), np.maximum(theirs, mine)[flip]
        flips += int(flip.sum())
    scores_t, scores_o = queries_v @ docs_v.T, ours["q"] @ ours["d"].T
    nnz = (ours["q"] > 0).sum(1).mean(), (ours["d"] > 0).sum(1).mean()
    print(f"\nsplade {len(docs)} docs: vectors max|diff| query {diffs['query']:.2e} doc {diffs['doc']:.2e}; "
          f"dot max|diff| {np.abs(scores_t - scores_o).max():.2e}; mean non-zeros q {nnz[0]:.0f} d {nnz[1]:.0f}; "
          f"{flips} weights within 1e-5 of 1e-3 on the other side of it")
    assert max(diffs.values()) < 1e-4
    np.testing.assert_array_equal(_top10(scores_t), _top10(scores_o))


def test_cross_encoder_logits_as_distill_jax(exported, scifact):
    pytest.importorskip("torch")
    st = pytest.importorskip("sentence_transformers")

    out, params, cfg = exported("cross_encoder")
    queries, docs = scifact
    ours = _ours("cross_encoder", params, cfg, queries, docs)
    model = st.CrossEncoder(out, device="cpu")
    assert model.max_length == 96 and model.num_labels == 1
    assert type(model.activation_fn).__name__ == "Identity"  # a KL-trained score is a logit
    pairs = [(q, p) for q in queries[:2] for p in docs]
    theirs = model.predict(pairs, batch_size=32)
    diff = float(np.abs(theirs - ours["logits"]).max())
    print(f"\ncross_encoder {len(pairs)} pairs: logits max|diff| {diff:.2e}")
    assert diff < 1e-4
    np.testing.assert_array_equal(_top10(theirs.reshape(2, -1)), _top10(ours["logits"].reshape(2, -1)))


def test_sentence_transformer_embeddings_as_distill_jax(exported, scifact):
    pytest.importorskip("torch")
    st = pytest.importorskip("sentence_transformers")

    out, params, cfg = exported("dense")
    queries, docs = scifact
    ours = _ours("dense", params, cfg, queries, docs)
    model = st.SentenceTransformer(out, device="cpu")
    assert [type(m).__name__ for m in model] == ["Transformer", "Pooling", "Dense", "Normalize"]
    assert model[1].pooling_mode_cls_token and model.get_sentence_embedding_dimension() == 64
    docs_v = model.encode(docs, batch_size=32)
    model.max_seq_length = cfg.data.query_maxlen
    queries_v = model.encode(queries, batch_size=32)
    diff = max(float(np.abs(queries_v - ours["q"]).max()), float(np.abs(docs_v - ours["d"]).max()))
    print(f"\ndense {len(docs)} docs: embeddings max|diff| {diff:.2e}")
    assert diff < 1e-4
    np.testing.assert_array_equal(_top10(queries_v @ docs_v.T), _top10(ours["q"] @ ours["d"].T))


def test_load_pretrained_reads_directories_the_peers_wrote(tmp_path, minilm_dir, scifact):
    """A PyLate ColBERT and a SentenceTransformer (cls pooling, Dense, Normalize) saved by the peer libraries
    themselves: distill-jax takes every setting from the directory and encodes as the peer does."""
    torch = pytest.importorskip("torch")
    models = pytest.importorskip("pylate.models")
    st = pytest.importorskip("sentence_transformers")
    from distill_jax.data import tokenize as tk
    from distill_jax.models import load_pretrained

    queries, docs = scifact[0][:4], scifact[1][:4]
    torch.manual_seed(0)
    pm = models.ColBERT(model_name_or_path=minilm_dir, query_prefix="[unused0]", document_prefix="[unused1]",
                        query_length=20, document_length=40, embedding_size=48, device="cpu")
    pm.save(str(tmp_path / "pylate"))
    model, params = load_pretrained("colbert", str(tmp_path / "pylate"))
    c = model.colbert
    assert (c.dim, c.query_maxlen, c.doc_maxlen, c.query_marker, c.mask_punctuation) == (48, 20, 40, "[unused0]",
                                                                                         True)
    tok = tk.load_tokenizer(str(tmp_path / "pylate"))
    db = tk.encode_colbert_documents(tok, docs, c)
    ours = _apply_batched(model, params, {k: db[k] for k in ("input_ids", "attention_mask")}, size=4)
    theirs = pm.encode(docs, is_query=False)
    assert max(float(np.abs(t - o[m.astype(bool)]).max()) for t, o, m in zip(theirs, ours, db["score_mask"])) < 1e-5

    dense = st.SentenceTransformer(modules=[
        st.models.Transformer(minilm_dir, max_seq_length=64), st.models.Pooling(384, "cls"),
        st.models.Dense(384, 32, bias=False, activation_function=torch.nn.Identity()), st.models.Normalize()],
        device="cpu")
    dense.save(str(tmp_path / "st"))
    model, params = load_pretrained("dense", str(tmp_path / "st"))
    assert (model.pooling, model.projection_dim, model.normalize) == ("cls", 32, True)
    ours = _apply_batched(model, params, tk.encode_texts(tok, queries + docs, 64), size=8)
    assert float(np.abs(dense.encode(queries + docs) - ours).max()) < 1e-5


def test_layouts_distill_jax_cannot_reproduce_are_refused_by_name(tmp_path):
    from safetensors.numpy import save_file

    from distill_jax.models.hf import read_state_dict, serving_options

    def module_dir(name, modules, files):
        d = tmp_path / name
        d.mkdir()
        (d / "modules.json").write_text(json.dumps([{"idx": i, "name": str(i), "path": p, "type": t}
                                                     for i, (p, t) in enumerate(modules)]))
        for rel, content in files.items():
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            if rel.endswith(".json"):
                (d / rel).write_text(json.dumps(content))
            else:
                save_file(content, str(d / rel))
        return str(d)

    w = {"embeddings.word_embeddings.weight": np.zeros((4, 2), np.float32)}
    pooled = module_dir("maxpool", [("", "sentence_transformers.models.Transformer"),
                                    ("1_Pooling", "sentence_transformers.models.Pooling")],
                        {"1_Pooling/config.json": {"pooling_mode_max_tokens": True}, "model.safetensors": w})
    with pytest.raises(ValueError, match=r"1_Pooling/config.json: pooling \['max_tokens'\]; .* cls_token or "
                                         "mean_tokens only"):
        serving_options("dense", pooled)
    biased = module_dir("bias", [("", "sentence_transformers.models.Transformer"),
                                 ("2_Dense", "sentence_transformers.models.Dense")],
                        {"2_Dense/config.json": {"in_features": 2, "out_features": 2, "bias": True,
                                                 "activation_function": "torch.nn.modules.activation.Tanh"},
                         "2_Dense/model.safetensors": {"linear.weight": np.eye(2, dtype=np.float32)},
                         "model.safetensors": w})
    with pytest.raises(ValueError, match=r"2_Dense/config.json: a Dense module with bias=True, activation "
                                         r"torch.nn.modules.activation.Tanh"):
        read_state_dict(biased, kind="dense")
    sub = module_dir("sub", [("0_Transformer", "sentence_transformers.models.Transformer"),
                             ("1_Dense", "sentence_transformers.models.Dense")],
                     {"0_Transformer/model.safetensors": w, "1_Dense/config.json": {"out_features": 2},
                      "1_Dense/model.safetensors": {"linear.weight": np.eye(2, dtype=np.float32)}})
    state = read_state_dict(sub, kind="dense")  # the transformer in its subfolder, the Dense as the projection
    assert sorted(state) == ["embeddings.word_embeddings.weight", "projection.weight"]
    assert sorted(read_state_dict(sub, kind="colbert")) == ["embeddings.word_embeddings.weight", "linear.weight"]
