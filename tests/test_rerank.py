"""The one BM25-then-rerank: a teacher's held-out number during training equals the number its exported
checkpoint reports, the BM25 index of a corpus is built once, and the reranked run is the BM25 candidates
ordered by the scores."""

import numpy as np

from distill_jax.config import load_config
from distill_jax.data.collections import load_collection
from distill_jax.eval import rerank as rr
from distill_jax.train.trainer import train


def test_validation_and_test_report_give_the_same_number(tmp_path, shared_data, minilm_dir):
    """A tiny cross-encoder trained 4 steps with validation on 12 SciFact test queries: the trainer's last
    validation (params in memory, through rr.validator) equals evaluate_reranking of the exported checkpoint."""
    from distill_jax.export import save_pretrained
    from distill_jax.models.encoder import EncoderConfig
    from distill_jax.train import checkpoint as ckpt_lib
    from distill_jax.train.state import encoder_config

    cfg = load_config("configs/tiny.py:cross_encoder", [
        f"workdir={tmp_path / 'run'}", "steps=4", "model.num_layers=1", "model.vocab_size=30522",
        f"data.tokenizer={minilm_dir}", "data.pair_maxlen=48", "eval.every_steps=4",
        f"eval.collection_dir={shared_data / 'scifact'}", "eval.split=test", "eval.max_queries=12", "eval.depth=6",
        "eval.batch_size=16", "eval.metrics=nDCG@10,MRR@10", "checkpoint.async_save=false"])
    out = train(cfg, validator=rr.validator)
    params, step, _ = ckpt_lib.restore_params(cfg.workdir, 4)
    assert step == 4
    enc = encoder_config(cfg.model)
    teacher = save_pretrained("cross_encoder", enc, params, str(tmp_path / "teacher"), tokenizer_dir=minilm_dir)
    report = rr.evaluate_reranking(teacher, str(shared_data / "scifact"), "test", k=6, max_length=48,
                                   batch_size=16, measures=("nDCG@10", "MRR@10"), max_queries=12)
    assert report["teacher"] == out["validation"]  # the same code path: identical, not just close
    assert 0.0 < report["teacher"]["nDCG@10"] < 1.0
    assert report["bm25"] != report["teacher"]  # the random teacher really reranked


def test_bm25_index_is_built_once_per_corpus_and_shared_by_views(tmp_path, shared_data):
    from distill_jax.jobs.train_teacher import make_view

    rr._INDEXES.clear()
    col = load_collection(str(shared_data / "scifact"), "test")
    a = rr.bm25_index(col)
    view = tmp_path / "view"
    make_view(str(shared_data / "scifact"), str(view), "train", holdout=20, seed=0)
    fit = load_collection(str(view), "fit")
    assert rr.bm25_index(fit) is a  # the view's corpus is a symlink to the same file
    assert len(rr._INDEXES) == 1


def test_rerank_task_orders_candidates_by_scores(shared_data):
    task = rr.rerank_task(str(shared_data / "scifact"), "test", depth=5, max_queries=4)
    assert len(task.qids) == 4 and all(len(c) == 5 for c in task.candidates)
    bm25 = [np.array([s for _, s in task.first_stage[q]]) for q in task.qids]
    assert task.run(bm25) == task.first_stage  # BM25's own scores give BM25's ranking back
    reverse = task.run([-s for s in bm25])
    for q in task.qids:
        assert [d for d, _ in reverse[q]] == [d for d, _ in task.first_stage[q]][::-1]
    # judged positives first: no ordering of the same candidates scores higher
    qrels = task.collection.qrels
    perfect = [np.array([float(qrels[q].get(d, 0)) for d in docs]) for q, docs in zip(task.qids, task.candidates)]
    best = task.evaluate(perfect, ("nDCG@10",))["nDCG@10"]
    assert best >= task.evaluate(bm25, ("nDCG@10",))["nDCG@10"]
    assert best > task.evaluate([-p for p in perfect], ("nDCG@10",))["nDCG@10"]
