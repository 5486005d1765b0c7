"""The one run / candidate-list format, and the one positive/negative rule.

A *run* is a ranking per query: ``{qid: [(doc id, score), ...]}`` best first (:data:`Run`). Runs are read and
written as TREC files (``qid Q0 docid rank score tag``, :func:`write_trec_run` / :func:`read_trec_run`).

A *candidate list* is what teacher scoring and training read: one JSON object a line,
``{"qid": str, "pos": [doc ids], "neg": [doc ids]}``, negatives best first. The rule that turns a run into candidate
lists lives here only (:func:`candidates_from_run`): the positives are the documents the qrels grade > 0; a
negative is a retrieved document that is not a positive. ``exclude_judged=True`` drops every judged document
(grade 0 included) from the negatives, for teacher fitting, where a judged-irrelevant document may be a near miss.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence

from distill_jax.data.collections import DataError, open_text

log = logging.getLogger(__name__)

Run = dict[str, list[tuple[str, float]]]  # qid -> [(doc id, score)] best first


def sort_run(scores: Mapping[str, Mapping[str, float]], k: int | None = None) -> Run:
    """``{qid: {doc: score}}`` -> :data:`Run`, best first; ties broken by doc id (deterministic), top ``k``."""
    return {q: sorted(docs.items(), key=lambda x: (-x[1], x[0]))[:k] for q, docs in scores.items()}


def as_scores(run: Run) -> dict[str, dict[str, float]]:
    """:data:`Run` -> ``{qid: {doc: score}}`` (the form ir-measures reads)."""
    return {q: dict(r) for q, r in run.items()}


def write_trec_run(path: str, run: Run, tag: str = "distill-jax") -> str:
    """Writes a TREC run file atomically: ``qid Q0 docid rank score tag`` (1-based ranks, the run's order).

    Returns:
      ``path``.
    """
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for qid, ranked in run.items():
            for rank, (doc, score) in enumerate(ranked, 1):
                f.write(f"{qid} Q0 {doc} {rank} {float(score):.6f} {tag}\n")
    os.replace(tmp, path)
    return path


def read_trec_run(path: str) -> Run:
    """Reads a TREC run file (whitespace-separated ``qid Q0 docid rank score tag``), best first by score.

    Raises:
      DataError: naming the file and line of a malformed row.
    """
    scores: dict[str, dict[str, float]] = {}
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 5:
                raise DataError(f"{path}:{lineno}: expected 'qid Q0 docid rank score [tag]', got {line.strip()!r}")
            try:
                scores.setdefault(parts[0], {})[parts[2]] = float(parts[4])
            except ValueError:
                raise DataError(f"{path}:{lineno}: score {parts[4]!r} is not a number") from None
    return sort_run(scores)


def candidates_from_run(run: Run, qrels: Mapping[str, Mapping[str, int]], k: int | None = None,
                        exclude_judged: bool = False) -> list[dict]:
    """Turns a run into candidate lists: judged positives (grade > 0) apart, never among the negatives.

    Args:
      run: the first-stage ranking.
      qrels: ``{qid: {doc: grade}}``.
      k: keep at most ``k`` negatives (None: all).
      exclude_judged: also drop documents judged 0 from the negatives.

    Queries without a judged positive are skipped and counted in the log (nothing to distil towards).
    """
    out, skipped = [], 0
    for qid, ranked in run.items():
        judged = qrels.get(qid, {})
        pos = [d for d, g in judged.items() if g > 0]
        if not pos:
            skipped += 1
            continue
        drop = set(judged) if exclude_judged else set(pos)
        neg = [d for d, _ in ranked if d not in drop]
        out.append({"qid": qid, "pos": pos, "neg": neg[:k] if k is not None else neg})
    if skipped:
        log.warning("candidates: skipped %d queries without a judged positive", skipped)
    return out


def write_candidates(path: str, candidates: Sequence[dict]) -> None:
    """Writes candidate lists as JSONL (``{"qid", "pos", "neg"}`` a line), atomically."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for c in candidates:
            f.write(json.dumps({"qid": c["qid"], "pos": list(c["pos"]), "neg": list(c["neg"])}) + "\n")
    os.replace(tmp, path)


def read_candidates(path: str) -> list[dict]:
    """Reads candidate JSONL written by :func:`write_candidates` (ids are returned as strings)."""
    out = []
    with open_text(path) as f:
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


__all__ = ["Run", "sort_run", "as_scores", "write_trec_run", "read_trec_run", "candidates_from_run",
           "write_candidates", "read_candidates", "candidates_to_run"]
