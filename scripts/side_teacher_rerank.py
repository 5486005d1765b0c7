"""How a teacher with side information reranks: the cross-encoder's scores, BM25's and the side column's dot
products over each test query's BM25 top ``--depth``, alone and fused per query by z-score mean (as the loader
fuses the answer key's columns), evaluated on the test qrels.

    python scripts/side_teacher_rerank.py --job runs/scifact --side runs/side --collection ../shared/data/scifact

``--job`` is a finished ``distill-jax run`` work directory (its ``runs/bm25.trec`` and ``runs/teacher.trec``:
the cross-encoder reranking BM25's top 100); ``--side`` a ``distill-jax side-features`` directory of the same
collection. Prints the table (nDCG@10, MRR@10, R@100, MAP); BM25's order below the reranked top.
"""

from __future__ import annotations

import argparse
import os

COLUMNS = {"cross-encoder": (0,), "cross-encoder + BM25": (0, 1), "cross-encoder + side": (0, 2),
           "cross-encoder + BM25 + side": (0, 1, 2), "side alone": (2,)}


def main() -> None:
    from distill_jax.data.candidates import as_scores, read_trec_run
    from distill_jax.data.collections import load_collection
    from distill_jax.eval.metrics import evaluate_runs, format_table
    from distill_jax.jobs.run import ensemble_rerank
    from distill_jax.teacher.side import SideFeatures

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", required=True, help="a finished `distill-jax run` work directory")
    parser.add_argument("--side", required=True, help="a `distill-jax side-features` directory")
    parser.add_argument("--collection", required=True, help="the BEIR folder of the job")
    parser.add_argument("--split", default="test")
    parser.add_argument("--depth", type=int, default=100, help="reranked top of BM25 (the teacher run's depth)")
    args = parser.parse_args()

    col = load_collection(args.collection, args.split)
    bm25 = read_trec_run(os.path.join(args.job, "runs", "bm25.trec"))
    side = SideFeatures(args.side)
    table = [as_scores(read_trec_run(os.path.join(args.job, "runs", "teacher.trec"))), as_scores(bm25), {}]
    for q, ranked in bm25.items():  # the side column: <query vector, passage vector> of each reranked pair
        docs = [d for d, _ in ranked[:args.depth]]
        table[2][q] = dict(zip(docs, side.pair_scores([q] * len(docs), docs).tolist()))
    runs = {name: as_scores(ensemble_rerank(bm25, [table[c] for c in cols], args.depth, args.depth, "zmean"))
            for name, cols in COLUMNS.items()}
    print(f"{args.split}: {len(col.qrels)} judged queries; BM25's top {args.depth} reranked")
    print(format_table(evaluate_runs(col.qrels, runs, ("nDCG@10", "MRR@10", "R@100", "MAP"))))


if __name__ == "__main__":
    main()
