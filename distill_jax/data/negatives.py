"""Hard-negative mining: BM25 (bm25s), any model through a scoring callable, and fusion of several retrievers.

Output (``write_candidates``): one JSON object a line, ``{"qid": str, "pos": [doc ids], "neg": [doc ids]}``,
negatives best first, judged positives (grade > 0) never among them. This is the input of teacher scoring
(``distill-jax score``) and of :mod:`distill_jax.data.teacher_scores`.

Command line::

    distill-jax mine --collection ../shared/data/scifact --split train --k 100 --out scifact-bm25.jsonl
    distill-jax mine --merge bm25.jsonl student.jsonl --fusion rrf --k 64 --out merged.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections.abc import Callable, Sequence

import numpy as np

from distill_jax.data.collections import Collection, DataError, _open_text

log = logging.getLogger(__name__)

Run = dict[str, list[tuple[str, float]]]  # qid -> [(doc id, score)] best first


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


def bm25_search(doc_ids: Sequence[str], doc_texts: Sequence[str], queries: dict[str, str], k: int,
                config: BM25Config = BM25Config(), n_threads: int = 0) -> Run:
    """Top-``k`` BM25 documents of every query.

    Args:
      doc_ids, doc_texts: the corpus [D] (texts as the model sees them, title + text).
      queries: ``{qid: text}``.
      k: depth (clipped to D).

    Returns:
      ``{qid: [(doc id, bm25 score), ...]}`` best first.
    """
    import bm25s

    stem = _stemmer(config.stemmer)
    corpus_tokens = bm25s.tokenize(list(doc_texts), lower=config.lower, stopwords=config.stopwords,
                                   stemmer=stem, show_progress=False)
    retriever = bm25s.BM25(k1=config.k1, b=config.b, method=config.method)
    retriever.index(corpus_tokens, show_progress=False)
    qids = list(queries)
    # queries must share the corpus vocabulary: tokenise to strings, bm25s maps them onto the index
    query_tokens = bm25s.tokenize([queries[q] for q in qids], lower=config.lower, stopwords=config.stopwords,
                                  stemmer=stem, return_ids=False, show_progress=False)
    k = min(k, len(doc_ids))
    idx, scores = retriever.retrieve(query_tokens, k=k, show_progress=False, n_threads=n_threads)
    run: Run = {}
    for row, qid in enumerate(qids):
        # bm25s pads with score 0 when fewer than k documents share a term: keep only real matches
        run[qid] = [(doc_ids[int(i)], float(s)) for i, s in zip(idx[row], scores[row]) if s > 0]
    return run


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


def candidates_from_run(run: Run, qrels: dict[str, dict[str, int]], k: int | None = None) -> list[dict]:
    """Turns a run into candidate lists: judged positives (grade > 0) apart, never among the negatives.

    Queries without a judged positive are skipped and counted in the log (nothing to distil towards).
    """
    out, skipped = [], 0
    for qid, ranked in run.items():
        pos = [d for d, g in qrels.get(qid, {}).items() if g > 0]
        if not pos:
            skipped += 1
            continue
        pos_set = set(pos)
        neg = [d for d, _ in ranked if d not in pos_set]
        out.append({"qid": qid, "pos": pos, "neg": neg[:k] if k is not None else neg})
    if skipped:
        log.warning("candidates: skipped %d queries without a judged positive", skipped)
    return out


def write_candidates(path: str, candidates: Sequence[dict]) -> None:
    """Writes candidate lists as JSONL (``{"qid", "pos", "neg"}`` a line)."""
    import os

    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for c in candidates:
            f.write(json.dumps({"qid": c["qid"], "pos": list(c["pos"]), "neg": list(c["neg"])}) + "\n")
    os.replace(tmp, path)


def read_candidates(path: str) -> list[dict]:
    """Reads candidate JSONL written by :func:`write_candidates` (ids are returned as strings)."""
    out = []
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                out.append({"qid": str(obj["qid"]), "pos": [str(p) for p in obj["pos"]],
                            "neg": [str(n) for n in obj["neg"]]})
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(f"{path}:{lineno}: expected {{'qid', 'pos': [...], 'neg': [...]}} ({e!r})") from None
    return out


def candidates_to_run(candidates: Sequence[dict]) -> Run:
    """Ranked negatives as a run (score = minus the rank), for fusing candidate files."""
    return {c["qid"]: [(d, -float(i)) for i, d in enumerate(c["neg"])] for c in candidates}


def mine_bm25(collection: Collection, k: int = 100, config: BM25Config = BM25Config(),
              n_threads: int = 0) -> tuple[list[dict], dict[str, float]]:
    """BM25 candidates for the collection's (split) queries, and the recall of the positives.

    Returns:
      (candidate lists with up to ``k`` negatives each, ``{"R@k": ...}`` of the BM25 top-k computed by ir-measures
      on the split's qrels; empty when the collection has no qrels).
    """
    from distill_jax.evaluate import evaluate_run

    doc_ids, texts = collection.passages()
    run = bm25_search(doc_ids, texts, collection.queries, k, config, n_threads)
    metrics = {}
    if collection.qrels:
        metrics = evaluate_run(collection.qrels, {q: dict(r) for q, r in run.items()}, (f"R@{k}",))
    return candidates_from_run(run, collection.qrels, k), metrics


def cli_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="distill-jax mine", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collection", help="BEIR folder to mine with BM25")
    parser.add_argument("--split", default="train", help="qrels split whose queries are mined")
    parser.add_argument("--merge", nargs="+", metavar="JSONL", help="fuse these candidate files instead of mining")
    parser.add_argument("--fusion", default="rrf", choices=["rrf", "round_robin"])
    parser.add_argument("--k", type=int, default=100, help="retrieval depth and negatives kept per query")
    parser.add_argument("--out", required=True, help="output candidate JSONL")
    parser.add_argument("--k1", type=float, default=BM25Config.k1)
    parser.add_argument("--b", type=float, default=BM25Config.b)
    parser.add_argument("--method", default=BM25Config.method)
    parser.add_argument("--stopwords", default=BM25Config.stopwords, help="bm25s stopword list ('none' for none)")
    parser.add_argument("--stemmer", default=None, help="PyStemmer algorithm, e.g. english (needs PyStemmer)")
    parser.add_argument("--threads", type=int, default=0, help="bm25s retrieval threads (0: one)")
    parser.add_argument("--empty-docs", default="raise", choices=["raise", "skip", "keep"],
                        help="documents with no title and no text (Cranfield has two)")
    args = parser.parse_args(argv[1:])
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    if args.merge:
        runs = [candidates_to_run(read_candidates(p)) for p in args.merge]
        pos = {}
        for p in args.merge:
            for c in read_candidates(p):
                pos.setdefault(c["qid"], dict.fromkeys(c["pos"]))
        fused = fuse(runs, args.fusion, None)
        cands = [{"qid": q, "pos": list(pos[q]), "neg": [d for d, _ in r if d not in pos[q]][:args.k]}
                 for q, r in fused.items()]
        write_candidates(args.out, cands)
        print(f"fused {len(args.merge)} files ({args.fusion}): {len(cands)} queries -> {args.out}")
        return 0
    if not args.collection:
        parser.error("give --collection (mine) or --merge (fuse)")

    from distill_jax.data.collections import load_collection

    collection = load_collection(args.collection, args.split, on_empty=args.empty_docs)
    config = BM25Config(k1=args.k1, b=args.b, method=args.method,
                        stopwords=None if args.stopwords in (None, "none") else args.stopwords,
                        stemmer=args.stemmer)
    cands, metrics = mine_bm25(collection, args.k, config, args.threads)
    write_candidates(args.out, cands)
    print(f"BM25 top-{args.k} for {len(collection.queries)} {args.split} queries of {args.collection} "
          f"-> {args.out} ({len(cands)} candidate lists)")
    for name, value in metrics.items():
        print(f"recall of the positives {name} (ir-measures): {value:.4f}")
    return 0
