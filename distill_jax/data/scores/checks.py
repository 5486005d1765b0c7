"""Records of a teacher-score dataset and the bad-input policy that checks them (NaN/inf scores, a candidate id
missing from the corpus, a duplicate candidate id, a query without a positive, a wrong score shape)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from distill_jax.data.collections import DataError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BadInputPolicy:
    """What to do with a bad record.

    Attributes:
      policy: "raise" (stop at the first, naming it) or "skip" (drop, count per type, log).
      max_skip_fraction: with "skip", raise anyway when more than this fraction of records was bad
        (in the spirit of grain's ``filter_raise_threshold_ratio``): a broken file must not train silently.
      require_positive: a record needs at least one candidate with label > 0 (every distillation loss here puts a
        positive in column 0).
    """

    policy: str = "raise"
    max_skip_fraction: float = 0.001
    require_positive: bool = True

    def __post_init__(self):
        if self.policy not in ("raise", "skip"):
            raise ValueError(f"BadInputPolicy.policy={self.policy!r}: use 'raise' or 'skip'")


class RecordChecker:
    """Validates records one by one under a policy and keeps the per-type counts.

    Args:
      source: names the input in messages (a file path or dataset directory).
      num_teachers: expected T (None: taken from the first record).
      corpus: anything supporting ``rows(ids) -> int array (-1 = missing)`` (a :class:`TextTable`) or a set of
        ids; None skips the corpus check.
      unit: what ``index`` counts in messages ("record"; "line" for a file read line by line).
      hint: how to reach the "skip" policy from where the input is read (a flag or config field).
    """

    FAULTS = ("empty_qid", "no_candidates", "shape", "nonfinite_score", "duplicate_pid", "missing_pid",
              "no_positive", "missing_score", "missing_query")

    DEFAULT_HINT = ("`distill-jax score --bad-records skip`, `train --set data.bad_records=skip`, `import-scores "
                    "--policy skip`")

    def __init__(self, source: str, policy: BadInputPolicy = BadInputPolicy(), num_teachers: int | None = None,
                 corpus=None, *, unit: str = "record", hint: str | None = None):
        self.source, self.policy, self.num_teachers, self.corpus = source, policy, num_teachers, corpus
        self.unit, self.hint = unit, hint or self.DEFAULT_HINT
        self.counts = dict.fromkeys(self.FAULTS, 0)
        self.seen = 0
        self.bad_indices: list[int] = []

    def fault(self, index: int, qid, kind: str, detail: str) -> None:
        """Records a fault found outside :meth:`check` (e.g. a missing score in an importer)."""
        if self.policy.policy == "raise":
            raise DataError(f"{self.source}: {self.unit} {index} (qid {qid!r}): {kind}: {detail}. Fix the input, or "
                            f"drop such records with the skip policy ({self.hint}; counted, at most "
                            f"max_skip_fraction={self.policy.max_skip_fraction} of them)")
        self.counts[kind] += 1
        self.bad_indices.append(index)

    def check(self, index: int, qid: str, pids: Sequence[str], labels: np.ndarray, scores: np.ndarray) -> bool:
        """True when the record is good; False when it is to be skipped; raises under the "raise" policy."""
        self.seen += 1
        problem = self._problem(qid, pids, labels, scores)
        if problem is None:
            return True
        self.fault(index, qid, *problem)
        return False

    def _problem(self, qid, pids, labels, scores) -> tuple[str, str] | None:
        if not qid:
            return "empty_qid", "the query id is empty"
        m = len(pids)
        if m == 0:
            return "no_candidates", "the candidate list is empty"
        if self.num_teachers is None:
            self.num_teachers = scores.shape[-1] if scores.ndim == 2 else None
        if scores.shape != (m, self.num_teachers) or labels.shape != (m,):
            return "shape", (f"field 'scores' has shape {scores.shape} and 'labels' {labels.shape}; expected "
                             f"[{m}, {self.num_teachers}] and [{m}] for {m} candidates and {self.num_teachers} teachers")
        bad = ~np.isfinite(scores)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            return "nonfinite_score", (f"field 'scores' of candidate {pids[r]!r} (teacher column {c}) is "
                                       f"{scores[r, c]}")
        if len(set(pids)) != m:
            seen: set = set()
            dup = next(p for p in pids if p in seen or seen.add(p))
            return "duplicate_pid", f"field 'pids' lists candidate {dup!r} more than once"
        if self.corpus is not None:
            missing = _missing(self.corpus, pids)
            if missing:
                return "missing_pid", (f"field 'pids': candidate {missing[0]!r} is not in the corpus "
                                       f"({len(missing)} missing in this record)")
        if self.policy.require_positive and not (labels > 0).any():
            return "no_positive", "no candidate has a label > 0 (no positive to distil towards)"
        return None

    def finish(self) -> dict[str, int]:
        """Logs the counts and raises when the skipped fraction is over the threshold. Returns the counts."""
        skipped = sum(self.counts.values())
        if skipped:
            detail = ", ".join(f"{k}={v}" for k, v in self.counts.items() if v)
            log.warning("%s: skipped %d of %d records (%s)", self.source, skipped, self.seen, detail)
            if skipped > self.policy.max_skip_fraction * max(self.seen, 1):
                raise DataError(f"{self.source}: {skipped} of {self.seen} records are bad ({detail}), more than "
                                f"max_skip_fraction={self.policy.max_skip_fraction}; the input looks broken: "
                                "fix it (or raise the threshold knowingly: --max-skip-fraction, "
                                "data.max_skip_fraction)")
        return {k: v for k, v in self.counts.items() if v}


def _missing(corpus, pids: Sequence[str]) -> list[str]:
    if hasattr(corpus, "rows"):
        rows = corpus.rows(pids)
        return [pids[i] for i in np.nonzero(rows < 0)[0]]
    return [p for p in pids if p not in corpus]


def make_record(qid, pids, labels, scores) -> dict:
    """A record in the dataset's types: str ids, int32 labels [M], float32 scores [M, T]."""
    scores = np.asarray(scores, np.float32)
    if scores.ndim == 1:
        scores = scores[:, None]
    return {"qid": str(qid), "pids": [str(p) for p in pids], "labels": np.asarray(labels, np.int32).reshape(-1),
            "scores": scores}


def validated(records: Iterable[dict], checker: RecordChecker) -> Iterator[dict]:
    """Yields the good records (see :class:`RecordChecker`); calls ``checker.finish()`` at the end."""
    for index, rec in enumerate(records):
        if checker.check(index, rec["qid"], rec["pids"], rec["labels"], rec["scores"]):
            yield rec
    checker.finish()

