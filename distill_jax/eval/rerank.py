"""The one BM25-then-rerank evaluation: BM25 top-``depth`` of a split's queries, reranked by a model.

Everything that reranks BM25 candidates goes through here: the teacher's fit data (BM25 candidates of the fit
queries), its held-out validation during training, its reported test number, and every student's validation.
The BM25 index of a corpus is built once per process (:func:`bm25_index`, cached by the corpus file), so a
``train-teacher`` run indexes SciFact once however many splits it ranks.

    task = rerank_task("../shared/data/scifact", "test", depth=100)
    scorer = task_reranker(task, rm)                                 # rm: a RetrievalModel of any kind
    metrics = task.evaluate(scorer(params))                          # {"nDCG@10": ...}

The candidates are scored by :class:`distill_jax.eval.retrieve.Reranker`, the one reranking of the package, built
once per task (tokenisation once, one compile) and called with parameters: a cross-encoder through the answer-key
engine (:class:`distill_jax.teacher.scorer.PairScorer`, the same code whether it validates a training run or
reports an exported teacher, so both give the same number for the same parameters), a student by encoding the
union of the candidates once and scoring each query against its own, as retrieval does.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from distill_jax.data.candidates import Run, as_scores, candidates_from_run, sort_run
from distill_jax.data.collections import Collection, load_collection
from distill_jax.data.negatives import BM25Config, BM25Index
from distill_jax.eval.metrics import DEFAULT_MEASURES, evaluate_run
from distill_jax.eval.retrieve import Reranker, RetrievalModel, load_model
from distill_jax.teacher.scorer import pair_buckets  # noqa: F401  (its callers import it from here too)


# ---------------------------------------------------------------------------------------------------------------
# First stage
# ---------------------------------------------------------------------------------------------------------------


_INDEXES: dict[tuple, BM25Index] = {}  # corpus key -> index; a few corpora per process at most


def bm25_index(collection: Collection, config: BM25Config = BM25Config()) -> BM25Index:
    """The BM25 index of a collection's corpus, built once per process, corpus file and settings (a BEIR view
    whose corpus is a symlink shares the original's index)."""
    key: tuple = (id(collection.corpus),)
    for name in ("corpus.jsonl", "corpus.jsonl.gz"):
        f = os.path.join(collection.path, name) if collection.path else ""
        if f and os.path.exists(f):
            f = os.path.realpath(f)
            key = (f, os.path.getmtime(f))
            break
    key += (len(collection.corpus), config)
    if key not in _INDEXES:
        if len(_INDEXES) >= 4:
            _INDEXES.pop(next(iter(_INDEXES)))
        _INDEXES[key] = BM25Index(*collection.passages(), config)
    return _INDEXES[key]


def bm25_run(collection: Collection, depth: int, config: BM25Config = BM25Config()) -> Run:
    """BM25 top-``depth`` of every query of ``collection`` (its split's queries)."""
    return bm25_index(collection, config).search(collection.queries, depth)


def mine_bm25(collection: Collection, k: int = 100, config: BM25Config = BM25Config(),
              n_threads: int = 0) -> tuple[list[dict], dict[str, float]]:
    """BM25 candidates for the collection's (split) queries, and the recall of the positives.

    Returns:
      (candidate lists with up to ``k`` negatives each, ``{"R@k": ...}`` of the BM25 top-k computed by ir-measures
      on the split's qrels; empty when the collection has no qrels).
    """
    run = bm25_index(collection, config).search(collection.queries, k, n_threads)
    metrics = {}
    if collection.qrels:
        metrics = evaluate_run(collection.qrels, as_scores(run), (f"R@{k}",))
    return candidates_from_run(run, collection.qrels, k), metrics


