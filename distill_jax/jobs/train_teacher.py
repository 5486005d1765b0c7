"""``distill-jax train-teacher CONFIG``: fine-tune a cross-encoder on qrels + BM25 hard negatives.

The teacher is trained by the student trainer itself (one train step abstraction): the model kind is
``cross_encoder``, the loss a listwise softmax cross-entropy with the positive in column 0 (``infonce``) or a
pointwise BCE (``graded_bce`` on the labels). What this module adds is the data preparation and the hand-off:

1. a *view* of the BEIR collection in the work directory: symlinks to the corpus and queries (read in place, never
   copied) and two qrels splits cut from the training split, ``fit`` and ``holdout`` (BEIR has no dev split);
2. BM25 candidates for the ``fit`` queries (positives excluded from negatives) written as a label dataset:
   labels = qrels grades, score column = the BM25 score (so "random from the top-k" samples BM25-hard negatives);
3. :func:`distill_jax.train.trainer.train` with periodic reranking validation on ``holdout``
   (:func:`distill_jax.eval.rerank.validator`: the same BM25 index and pair scorer as step 4); the best checkpoint
   by nDCG@10 is exported as a Hugging Face ``BertForSequenceClassification`` directory (``<workdir>/teacher``)
   that ``distill-jax score --teacher`` loads;
4. reranking evaluation of that teacher on the test split (BM25 top-100), written to ``<workdir>/results.json``.

Several hosts (``jax.distributed``, the variables ``distill-jax train`` reads: ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``): process 0 alone writes the view and the label dataset, every process
waits at a barrier and then trains its share of each global batch (the trainer's multi-host path); every process
reads the chosen checkpoint, process 0 alone exports it (a second barrier), and each host evaluates the exported
teacher on its own devices (same numbers everywhere, no cross-host waiting during a long evaluation); process 0
writes ``results.json``. The result equals a single-process run's (tests/test_multihost.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Collection

import numpy as np

log = logging.getLogger(__name__)


def make_view(collection_dir: str, out_dir: str, split: str, holdout: int, seed: int,
              exclude: Collection[str] = ()) -> dict[str, list[str]]:
    """Writes a BEIR view with qrels splits ``fit`` and ``holdout`` cut from ``split`` (plus every original split).

    The corpus and queries are symlinks; the held-out queries are ``holdout`` queries drawn with ``seed``.
    ``exclude``: queries of ``split`` left out of both (a cross-fitting fold the teacher must not see).

    Returns:
      ``{"fit": [...], "holdout": [...]}`` query ids.
    """
    from distill_jax.data.collections import read_qrels

    os.makedirs(os.path.join(out_dir, "qrels"), exist_ok=True)
    src = os.path.abspath(collection_dir)
    for name in os.listdir(src):
        if name.startswith(("corpus", "queries")):
            _symlink(os.path.join(src, name), os.path.join(out_dir, name))
    for name in os.listdir(os.path.join(src, "qrels")):
        _symlink(os.path.join(src, "qrels", name), os.path.join(out_dir, "qrels", name))
    qrels = read_qrels(os.path.join(src, "qrels", f"{split}.tsv"))
    left_out = set(exclude)
    parts = split_queries(sorted(q for q in qrels if q not in left_out), holdout, seed, split)
    for part, ids in parts.items():
        tmp = os.path.join(out_dir, "qrels", f"{part}.tsv.tmp")
        with open(tmp, "w") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for q in ids:
                for d, g in qrels[q].items():
                    f.write(f"{q}\t{d}\t{g}\n")
        os.replace(tmp, os.path.join(out_dir, "qrels", f"{part}.tsv"))
    return parts


def split_queries(qids: list[str], holdout: int, seed: int, split: str = "train") -> dict[str, list[str]]:
    """``{"fit", "holdout"}``: ``holdout`` of the sorted ``qids`` drawn with ``seed``, the rest fit."""
    if not 0 < holdout < len(qids):
        raise ValueError(f"holdout={holdout} must be between 1 and {len(qids) - 1} ({split} has {len(qids)} queries)")
    rng = np.random.default_rng(seed)
    held = set(rng.choice(qids, size=holdout, replace=False).tolist())
    return {"fit": [q for q in qids if q not in held], "holdout": [q for q in qids if q in held]}


def cross_fit_folds(qids: Collection[str], folds: int, seed: int) -> list[list[str]]:
    """``folds`` disjoint, near-equal parts of ``qids`` (a permutation drawn with ``seed``; each part sorted).

    Cross-fitting: teacher ``i`` is fitted on every query outside part ``i`` and scores part ``i`` alone, so no
    soft label comes from a teacher that saw the query's qrels.
    """
    if not 1 <= folds <= len(qids):
        raise ValueError(f"folds={folds} must be between 1 and the number of queries ({len(qids)})")
    order = np.random.default_rng(seed).permutation(sorted(qids))
    return [sorted(part.tolist()) for part in np.array_split(order, folds)]


def _symlink(target: str, link: str) -> None:
    if os.path.islink(link) or os.path.exists(link):
        if os.path.realpath(link) == os.path.realpath(target):
            return
        os.remove(link)
    os.symlink(target, link)


def write_label_dataset(view_dir: str, out_dir: str, k: int, num_shards: int = 1) -> dict[str, float]:
    """BM25 top-``k`` candidates of the ``fit`` queries as a dataset (labels = grades, score = BM25); every judged
    document is kept out of the negatives (a judged-irrelevant document may be a near miss).

    Returns:
      BM25 recall of the positives at ``k`` (ir-measures).
    """
    from distill_jax.data.candidates import as_scores, candidates_from_run
    from distill_jax.data.collections import load_collection
    from distill_jax.data.scores import make_record, shard_done, write_teacher_scores
    from distill_jax.eval.metrics import evaluate_run
    from distill_jax.eval.rerank import bm25_run

    col = load_collection(view_dir, "fit")
    run = bm25_run(col, k)
    metrics = evaluate_run(col.qrels, as_scores(run), (f"R@{k}",))
    if all(shard_done(out_dir, s, num_shards) for s in range(num_shards)):
        return metrics
    records = []
    for c in sorted(candidates_from_run(run, col.qrels, exclude_judged=True), key=lambda c: c["qid"]):
        q, bm25 = c["qid"], dict(run.get(c["qid"], []))
        pids = c["pos"] + c["neg"]
        floor = min(bm25.values()) if bm25 else 0.0
        records.append(make_record(q, pids, [col.qrels[q].get(p, 0) for p in pids],
                                   [bm25.get(p, floor) for p in pids]))
    bounds = np.linspace(0, len(records), num_shards + 1).round().astype(int)
    for s in range(num_shards):
        write_teacher_scores(records[bounds[s]:bounds[s + 1]], out_dir, s, num_shards, ["bm25"])
    return metrics


def train_teacher(cfg, holdout: int = 100, k: int = 100, eval_split: str = "test", test_depth: int = 100,
                  exclude: Collection[str] = ()) -> dict:
    """Prepares the data, trains, exports the best checkpoint and evaluates it (see the module docstring).

    ``cfg.model.checkpoint = ""`` trains a random encoder of the config's geometry (tokenizer: ``data.tokenizer``);
    ``test_depth=0`` skips the final reranking evaluation; ``exclude``: training queries the teacher never sees
    (neither fitted nor held out: a cross-fitting fold, :func:`cross_fit_folds`).
    """
    from distill_jax.eval.rerank import evaluate_reranking
    from distill_jax.export import save_pretrained
    from distill_jax.models.encoder import EncoderConfig
    from distill_jax.models.hf import resolve_checkpoint_dir
    from distill_jax.train.checkpoint import restore_params
    from distill_jax.train.state import encoder_config
    from distill_jax.train.trainer import train

    import jax

    work = os.path.abspath(cfg.workdir)
    view = os.path.join(work, "collection")
    dataset = os.path.abspath(cfg.data.dataset_dir)
    primary = jax.process_index() == 0
    recall = None
    if primary:  # one writer of the view and the label dataset; the other hosts read them after the barrier
        parts = make_view(cfg.data.collection_dir, view, cfg.data.split, holdout, cfg.data.seed, exclude)
        recall = write_label_dataset(view, dataset, k)
        log.info("teacher data: %d fit / %d held-out queries; BM25 %s", len(parts["fit"]), len(parts["holdout"]),
                 recall)
    _barrier("train-teacher: view and label dataset written")
    run_cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, dataset_dir=dataset, collection_dir=view),
        eval=dataclasses.replace(cfg.eval, collection_dir=view, split="holdout"),
    )
    out = train(run_cfg, validator=_host_local_validator)
    params, best_step, _ = restore_params(work)  # every host reads it (orbax's restore may synchronise them)
    if cfg.model.checkpoint:
        base = resolve_checkpoint_dir(cfg.model.checkpoint)
        enc = EncoderConfig.from_pretrained_dir(base)
    else:  # a random encoder (tests, smoke runs): its geometry is the config's, its tokenizer data.tokenizer's
        base, enc = None, encoder_config(cfg.model)
    tokenizer = resolve_checkpoint_dir(cfg.data.tokenizer) if cfg.data.tokenizer else base
    teacher_dir = os.path.join(work, "teacher")
    if primary:
        teacher_dir = save_pretrained("cross_encoder", enc, params, teacher_dir, tokenizer_dir=tokenizer)
    _barrier("train-teacher: teacher exported")
    results = {}
    if test_depth:  # 0: the caller evaluates the exported teacher itself (distill-jax run)
        results = evaluate_reranking(teacher_dir, cfg.data.collection_dir, eval_split, k=test_depth,
                                     max_length=cfg.data.pair_maxlen, batch_size=cfg.eval.batch_size,
                                     max_queries=cfg.eval.max_queries)
    summary = {"best_step": best_step, "test_depth": test_depth, "holdout_validation": out["validation"],
               "bm25_recall_fit": recall, "excluded_queries": len(exclude),
               f"{eval_split}_reranking": results, "teacher_dir": teacher_dir}
    if primary:
        with open(os.path.join(work, "results.json"), "w") as f:
            json.dump(summary, f, indent=1)
    return summary


def _host_local_validator(cfg, model, mesh):
    """:func:`distill_jax.eval.rerank.validator`, fed host-local parameters under ``jax.distributed``.

    The reranking scorer runs on this host's devices (a local mesh), while the trainer's parameters are global
    arrays over every host's devices; every process gathers their value (a collective: all call it at the same
    validation steps) and scores the held-out queries itself, so each computes the same metrics.
    """
    import jax

    from distill_jax.eval.rerank import validator

    score = validator(cfg, model, mesh)
    if jax.process_count() == 1:
        return score
    from jax.experimental import multihost_utils

    return lambda params: score(multihost_utils.process_allgather(params, tiled=True))


def _barrier(name: str) -> None:
    """Every process of a ``jax.distributed`` job waits here (nothing with one process)."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
