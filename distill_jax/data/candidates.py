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
    lines = (f"{qid} Q0 {doc} {rank} {float(score):.6f} {tag}\n" for qid, ranked in run.items()
             for rank, (doc, score) in enumerate(ranked, 1))
    atomic_write_lines(path, lines)
    return path


def atomic_write_lines(path: str, lines) -> None:
    """Writes text lines to ``path`` atomically: a temporary file beside it, renamed when complete, removed on any
    failure (no ``PATH.tmp`` is ever left behind).

    Raises:
      IsADirectoryError: ``path`` is a directory (named, with the fix); nothing is written.
    """
    import tempfile

    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory; pass a file name for the output (e.g. {path}.jsonl)")
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp",
                               dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(lines)
        os.chmod(tmp, 0o644 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
    """Writes candidate lists as JSONL (``{"qid", "pos", "neg"}`` a line), atomically (see
    :func:`atomic_write_lines`: nothing is left behind when it fails)."""
    atomic_write_lines(path, (json.dumps({"qid": c["qid"], "pos": list(c["pos"]), "neg": list(c["neg"])}) + "\n"
                              for c in candidates))


def read_candidates(path: str, *, duplicates: str = "raise", line_numbers: bool = False) -> list[dict]:
    """Reads candidate JSONL written by :func:`write_candidates` (ids are returned as strings).

    Args:
      path: the file.
      duplicates: a passage id listed twice in one line's ``pos`` or twice in its ``neg``: "raise" (a
        :class:`DataError` naming the line) or "keep" (the caller checks, e.g. under a bad-record policy). A
        negative that is also a positive is not an error: it counts as a positive (see :func:`duplicate_id`).
      line_numbers: also return each list's 1-based line number as ``"line"``.
    """
    if duplicates not in ("raise", "keep"):
        raise ValueError(f"duplicates={duplicates!r}: use 'raise' or 'keep'")
    out = []
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                c = {"qid": str(obj["qid"]), "pos": [str(p) for p in obj["pos"]],
                     "neg": [str(n) for n in obj["neg"]]}
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(f"{path}:{lineno}: expected {{'qid', 'pos': [...], 'neg': [...]}} ({e!r})") from None
            if duplicates == "raise":
                dup = duplicate_id(c)
                if dup is not None:
                    raise DataError(f"{path}:{lineno}: query {c['qid']!r} lists passage {dup!r} more than once; "
                                    "remove the repeat (`distill-jax mine` never writes one)")
            if line_numbers:
                c["line"] = lineno
            out.append(c)
    return out


def duplicate_id(candidate: dict) -> str | None:
    """The first passage id a candidate list names twice in ``pos`` or twice in ``neg``, else None (a negative
    that is also a positive is dropped from the negatives by its readers, not an error)."""
    for ids in (candidate["pos"], candidate["neg"]):
        seen: set[str] = set()
        for p in ids:
            if p in seen:
                return p
            seen.add(p)
    return None


def candidates_to_run(candidates: Sequence[dict]) -> Run:
    """Ranked negatives as a run (score = minus the rank), for fusing candidate files."""
    return {c["qid"]: [(d, -float(i)) for i, d in enumerate(c["neg"])] for c in candidates}


__all__ = ["Run", "sort_run", "as_scores", "write_trec_run", "read_trec_run", "candidates_from_run",
           "write_candidates", "read_candidates", "duplicate_id", "candidates_to_run", "atomic_write_lines"]
