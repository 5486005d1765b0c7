"""The one BM25-then-rerank evaluation: BM25 top-``depth`` of a split's queries, reranked by a model.

Everything that reranks BM25 candidates goes through here: the teacher's fit data (BM25 candidates of the fit
queries), its held-out validation during training, its reported test number, and every student's validation.
The BM25 index of a corpus is built once per process (:func:`bm25_index`, cached by the corpus file), so a
``train-teacher`` run indexes SciFact once however many splits it ranks.

    task = rerank_task("../shared/data/scifact", "test", depth=100)
    scorer = PairRerankScorer(task, model, tok, max_length=256)     # a cross-encoder
    metrics = task.evaluate(scorer(params))                          # {"nDCG@10": ...}

Scorers are built once per task (tokenisation once, one compile) and called with parameters: a cross-encoder
through the answer-key engine (:class:`distill_jax.teacher.scorer.PairScorer`, the same code whether it validates
a training run or reports an exported teacher, so both give the same number for the same parameters), a student
through its kind's forward (:mod:`distill_jax.kinds`) over fixed-shape chunks of queries.
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
# Scorers
# ---------------------------------------------------------------------------------------------------------------


def pair_buckets(max_length: int) -> tuple[int, ...]:
    """The padded lengths pairs are bucketed into: 64, 128, 192 below ``max_length``, then ``max_length``."""
    return tuple(b for b in (64, 128, 192) if b < max_length) + (max_length,)


class PairRerankScorer:
    """Cross-encoder scores of a task's (query, candidate) pairs: tokenised once, scored by the answer-key
    engine (bucketed, sharded over this host's devices) with whatever parameters it is called with.

    Args:
      task: the candidates.
      model: a ``CrossEncoder``; params: its parameters (the default for calls without params).
      tok: its tokenizer; max_length: tokens per pair; batch_size: pairs per device call.
    """

    def __init__(self, task: RerankTask, model, params, tok, max_length: int = 256, batch_size: int = 128):
        from distill_jax.data.tokenize import encode_pairs
        from distill_jax.teacher.scorer import PairScorer

        self.task = task
        queries, texts = task.queries, task.texts()
        q = [qt for qt, docs in zip(queries, texts) for _ in docs]
        p = [d for docs in texts for d in docs]
        self.tokens = encode_pairs(tok, q, p, max_length)
        self.offsets = np.cumsum([0] + [len(d) for d in texts])
        self.scorer = PairScorer(model, params, batch_size=batch_size, buckets=pair_buckets(max_length))

    def __call__(self, params=None) -> list[np.ndarray]:
        flat = self.scorer.score(self.tokens, params=params)
        return [flat[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:])]


class StudentRerankScorer:
    """A student's scores of a task's candidates through its kind's forward: tokenised once into fixed-shape
    chunks of queries (the last chunk padded with real rows, so one compile), run jitted on ``mesh``.

    Args:
      task: the candidates; kind: the model kind's name; model: the student; tok: its tokenizer.
      spec: the tokenisation (:class:`distill_jax.kinds.TokenSpec`); mesh: the device mesh.
      batch_size: documents encoded per call, about (chunks of ``batch_size / depth`` queries).
    """

    def __init__(self, task: RerankTask, kind: str, model, tok, spec, mesh, batch_size: int = 64):
        import jax

        from distill_jax import distributed, kinds
        from distill_jax.data.tokenize import encode_groups

        self.task, self.mesh = task, mesh
        n = task.depth
        texts = task.texts()
        flat = [(docs + [""] * (n - len(docs)))[:n] for docs in texts]
        flat = [t if t else "[PAD]" for docs in flat for t in docs]  # empty slots: any text, masked below
        self.batch = encode_groups(tok, spec, task.queries, flat)
        self.counts = [len(d) for d in texts]
        n_dev = mesh.devices.size
        self.chunk = max(n_dev, (max(1, batch_size // n) + n_dev - 1) // n_dev * n_dev)
        forward = kinds.get(kind).forward
        self._score = jax.jit(lambda p, b: forward(model, p, b, rng=None).scores,
                              in_shardings=(None, distributed.batch_sharding(mesh)),
                              out_shardings=distributed.batch_sharding(mesh))
        self._global = distributed.global_batch
        self._jax = jax

    def __call__(self, params) -> list[np.ndarray]:
        q = len(self.task.qids)
        out = []
        for start in range(0, q, self.chunk):
            idx = np.arange(start, start + self.chunk) % q  # wrap: pad the last chunk with real rows
            part = self._jax.tree.map(lambda x: x[idx], self.batch)
            s = self._score(params, self._global(part, self.mesh))
            out.append(np.asarray(self._jax.device_get(s))[: min(self.chunk, q - start)])
        scores = np.concatenate(out)
        return [scores[i, :c] for i, c in enumerate(self.counts)]


def validator(cfg, model, mesh):
    """The trainer's validation for ``cfg`` (``cfg.eval``): ``params -> metrics`` of reranking the BM25
    top-``eval.depth`` of ``eval.split`` (a cross-encoder through :class:`PairRerankScorer`, a student through
    :class:`StudentRerankScorer`). Pass it to :func:`distill_jax.train.trainer.train` as ``validator``."""
    from distill_jax import kinds
    from distill_jax.data.tokenize import load_tokenizer
    from distill_jax.models.hf import resolve_checkpoint_dir

    e, d = cfg.eval, cfg.data
    task = rerank_task(e.collection_dir or d.collection_dir, e.split, e.depth, e.max_queries, tuple(e.metrics),
                       on_empty=d.empty_docs)
    tok = load_tokenizer(resolve_checkpoint_dir(d.tokenizer or cfg.model.checkpoint))
    kind = kinds.get(cfg.model.kind)
    if kind.layout == "pairs":
        scorer = PairRerankScorer(task, model, None, tok, d.pair_maxlen, e.batch_size)
    else:
        scorer = StudentRerankScorer(task, kind.name, model, tok, kind.run_token_spec(d), mesh, e.batch_size)
    return lambda params: task.evaluate(scorer(params))


def evaluate_reranking(teacher: str, collection_dir: str, split: str = "test", k: int = 100,
                       max_length: int = 256, batch_size: int = 128, measures=("nDCG@10", "MRR@10"),
                       max_queries: int = 0) -> dict[str, dict[str, float]]:
    """BM25 top-k, then a cross-encoder checkpoint reranks it; metrics of both (ir-measures) over the split's
    queries (the first ``max_queries`` by id when > 0)."""
    from distill_jax.data.tokenize import load_tokenizer
    from distill_jax.models import load_pretrained
    from distill_jax.models.hf import resolve_checkpoint_dir

    task = rerank_task(collection_dir, split, k, max_queries, tuple(measures))
    path = resolve_checkpoint_dir(teacher)
    model, params = load_pretrained("cross_encoder", path)
    scorer = PairRerankScorer(task, model, params, load_tokenizer(path), max_length, batch_size)
    return {"bm25": task.evaluate_first_stage(), "teacher": task.evaluate(scorer())}


__all__ = ["bm25_index", "bm25_run", "mine_bm25", "RerankTask", "rerank_task", "pair_buckets", "PairRerankScorer",
           "StudentRerankScorer", "validator", "evaluate_reranking"]