# ---------------------------------------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RerankTask:
    """BM25 candidates of a split's queries, to be reranked.

    Attributes:
      collection: the collection (its split's queries and qrels).
      qids: the queries reranked (those with at least one BM25 candidate), sorted.
      candidates: per query, the BM25 top-``depth`` doc ids, best first.
      first_stage: the BM25 run itself.
      depth: candidates per query at most.
      measures: ir-measures names reported.
    """

    collection: Collection
    qids: tuple[str, ...]
    candidates: tuple[tuple[str, ...], ...]
    first_stage: Run
    depth: int
    measures: tuple[str, ...] = DEFAULT_MEASURES

    @property
    def queries(self) -> list[str]:
        return [self.collection.queries[q] for q in self.qids]

    def texts(self) -> list[list[str]]:
        """Candidate passage texts per query."""
        return [[self.collection.passage(d) for d in docs] for docs in self.candidates]

    def run(self, scores: Sequence[np.ndarray]) -> Run:
        """The reranked run from one score array per query (aligned with ``candidates``), best first; ties by doc
        id."""
        return sort_run({q: {d: float(s) for d, s in zip(docs, sc)}
                         for q, docs, sc in zip(self.qids, self.candidates, scores)})

    def evaluate(self, scores: Sequence[np.ndarray], measures: Sequence[str] | None = None) -> dict[str, float]:
        """Metrics (ir-measures) of the reranked run over the split's judged queries."""
        return evaluate_run(self.collection.qrels, as_scores(self.run(scores)), tuple(measures or self.measures))

    def evaluate_first_stage(self, measures: Sequence[str] | None = None) -> dict[str, float]:
        return evaluate_run(self.collection.qrels, as_scores(self.first_stage), tuple(measures or self.measures))


def rerank_task(collection_dir: str, split: str = "test", depth: int = 100, max_queries: int = 0,
                measures: Sequence[str] = DEFAULT_MEASURES, on_empty: str = "raise",
                config: BM25Config = BM25Config()) -> RerankTask:
    """BM25 top-``depth`` of the split's queries (the first ``max_queries`` by id when > 0)."""
    col = load_collection(collection_dir, split, on_empty=on_empty)
    if max_queries:
        keep = sorted(col.queries)[:max_queries]
        col = dataclasses.replace(col, queries={q: col.queries[q] for q in keep},
                                  qrels={q: col.qrels[q] for q in keep})
    run = bm25_run(col, depth, config)
    qids = tuple(q for q in sorted(col.queries) if run.get(q))
    return RerankTask(col, qids, tuple(tuple(d for d, _ in run[q]) for q in qids), run, depth, tuple(measures))


# ---------------------------------------------------------------------------------------------------------------
# Scoring a task
# ---------------------------------------------------------------------------------------------------------------


def task_reranker(task: RerankTask, rm: RetrievalModel, batch_size: int = 32) -> Reranker:
    """The :class:`~distill_jax.eval.retrieve.Reranker` of a task's candidates: ``scorer(params)`` -> one score
    array per query of ``task.qids``, aligned with ``task.candidates`` (what :meth:`RerankTask.evaluate` takes)."""
    return Reranker(rm, task.queries, task.candidates, task.collection.passage, batch_size)


def validator(cfg, model, mesh=None):
    """The trainer's validation for ``cfg`` (``cfg.eval``): ``params -> metrics`` of reranking the BM25
    top-``eval.depth`` of ``eval.split`` through :func:`task_reranker` (any kind). Pass it to
    :func:`distill_jax.train.trainer.train` as ``validator``; ``mesh`` (the training mesh) is not used: like
    retrieval, validation runs on this host's devices."""
    from distill_jax.data.tokenize import load_tokenizer
    from distill_jax.models.hf import resolve_checkpoint_dir

    e, d = cfg.eval, cfg.data
    task = rerank_task(e.collection_dir or d.collection_dir, e.split, e.depth, e.max_queries, tuple(e.metrics),
                       on_empty=d.empty_docs)
    tok = load_tokenizer(resolve_checkpoint_dir(d.tokenizer or cfg.model.checkpoint))
    rm = RetrievalModel(cfg.model.kind, model, None, tok, d.query_maxlen, d.doc_maxlen, d.pair_maxlen,
                        f"{cfg.name} (training)")
    scorer = task_reranker(task, rm, e.batch_size)
    return lambda params: task.evaluate(scorer(params))


def evaluate_reranking(teacher: str, collection_dir: str, split: str = "test", k: int = 100,
                       max_length: int = 256, batch_size: int = 128, measures=("nDCG@10", "MRR@10"),
                       max_queries: int = 0) -> dict[str, dict[str, float]]:
    """BM25 top-k, then a cross-encoder checkpoint reranks it; metrics of both (ir-measures) over the split's
    queries (the first ``max_queries`` by id when > 0)."""
    task = rerank_task(collection_dir, split, k, max_queries, tuple(measures))
    rm = load_model(teacher, kind="cross_encoder", pair_maxlen=max_length)
    return {"bm25": task.evaluate_first_stage(), "teacher": task.evaluate(task_reranker(task, rm, batch_size)())}


__all__ = ["bm25_index", "bm25_run", "mine_bm25", "RerankTask", "rerank_task", "pair_buckets", "task_reranker",
           "validator", "evaluate_reranking"]

