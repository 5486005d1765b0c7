"""BEIR-layout collections: streaming readers with validation, and a compact id -> text table.

A BEIR folder holds ``corpus.jsonl`` (or ``corpus.jsonl.gz``) with ``{"_id", "title", "text"}`` per line,
``queries.jsonl`` with ``{"_id", "text"}``, and ``qrels/<split>.tsv`` (``query-id<TAB>corpus-id<TAB>score`` with a
header line). Every problem is reported as a :class:`DataError` naming the file, the line and the fix.

Passage text is ``(title + " " + text).strip()``: the convention of BEIR's ``SentenceBERT.encode_corpus`` and of
sentence-transformers' ``InformationRetrievalEvaluator`` (an empty title gives the bare text).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import os
from collections.abc import Iterable, Iterator

import numpy as np

log = logging.getLogger(__name__)


class DataError(ValueError):
    """Bad input data; the message names the file/record, the field and the fix."""


def passage_text(title: str, text: str) -> str:
    """The text a model sees for a passage: title and body joined by one space (BEIR / sentence-transformers)."""
    return (title + " " + text).strip() if title else text.strip()


def open_text(path: str):
    """A text file for reading (UTF-8), gunzipped on the fly when the name ends in ``.gz``."""
    return gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path, encoding="utf-8")


def _iter_jsonl(path: str) -> Iterator[tuple[int, dict]]:
    """Yields (1-based line number, object); blank lines are skipped, malformed ones raise DataError."""
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e}); fix or remove the line") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def _get_id(path: str, lineno: int, obj: dict) -> str:
    if "_id" not in obj:
        raise DataError(f"{path}:{lineno}: missing field '_id'; every BEIR line needs a non-empty '_id'")
    value = str(obj["_id"]).strip()
    if not value:
        raise DataError(f"{path}:{lineno}: empty '_id'; give the record a unique non-empty id or remove it")
    return value


EMPTY_DOC_POLICIES = ("raise", "skip", "keep")


def read_corpus(path: str, on_empty: str = "raise", *,
                skipped: list[str] | None = None) -> dict[str, tuple[str, str]]:
    """Reads ``corpus.jsonl[.gz]`` into ``{doc_id: (title, text)}`` (one streaming pass, one json.loads a line).

    Args:
      path: the file.
      on_empty: a document whose title and text are both empty: "raise", "skip" (left out, counted in the log)
        or "keep" (real collections have them: Cranfield's docs 471 and 995 are empty in the original; a
        tokenizer then sees an empty passage).
      skipped: when given, the ids of the documents left out by ``on_empty="skip"`` are appended to it.

    Raises:
      DataError: malformed JSON, a missing/empty/duplicate ``_id``, or (on_empty="raise") an empty passage.
    """
    if on_empty not in EMPTY_DOC_POLICIES:
        raise ValueError(f"on_empty={on_empty!r}: one of {EMPTY_DOC_POLICIES}")
    corpus: dict[str, tuple[str, str]] = {}
    first_line: dict[str, int] = {}
    empty: list[str] = []
    for lineno, obj in _iter_jsonl(path):
        pid = _get_id(path, lineno, obj)
        title, text = str(obj.get("title") or ""), str(obj.get("text") or "")
        if not (title.strip() or text.strip()):
            if on_empty == "raise":
                raise DataError(f"{path}:{lineno}: document {pid!r} has an empty title and text; remove it, fill "
                                "it, or read with on_empty='skip' (drop) / 'keep' (--empty-docs)")
            empty.append(pid)
            if on_empty == "skip":
                if skipped is not None:
                    skipped.append(pid)
                continue
        if pid in corpus:
            raise DataError(
                f"{path}:{lineno}: duplicate document id {pid!r} (first seen on line {first_line[pid]}); "
                "ids must be unique: remove or rename one of them")
        corpus[pid] = (title, text)
        first_line[pid] = lineno
    if empty:
        log.warning("%s: %s %d empty documents (%s)", path, "skipped" if on_empty == "skip" else "kept",
                    len(empty), ", ".join(empty[:10]) + (" ..." if len(empty) > 10 else ""))
    if not corpus:
        raise DataError(f"{path}: no documents; is this the right file?")
    return corpus


def read_queries(path: str) -> dict[str, str]:
    """Reads ``queries.jsonl`` into ``{query_id: text}``.

    Raises:
      DataError: malformed JSON, a missing/empty/duplicate ``_id`` or an empty ``text``.
    """
    queries: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for lineno, obj in _iter_jsonl(path):
        qid = _get_id(path, lineno, obj)
        text = str(obj.get("text") or "").strip()
        if not text:
            raise DataError(f"{path}:{lineno}: query {qid!r} has an empty 'text'; remove it or fill it")
        if qid in queries:
            raise DataError(
                f"{path}:{lineno}: duplicate query id {qid!r} (first seen on line {first_line[qid]}); "
                "ids must be unique: remove or rename one of them")
        queries[qid] = text
        first_line[qid] = lineno
    if not queries:
        raise DataError(f"{path}: no queries; is this the right file?")
    return queries


def read_qrels(path: str, corpus_ids: Iterable[str] | None = None,
               query_ids: Iterable[str] | None = None, *, ignore_docs: Iterable[str] = ()) -> dict[str, dict[str, int]]:
    """Reads a BEIR qrels TSV (``query-id  corpus-id  score``, header optional) into ``{qid: {doc_id: grade}}``.

    Args:
      path: the TSV file.
      corpus_ids / query_ids: when given, every judged id must be among them.
      ignore_docs: judgements of these documents are dropped (counted in the log): the documents a reader was
        told to skip (``on_empty="skip"``), not unknown ids, which stay an error.

    Raises:
      DataError: a short line, a non-integer grade, or an id that names no document / query.
    """
    docs = corpus_ids if corpus_ids is None or isinstance(corpus_ids, (set, dict)) else set(corpus_ids)
    qs = query_ids if query_ids is None or isinstance(query_ids, (set, dict)) else set(query_ids)
    ignore = set(ignore_docs)
    dropped: list[str] = []
    qrels: dict[str, dict[str, int]] = {}
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            cols = line.split("\t")
            if len(cols) == 4:  # TREC qrels "qid iteration docid grade", tab separated
                cols = [cols[0], cols[2], cols[3]]
            if len(cols) != 3:
                raise DataError(f"{path}:{lineno}: expected 3 tab-separated columns "
                                f"(query-id, corpus-id, score), got {len(cols)}")
            qid, pid, grade = (c.strip() for c in cols)
            try:
                value = int(float(grade))
            except ValueError:
                if lineno == 1:  # the header line
                    continue
                raise DataError(f"{path}:{lineno}: score {grade!r} is not an integer grade") from None
            if not qid or not pid:
                raise DataError(f"{path}:{lineno}: empty query or corpus id")
            if pid in ignore:
                dropped.append(f"{qid}/{pid}")
                continue
            if qs is not None and qid not in qs:
                raise DataError(f"{path}:{lineno}: query id {qid!r} is not in queries.jsonl; "
                                "add the query or remove the judgement")
            if docs is not None and pid not in docs:
                raise DataError(f"{path}:{lineno}: corpus id {pid!r} is not in the corpus; "
                                "add the document or remove the judgement")
            qrels.setdefault(qid, {})[pid] = value
    if dropped:
        log.warning("%s: dropped %d judgements of skipped documents (%s)", path, len(dropped),
                    ", ".join(dropped[:10]) + (" ..." if len(dropped) > 10 else ""))
    return qrels


@dataclasses.dataclass(frozen=True)
class Collection:
    """A BEIR collection in memory.

    Attributes:
      corpus: ``{doc_id: (title, text)}`` in file order.
      queries: ``{query_id: text}``; restricted to the split's judged queries when a split was loaded.
      qrels: ``{query_id: {doc_id: grade}}`` of the split (empty when no split was loaded).
      path: the folder it was read from.
    """

    corpus: dict[str, tuple[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    path: str = ""

    def passage(self, doc_id: str) -> str:
        """The model-facing text of one document (see :func:`passage_text`)."""
        return passage_text(*self.corpus[doc_id])

    def passages(self) -> tuple[list[str], list[str]]:
        """(doc ids, passage texts), both in corpus file order."""
        ids = list(self.corpus)
        return ids, [passage_text(*self.corpus[i]) for i in ids]


def _find(folder: str, names: tuple[str, ...]) -> str:
    for name in names:
        path = os.path.join(folder, name)
        if os.path.exists(path):
            return path
    raise DataError(f"{folder}: none of {', '.join(names)} found; is this a BEIR folder?")


def load_collection(folder: str, split: str | None = "train", on_empty: str = "raise") -> Collection:
    """Reads and validates a BEIR folder.

    Args:
      folder: holds corpus.jsonl[.gz], queries.jsonl[.gz] and qrels/<split>.tsv.
      split: the qrels split; its judged queries are kept (as BEIR's GenericDataLoader does). None: all
        queries and no qrels.
      on_empty: documents with no text: "raise", "skip" or "keep" (see :func:`read_corpus`). "skip" also drops
        the split's judgements of the skipped documents (Cranfield judges its empty doc 995 for query 125), logged.

    Raises:
      DataError: the folder is missing or not a BEIR folder, or any file in it is malformed (file and line named).
    """
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: no such collection directory; pass a BEIR folder (corpus.jsonl, queries.jsonl, "
                        "qrels/<split>.tsv)")
    skipped: list[str] = []
    corpus = read_corpus(_find(folder, ("corpus.jsonl", "corpus.jsonl.gz")), on_empty, skipped=skipped)
    queries = read_queries(_find(folder, ("queries.jsonl", "queries.jsonl.gz")))
    if split is None:
        return Collection(corpus, queries, {}, folder)
    qrels_path = os.path.join(folder, "qrels", f"{split}.tsv")
    if not os.path.exists(qrels_path):
        have = sorted(p[:-4] for p in os.listdir(os.path.join(folder, "qrels"))) if os.path.isdir(
            os.path.join(folder, "qrels")) else []
        raise DataError(f"{qrels_path} not found; splits here: {have or 'none'}")
    qrels = read_qrels(qrels_path, corpus, queries, ignore_docs=skipped)
    return Collection(corpus, {q: t for q, t in queries.items() if q in qrels}, qrels, folder)


class TextTable:
    """A compact, read-only ``id -> text`` table for millions of passages.

    Texts live in one UTF-8 byte buffer with int64 offsets; ids in one sorted fixed-width byte array searched with
    ``np.searchsorted``. For MS MARCO (8.8M passages, ~3.0 GB of text) that is the text bytes plus ~0.2 GB, instead
    of ~5 GB for a dict of Python strings, and numpy buffers are shared, not copied, by loader threads.
    """

    def __init__(self, ids: list[str], texts: list[str], name: str = "corpus"):
        if len(ids) != len(texts):
            raise ValueError(f"{name}: {len(ids)} ids but {len(texts)} texts")
        self.name = name
        raw_ids = np.array([i.encode("utf-8") for i in ids], dtype=np.bytes_) if ids else np.zeros(0, "S1")
        order = np.argsort(raw_ids, kind="stable")
        self._ids = raw_ids[order]
        if len(self._ids) > 1:
            dup = np.nonzero(self._ids[1:] == self._ids[:-1])[0]
            if len(dup):
                raise DataError(f"{name}: duplicate id {self._ids[dup[0]].decode()!r}; ids must be unique")
        encoded = [t.encode("utf-8") for t in texts]
        lengths = np.fromiter((len(b) for b in encoded), np.int64, len(encoded))
        offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        self._buffer = b"".join(encoded)
        self._offsets = offsets
        self._rows = order.astype(np.int64)  # sorted position -> original row

    @classmethod
    def from_mapping(cls, mapping: dict[str, str], name: str = "corpus") -> TextTable:
        return cls(list(mapping), list(mapping.values()), name)

    @classmethod
    def from_collection(cls, collection: Collection) -> TextTable:
        """The collection's passages (title + text) keyed by document id."""
        ids, texts = collection.passages()
        return cls(ids, texts, f"{collection.path or 'corpus'}")

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def nbytes(self) -> int:
        return len(self._buffer) + self._offsets.nbytes + self._ids.nbytes + self._rows.nbytes

    def rows(self, ids) -> np.ndarray:
        """Row numbers of ``ids``; -1 for ids that are not in the table.

        Args:
          ids: sequence of str or bytes ids [K].
        Returns:
          int64 [K].
        """
        keys = np.array([i.encode("utf-8") if isinstance(i, str) else bytes(i) for i in ids], dtype=np.bytes_)
        if len(keys) == 0 or len(self._ids) == 0:
            return np.full(len(keys), -1, np.int64)
        pos = np.minimum(np.searchsorted(self._ids, keys), len(self._ids) - 1)
        found = self._ids[pos] == keys
        return np.where(found, self._rows[pos], -1)

    def __contains__(self, key) -> bool:
        return bool(self.rows([key])[0] >= 0)

    def text(self, row: int) -> str:
        return self._buffer[self._offsets[row]:self._offsets[row + 1]].decode("utf-8")

    def texts(self, ids) -> list[str]:
        """Texts of ``ids`` [K]; raises KeyError naming the first unknown id."""
        rows = self.rows(ids)
        missing = np.nonzero(rows < 0)[0]
        if len(missing):
            raise KeyError(f"{self.name}: id {ids[missing[0]]!r} not found")
        return [self.text(r) for r in rows]
