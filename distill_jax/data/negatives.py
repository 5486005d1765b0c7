"""Hard-negative mining: BM25 (bm25s), any model through a scoring callable, and fusion of several retrievers.

Every function returns runs (:data:`distill_jax.data.candidates.Run`); turning them into candidate lists and files
is :mod:`distill_jax.data.candidates`' job, measuring them is :mod:`distill_jax.eval`'s. Command line:
``distill-jax mine`` (:mod:`distill_jax.cli.mine`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

import numpy as np

from distill_jax.data.candidates import Run

log = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class BM25Config:
    """BM25 settings (bm25s does the indexing, scoring and tokenising).

    Attributes:
      k1, b: BM25 saturation and length normalisation (0.9 / 0.4: Anserini's defaults, BEIR's Pyserini runs).
      method: bm25s variant ("lucene", "robertson", "atire", "bm25l", "bm25+").
      stopwords: a bm25s stopword list name ("en") or None.
      stemmer: a PyStemmer algorithm name ("english") or None; needs the PyStemmer package.
      lower: lowercase before tokenising.
    """

    k1: float = 0.9
    b: float = 0.4
    method: str = "lucene"
    stopwords: str | None = "en"
    stemmer: str | None = None
    lower: bool = True


def _stemmer(name: str | None):
    if name is None:
        return None
    try:
        import Stemmer  # PyStemmer
    except ImportError:
        raise ImportError(f"BM25Config.stemmer={name!r} needs PyStemmer: pip install PyStemmer "
                          "(or set stemmer=None)") from None
    return Stemmer.Stemmer(name).stemWords


class BM25Index:
    """A BM25 index of a corpus (bm25s), built once and searched with any number of query sets.

    Args:
      doc_ids, doc_texts: the corpus [D] (texts as the model sees them, title + text).
      config: BM25 settings.
    """

    def __init__(self, doc_ids: Sequence[str], doc_texts: Sequence[str], config: BM25Config = BM25Config()):
        import bm25s

        self.doc_ids, self.config = list(doc_ids), config
        self._stem = _stemmer(config.stemmer)
        corpus_tokens = bm25s.tokenize(list(doc_texts), lower=config.lower, stopwords=config.stopwords,
                                       stemmer=self._stem, show_progress=False)
        self._retriever = bm25s.BM25(k1=config.k1, b=config.b, method=config.method)
        self._retriever.index(corpus_tokens, show_progress=False)

    def search(self, queries: dict[str, str], k: int, n_threads: int = 0) -> Run:
        """Top-``k`` documents of every query (``k`` clipped to D): ``{qid: [(doc id, bm25 score), ...]}`` best
        first, documents sharing no term with the query left out."""
        import bm25s

        c = self.config
        qids = list(queries)
        if not qids:
            return {}
        # queries must share the corpus vocabulary: tokenise to strings, bm25s maps them onto the index
        query_tokens = bm25s.tokenize([queries[q] for q in qids], lower=c.lower, stopwords=c.stopwords,
                                      stemmer=self._stem, return_ids=False, show_progress=False)
        k = min(k, len(self.doc_ids))
        idx, scores = self._retriever.retrieve(query_tokens, k=k, show_progress=False, n_threads=n_threads)
        run: Run = {}
        for row, qid in enumerate(qids):
            # bm25s pads with score 0 when fewer than k documents share a term: keep only real matches
            run[qid] = [(self.doc_ids[int(i)], float(s)) for i, s in zip(idx[row], scores[row]) if s > 0]
        return run

    def pair_scores(self, query_texts: Sequence[str], doc_ids: Sequence[str]) -> np.ndarray:
        """BM25 score of each (query text, document id) pair [P] (0 where they share no term), the same scores
        :meth:`search` ranks by: a lexical column beside a cross-encoder's in an answer key.

        Raises:
          KeyError: a document id that is not in the index (naming it).
        """
        import bm25s

        c = self.config
        row = {d: i for i, d in enumerate(self.doc_ids)}
        missing = next((d for d in doc_ids if d not in row), None)
        if missing is not None:
            raise KeyError(f"document {missing!r} is not in the BM25 index ({len(self.doc_ids)} documents)")
        out = np.zeros(len(doc_ids), np.float32)
        by_query: dict[str, list[int]] = {}
        for i, q in enumerate(query_texts):
            by_query.setdefault(q, []).append(i)
        texts = list(by_query)
        tokens = bm25s.tokenize(texts, lower=c.lower, stopwords=c.stopwords, stemmer=self._stem, return_ids=False,
                                show_progress=False)
        for text, toks in zip(texts, tokens):
            if not toks:
                continue  # no indexed term: every score is 0
            scores = self._retriever.get_scores(list(toks))
            idx = by_query[text]
            out[idx] = scores[[row[doc_ids[i]] for i in idx]]
        return out


def bm25_search(doc_ids: Sequence[str], doc_texts: Sequence[str], queries: dict[str, str], k: int,
                config: BM25Config = BM25Config(), n_threads: int = 0) -> Run:
    """Top-``k`` BM25 documents of every query, indexing the corpus for this one call (:class:`BM25Index`
    to search it repeatedly).

    Args:
      doc_ids, doc_texts: the corpus [D] (texts as the model sees them, title + text).
      queries: ``{qid: text}``.
      k: depth (clipped to D).

    Returns:
      ``{qid: [(doc id, bm25 score), ...]}`` best first.
    """
    return BM25Index(doc_ids, doc_texts, config).search(queries, k, n_threads)


def model_search(score_fn: Callable[[list[str]], tuple[np.ndarray, np.ndarray]], doc_ids: Sequence[str],
                 queries: dict[str, str], batch_size: int = 64) -> Run:
    """Top-k documents of every query from any retriever (a trained student, an ANN index...).

    Args:
      score_fn: ``score_fn(query_texts [B]) -> (scores [B, k], doc indices [B, k])``, best first, indices into
        ``doc_ids`` (a negative index means "no document", e.g. fewer than k hits).
      doc_ids: the corpus ids [D] in the order ``score_fn`` indexes them.
      queries: ``{qid: text}``.
      batch_size: queries per ``score_fn`` call.
    """
    qids = list(queries)
    run: Run = {}
    for start in range(0, len(qids), batch_size):
        chunk = qids[start:start + batch_size]
        scores, indices = score_fn([queries[q] for q in chunk])
        scores, indices = np.asarray(scores), np.asarray(indices)
        if scores.shape != indices.shape or scores.shape[0] != len(chunk):
            raise ValueError(f"score_fn returned scores {scores.shape} and indices {indices.shape} for "
                             f"{len(chunk)} queries; expected two [B, k] arrays with B = {len(chunk)}")
        if indices.max(initial=-1) >= len(doc_ids):
            raise ValueError(f"score_fn returned document index {indices.max()} but the corpus has "
                             f"{len(doc_ids)} documents")
        for row, qid in enumerate(chunk):
            run[qid] = [(doc_ids[int(i)], float(s)) for i, s in zip(indices[row], scores[row]) if i >= 0]
    return run


def fuse(runs: Sequence[Run], method: str = "rrf", k: int | None = None, rrf_k: int = 60) -> Run:
    """Merges ranked lists of several retrievers.

    Methods:
      "rrf": reciprocal-rank fusion (Cormack et al. 2009), ``score(d) = sum_r 1 / (rrf_k + rank_r(d))`` with
        1-based ranks; ties keep the order of first appearance.
      "round_robin": the first of each list, then the second of each, ...; duplicates keep their first place.
        The score is minus the fused rank.

    Args:
      runs: ``{qid: [(doc id, score)]}`` best first, one per retriever.
      k: keep the top k of the fused list (None: all).
    """
    if method not in ("rrf", "round_robin"):
        raise ValueError(f"fusion method {method!r}: use 'rrf' or 'round_robin'")
    fused: Run = {}
    for qid in dict.fromkeys(q for run in runs for q in run):
        lists = [[d for d, _ in run.get(qid, [])] for run in runs]
        if method == "rrf":
            acc: dict[str, float] = {}
            for docs in lists:
                for rank, d in enumerate(docs, 1):
                    acc[d] = acc.get(d, 0.0) + 1.0 / (rrf_k + rank)
            order = sorted(acc, key=lambda d: -acc[d])  # stable: first appearance breaks ties
            ranked = [(d, acc[d]) for d in order]
        else:
            seen: dict[str, None] = {}
            for rank in range(max(map(len, lists), default=0)):
                for docs in lists:
                    if rank < len(docs):
                        seen.setdefault(docs[rank])
            ranked = [(d, -float(i)) for i, d in enumerate(seen)]
        fused[qid] = ranked[:k] if k is not None else ranked
    return fused
