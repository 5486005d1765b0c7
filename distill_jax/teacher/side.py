"""A teacher column from side information: per-passage features the student never sees.

The multi-modal case: a passage comes with an image, a teacher that sees the image scores (query, passage) pairs
better than text alone, and the student to distil reads text only. Here the teacher's side column is the dot
product of precomputed vectors, ``score(q, p) = <Q[q], P[p]>``: ``P`` one vector per passage (image embeddings,
or, as the project derives for a text collection, the passage vectors of another encoder standing in for the
image), ``Q`` one vector per query in the same space (a CLIP-style text tower; here the same encoder's query
vectors). ``distill-jax score --teacher side:DIR`` writes it as one more teacher column beside a cross-encoder's,
and ``data.teacher_combine`` (``zmean``) fuses the columns into the targets of a text-only student.

A side-feature directory (:func:`write_side_features`; ``distill-jax side-features`` builds one from a dense
encoder and a BEIR collection)::

    side.json             {"dim": D, "source": "...", "normalized": bool, ...}
    passages.npy          [C, D] float32, row i = passage_ids[i]
    passage_ids.json      ["doc1", ...]
    queries.npy           [Q, D] float32
    query_ids.json        ["q1", ...]
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence

import numpy as np

SIDE_PREFIX = "side:"
FILES = ("side.json", "passages.npy", "passage_ids.json", "queries.npy", "query_ids.json")


def is_side_teacher(teacher: str) -> bool:
    return teacher.startswith(SIDE_PREFIX)


def side_directory(teacher: str) -> str:
    return teacher[len(SIDE_PREFIX):]


def write_side_features(directory: str, query_ids: Sequence[str], queries: np.ndarray,
                        passage_ids: Sequence[str], passages: np.ndarray, meta: dict) -> str:
    """Writes a side-feature directory (module docstring); refuses to replace one that is there.

    Args:
      query_ids, queries: ids and [Q, D] vectors of the queries.
      passage_ids, passages: ids and [C, D] vectors of the passages.
      meta: what the features were made from (written to ``side.json`` beside ``dim``).

    Raises:
      FileExistsError: ``directory`` already holds side features; ValueError: shapes or ids do not fit.
    """
    queries, passages = np.asarray(queries, np.float32), np.asarray(passages, np.float32)
    if queries.ndim != 2 or passages.ndim != 2 or queries.shape[1] != passages.shape[1]:
        raise ValueError(f"side features: queries {queries.shape} and passages {passages.shape} must be [n, D] "
                         "with the same D")
    for what, ids, x in (("query", query_ids, queries), ("passage", passage_ids, passages)):
        if len(ids) != len(x) or len(set(ids)) != len(ids):
            raise ValueError(f"side features: {len(ids)} {what} ids (distinct: {len(set(ids))}) for {len(x)} rows")
    if os.path.exists(os.path.join(directory, "side.json")):
        raise FileExistsError(f"{directory} already holds side features; pass a new --out or remove it")
    os.makedirs(directory, exist_ok=True)
    np.save(os.path.join(directory, "passages.npy"), passages)
    np.save(os.path.join(directory, "queries.npy"), queries)
    for name, ids in (("passage_ids.json", passage_ids), ("query_ids.json", query_ids)):
        with open(os.path.join(directory, name), "w") as f:
            json.dump(list(ids), f)
    with open(os.path.join(directory, "side.json"), "w") as f:  # last: its presence marks a finished directory
        json.dump({"dim": int(passages.shape[1]), **meta}, f, indent=2)
    return directory


class SideFeatures:
    """A side-feature directory, read: ``pair_scores(query_ids, passage_ids)`` is the teacher column.

    Raises (on construction):
      FileNotFoundError: the directory or one of its files is missing (named); ValueError: the files disagree.
    """

    def __init__(self, directory: str):
        missing = [n for n in FILES if not os.path.isfile(os.path.join(directory, n))]
        if missing:
            raise FileNotFoundError(f"side features {directory}: missing {', '.join(missing)}; build the directory "
                                    "with `distill-jax side-features` (or write the files the module documents)")
        self.directory = directory
        with open(os.path.join(directory, "side.json")) as f:
            self.meta = json.load(f)
        self.passages = np.load(os.path.join(directory, "passages.npy"), mmap_mode="r")
        self.queries = np.load(os.path.join(directory, "queries.npy"))
        rows = {}
        for name, x in (("passage_ids.json", self.passages), ("query_ids.json", self.queries)):
            with open(os.path.join(directory, name)) as f:
                ids = json.load(f)
            if len(ids) != len(x) or x.ndim != 2 or x.shape[1] != self.meta["dim"]:
                raise ValueError(f"side features {directory}: {name} lists {len(ids)} ids for an array of shape "
                                 f"{x.shape} (dim {self.meta['dim']} in side.json)")
            rows[name] = {i: r for r, i in enumerate(ids)}
        self._passage_row, self._query_row = rows["passage_ids.json"], rows["query_ids.json"]

    def pair_scores(self, query_ids: Sequence[str], passage_ids: Sequence[str]) -> np.ndarray:
        """[P] float32 ``<Q[q], P[p]>`` of each (query id, passage id) pair.

        Raises:
          KeyError: an id without a vector, naming it and the file that lacks it.
        """
        def rows(ids, table, file):
            try:
                return np.fromiter((table[i] for i in ids), np.int64, len(ids))
            except KeyError as e:
                raise KeyError(f"side features {self.directory}: {file} has no vector for {e.args[0]!r}; build "
                               "them for every query and passage the candidates list") from None

        q = self.queries[rows(query_ids, self._query_row, "query_ids.json")]
        p = np.asarray(self.passages[rows(passage_ids, self._passage_row, "passage_ids.json")])
        return np.einsum("pd,pd->p", q.astype(np.float64), p.astype(np.float64)).astype(np.float32)


def side_fingerprint(directory: str) -> str:
    """sha256 over the side-feature files' names, sizes and content hashes (the score manifest's teacher id)."""
    from distill_jax.data.scores.schema import file_identity

    files = {n: file_identity(os.path.join(directory, n)) for n in FILES if os.path.isfile(os.path.join(directory, n))}
    return hashlib.sha256(json.dumps({"side": files}, sort_keys=True).encode()).hexdigest()
