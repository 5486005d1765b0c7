"""``distill-jax evaluate``: nDCG@10, MRR@10, R@100 and MAP of TREC runs on a BEIR split, side by side.

    distill-jax evaluate --collection ../shared/data/scifact --split test --run bm25.trec --run dense.trec \\
        --json scifact-test.json

Metrics come from ir-measures (``distill_jax.eval.metrics.evaluate_run``); a judged query missing from a run
counts 0. Each run's row is named after its file's stem.
"""

from __future__ import annotations

import argparse
import os


def main(argv: list[str]) -> int:
    from distill_jax.eval.metrics import REPORT_MEASURES

    parser = argparse.ArgumentParser(prog="distill-jax evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collection", required=True, help="BEIR folder (its qrels/<split>.tsv are the judgements)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--run", action="append", required=True, metavar="RUN.trec",
                        help="TREC run file (qid Q0 docid rank score tag); repeat for several runs")
    parser.add_argument("--measures", nargs="+", default=list(REPORT_MEASURES),
                        help="ir-measures names (default: %(default)s; AP is printed as MAP)")
    parser.add_argument("--json", default=None, metavar="OUT.json", help="also write the numbers as JSON")
    args = parser.parse_args(argv)

    from distill_jax.data.candidates import as_scores, read_trec_run
    from distill_jax.data.collections import DataError, read_qrels
    from distill_jax.eval import metrics

    qrels_path = os.path.join(args.collection, "qrels", f"{args.split}.tsv")
    if not os.path.isfile(qrels_path):
        raise DataError(f"{qrels_path} not found: is {args.collection} a BEIR folder with a {args.split!r} split?")
    qrels = read_qrels(qrels_path)
    names = metrics.run_names(args.run)
    runs = {name: as_scores(read_trec_run(path)) for name, path in zip(names, args.run)}
    results = metrics.evaluate_runs(qrels, runs, args.measures)
    judged = sum(1 for docs in qrels.values() if any(g > 0 for g in docs.values()))
    print(f"{args.collection} {args.split}: {judged} judged queries (ir-measures; missing queries count 0)")
    print(metrics.format_table(results))
    for name, run in runs.items():
        absent = sum(1 for q in qrels if q not in run)
        if absent:
            print(f"note: {name} has no ranking for {absent} judged queries")
    if args.json:
        metrics.write_results_json(args.json, results, collection=args.collection, split=args.split,
                                   judged_queries=judged, run_files=dict(zip(names, args.run)))
        print(f"-> {args.json}")
    return 0
