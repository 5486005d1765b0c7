"""Retrieval evaluation: IR metrics through ir-measures (a maintained library; no hand-written metrics).

``distill-jax evaluate --collection DIR --split test --run RUN`` scores a TREC run file against a BEIR split.
"""

from __future__ import annotations

import argparse

DEFAULT_MEASURES = ("nDCG@10", "MRR@10", "R@100")


def evaluate_run(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]],
                 measures=DEFAULT_MEASURES) -> dict[str, float]:
    """Mean of each measure over the judged queries, computed by ir-measures.

    Args:
      qrels: ``{qid: {doc_id: grade}}``; grades > 0 are relevant.
      run: ``{qid: {doc_id: score}}`` (higher is better). Judged queries absent from the run count as 0, as in
        trec_eval's ``-c``; run queries without judgements are ignored.
      measures: names ir-measures parses (``nDCG@10``, ``MRR@10``, ``R@100``, ``AP``, ...).

    Returns:
      ``{measure name as given: value}``.
    """
    import ir_measures  # not a core dependency: imported on use

    parsed = {name: ir_measures.parse_measure(name) for name in measures}
    qrels = {str(q): {str(d): int(g) for d, g in docs.items()} for q, docs in qrels.items()}
    run = {str(q): {str(d): float(s) for d, s in docs.items()} for q, docs in run.items()}
    per_query = {name: {} for name in measures}
    by_measure = {m: name for name, m in parsed.items()}
    for metric in ir_measures.iter_calc(list(parsed.values()), qrels, run):
        per_query[by_measure[metric.measure]][metric.query_id] = float(metric.value)
    # mean over ALL judged queries (those with a relevant document): a query the run missed counts 0
    judged = [q for q, docs in qrels.items() if any(g > 0 for g in docs.values())]
    if not judged:
        raise ValueError("evaluate_run: the qrels have no relevant judgement (grade > 0)")
    return {name: sum(vals.get(q, 0.0) for q in judged) / len(judged) for name, vals in per_query.items()}


def cli_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="distill-jax evaluate", description=__doc__)
    parser.add_argument("--collection", required=True, help="BEIR folder (its qrels/<split>.tsv are the judgements)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--run", required=True, help="TREC run file: qid Q0 docid rank score tag")
    parser.add_argument("--measures", nargs="+", default=list(DEFAULT_MEASURES))
    args = parser.parse_args(argv[1:])

    import ir_measures

    from distill_jax.data.collections import read_qrels
    import os

    qrels = read_qrels(os.path.join(args.collection, "qrels", f"{args.split}.tsv"))
    run: dict[str, dict[str, float]] = {}
    for r in ir_measures.read_trec_run(args.run):
        run.setdefault(r.query_id, {})[r.doc_id] = r.score
    for name, value in evaluate_run(qrels, run, args.measures).items():
        print(f"{name}\t{value:.4f}")
    return 0
