"""Importers of public teacher-score formats: Hofstätter's Margin-MSE TSV, sentence-transformers' hard-negative
JSONL with cross-encoder scores (and its score tables)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator, Sequence

import numpy as np

from distill_jax.data.collections import DataError, open_text
from distill_jax.data.scores.checks import RecordChecker, make_record


def read_hofstaetter_tsv(path: str) -> Iterator[dict]:
    """Hofstätter et al.'s Margin-MSE teacher file, one record per query.

    Each line is ``score_pos<TAB>score_neg<TAB>query_id<TAB>pos_id<TAB>neg_id`` (Zenodo 4068216). Lines of a
    query must be contiguous (sort with ``sort -t$'\\t' -s -k3,3 FILE`` otherwise); a query becomes its distinct
    positives (label 1) followed by its distinct negatives (label 0) in file order, one teacher column. A passage
    repeated with different scores (the positive recurs on every line) gets the mean of its scores.
    """
    seen_q: set[str] = set()
    group: dict | None = None
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            cols = line.split("\t")
            if len(cols) != 5:
                raise DataError(f"{path}:{lineno}: expected 5 tab-separated columns "
                                f"(score_pos, score_neg, query_id, pos_id, neg_id), got {len(cols)}")
            try:
                s_pos, s_neg = float(cols[0]), float(cols[1])
            except ValueError:
                raise DataError(f"{path}:{lineno}: scores {cols[0]!r}, {cols[1]!r} are not numbers") from None
            qid, pos, neg = cols[2].strip(), cols[3].strip(), cols[4].strip()
            if group is None or qid != group["qid"]:
                if group is not None:
                    yield hofstaetter_record(group)
                if qid in seen_q:
                    raise DataError(f"{path}:{lineno}: query {qid!r} appears again after other queries; the lines "
                                    f"of a query must be contiguous: sort -t$'\\t' -s -k3,3 {path}")
                seen_q.add(qid)
                group = {"qid": qid, "pos": {}, "neg": {}}
            group["pos"].setdefault(pos, []).append(s_pos)
            group["neg"].setdefault(neg, []).append(s_neg)
    if group is not None:
        yield hofstaetter_record(group)


def hofstaetter_record(group: dict) -> dict:
    pos = list(group["pos"])
    neg = [n for n in group["neg"] if n not in group["pos"]]
    scores = [np.mean(group["pos"][p]) for p in pos] + [np.mean(group["neg"][n]) for n in neg]
    return make_record(group["qid"], pos + neg, [1] * len(pos) + [0] * len(neg), scores)


def read_ce_scores(path: str, allow_pickle: bool = False) -> dict[str, dict[str, float]]:
    """Cross-encoder scores ``{qid: {pid: score}}`` from JSON (``.json[.gz]``) or, opted in, a pickle.

    sentence-transformers publishes ``cross-encoder-ms-marco-MiniLM-L-6-v2-scores.pkl.gz`` (a pickled dict of
    dicts with int ids). Unpickling runs code from the file, so it needs ``allow_pickle=True``; converting it once
    to JSON is the safer route. Ids are returned as strings.
    """
    if path.endswith((".pkl", ".pkl.gz", ".pickle", ".pickle.gz")):
        if not allow_pickle:
            raise DataError(f"{path}: a pickle can execute code when loaded; pass allow_pickle=True "
                            "(--allow-pickle) if you trust it, or convert it to JSON")
        import pickle

        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            raw = pickle.load(f)  # noqa: S301 (opt-in above)
    else:
        with open_text(path) as f:
            raw = json.load(f)
    return {str(q): {str(p): float(s) for p, s in d.items()} for q, d in raw.items()}


def read_st_hard_negatives(path: str, ce_scores: dict[str, dict[str, float]] | None = None, *,
                           systems: Sequence[str] | None = None, negs_per_system: int | None = None,
                           checker: RecordChecker | None = None) -> Iterator[dict]:
    """sentence-transformers' ``msmarco-hard-negatives.jsonl[.gz]`` with cross-encoder scores, one record a query.

    Accepted lines: ``{"qid": id, "pos": [ids], "neg": {system: [ids], ...}}`` (the published file; systems in
    file order, or only ``systems``, each cut to ``negs_per_system``) or ``"neg": [ids]``. Scores come from
    ``ce_scores[qid][pid]`` or, when a line carries one, from its own ``"ce_scores": {pid: score}``. Candidates
    are the distinct positives (label 1) then the distinct negatives (label 0), one teacher column. A candidate
    without a score is a ``missing_score`` fault under the checker's policy (the record is skipped).
    """
    checker = checker or RecordChecker(path)
    for index, (lineno, obj) in enumerate(iter_jsonl_lines(path)):
        try:
            qid, pos, neg = str(obj["qid"]), [str(p) for p in obj["pos"]], obj["neg"]
        except (KeyError, TypeError):
            raise DataError(f"{path}:{lineno}: expected {{'qid', 'pos': [...], 'neg': {{system: [...]}} or "
                            "[...]}}") from None
        if isinstance(neg, dict):
            names = [s for s in (systems or neg) if s in neg]
            neg = [str(n) for s in names for n in neg[s][:negs_per_system]]
        else:
            neg = [str(n) for n in neg[:negs_per_system]]
        pos = list(dict.fromkeys(pos))
        neg = [n for n in dict.fromkeys(neg) if n not in set(pos)]
        table = obj.get("ce_scores") or (ce_scores or {}).get(qid, {})
        table = {str(k): v for k, v in table.items()}
        missing = [p for p in pos + neg if p not in table]
        if missing:
            checker.seen += 1
            checker.fault(index, qid, "missing_score",
                          f"no cross-encoder score for candidate {missing[0]!r} ({len(missing)} missing)")
            continue
        yield make_record(qid, pos + neg, [1] * len(pos) + [0] * len(neg), [table[p] for p in pos + neg])


def iter_jsonl_lines(path: str) -> Iterator[tuple[int, dict]]:
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({e})") from None
