"""Retrieval evaluation: IR metrics through ir-measures (a maintained library; no hand-written metrics).

:func:`evaluate_run` is the one metric function; :func:`evaluate_runs`, :func:`format_table` and
:func:`results_json` put several runs side by side (``distill-jax evaluate``, :mod:`distill_jax.cli.evaluate`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

DEFAULT_MEASURES = ("nDCG@10", "MRR@10", "R@100")
# The table of `distill-jax evaluate`: ir-measures' AP is trec_eval's map (mean over queries = MAP).
REPORT_MEASURES = ("nDCG@10", "MRR@10", "R@100", "AP")
LABELS = {"AP": "MAP"}


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


def evaluate_runs(qrels: dict[str, dict[str, int]], runs: Mapping[str, Mapping[str, Mapping[str, float]]],
                  measures=REPORT_MEASURES) -> dict[str, dict[str, float]]:
    """:func:`evaluate_run` of every run: ``{run name: {measure: value}}`` in the order of ``runs``."""
    return {name: evaluate_run(qrels, dict(run), measures) for name, run in runs.items()}


def format_table(results: Mapping[str, Mapping[str, float]], digits: int = 4) -> str:
    """One row per run, one column per measure (ir-measures names; AP shown as MAP), plain text.

    Args:
      results: ``{run name: {measure: value}}`` as :func:`evaluate_runs` returns; every run has the same
        measures.
    """
    if not results:
        raise ValueError("no results to tabulate")
    measures = list(next(iter(results.values())))
    width = max(4, *(len(n) for n in results))
    cols = [max(len(LABELS.get(m, m)), digits + 2) for m in measures]
    head = "run".ljust(width) + "".join(f"  {LABELS.get(m, m):>{c}}" for m, c in zip(measures, cols))
    rows = [name.ljust(width) + "".join(f"  {vals[m]:>{c}.{digits}f}" for m, c in zip(measures, cols))
            for name, vals in results.items()]
    return "\n".join([head, "-" * len(head), *rows])


def results_json(results: Mapping[str, Mapping[str, float]], **meta) -> dict:
    """The numbers of :func:`format_table` as JSON-able data: ``{"measures": [...], "runs": {name: {label:
    value}}, **meta}`` with the table's labels (MAP for AP)."""
    measures = list(next(iter(results.values()))) if results else []
    return {"measures": [LABELS.get(m, m) for m in measures],
            "runs": {name: {LABELS.get(m, m): float(v) for m, v in vals.items()} for name, vals in results.items()},
            **meta}


def run_names(paths: list[str]) -> list[str]:
    """Table names of run files: each file's stem (``runs/bm25.trec`` -> ``bm25``), with its parent folder
    prefixed where two stems clash."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    clash = {s for s in stems if stems.count(s) > 1}
    names = [f"{os.path.basename(os.path.dirname(os.path.abspath(p)))}/{s}" if s in clash else s
             for p, s in zip(paths, stems)]
    if len(set(names)) != len(names):
        raise ValueError(f"run files {paths} do not have distinct names; rename them")
    return names


def write_results_json(path: str, results: Mapping[str, Mapping[str, float]], **meta) -> str:
    """Writes :func:`results_json` to ``path`` (atomically); returns ``path``."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(results_json(results, **meta), f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return path
