"""Teacher-score datasets: TFDS ArrayRecord shards with one example per query, and importers of public formats.

An example (a *record*) is one query with its candidate list and one score column per teacher:

=========  ======================  =====================================================================
field      TFDS feature            meaning
=========  ======================  =====================================================================
qid        Text                    query id (the text comes from the collection at load time)
pids       Sequence(Text) [M]      candidate passage ids, distinct
labels     Tensor int32 [M]        relevance grade from the qrels / source file (> 0: positive)
scores     Tensor float32 [M, T]   teacher scores, one column per teacher (several = an ensemble)
=========  ======================  =====================================================================

The teacher names are dataset metadata (``metadata.json``: ``teacher_names``, ``schema_version``). No TensorFlow is
needed to write or read: TFDS serialises with its own protobufs and reads with ``as_data_source`` (ArrayRecord,
random access), which is what :mod:`distill_jax.data.pipeline` streams with grain.

Two writers produce the same TFDS layout (``tfds.builder_from_directory(dir).as_data_source("train")`` reads both):

* :class:`TeacherScores`, a ``GeneratorBasedBuilder`` (``file_format="array_record"``) used by the importers and
  ``distill-jax import-scores``: TFDS does the sharding and writes ``dataset_info.json``.
* :func:`write_teacher_scores`: one shard at a time, atomically (temporary file + rename) with a ``.done.json``
  sidecar, so a resumable teacher scorer (``distill-jax score``) writes shard by shard and skips finished shards
  (:func:`shard_done`); the writer of the last missing shard also writes ``dataset_info.json``
  (:func:`finalize_teacher_scores`).

Bad records (NaN/inf scores, a candidate id missing from the corpus, a duplicate candidate id, a query without a
positive, a wrong score shape) are handled by a :class:`BadInputPolicy`: ``"raise"`` stops at the first with the
source, record and field named; ``"skip"`` drops the record, counts it by type, logs the counts, and still raises
when more than ``max_skip_fraction`` of the records were bad.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from distill_jax.data.collections import DataError, open_text

log = logging.getLogger(__name__)

DATASET_NAME = "teacher_scores"
SCHEMA_VERSION = 1
VERSION = "1.0.0"
_DONE = ".done.json"


# ----------------------------------------------------------------------------------------------- bad input

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
    """

    FAULTS = ("empty_qid", "no_candidates", "shape", "nonfinite_score", "duplicate_pid", "missing_pid",
              "no_positive", "missing_score", "missing_query")

    def __init__(self, source: str, policy: BadInputPolicy = BadInputPolicy(), num_teachers: int | None = None,
                 corpus=None):
        self.source, self.policy, self.num_teachers, self.corpus = source, policy, num_teachers, corpus
        self.counts = dict.fromkeys(self.FAULTS, 0)
        self.seen = 0
        self.bad_indices: list[int] = []

    def fault(self, index: int, qid, kind: str, detail: str) -> None:
        """Records a fault found outside :meth:`check` (e.g. a missing score in an importer)."""
        if self.policy.policy == "raise":
            raise DataError(f"{self.source}: record {index} (qid {qid!r}): {kind}: {detail}. Fix the input, or "
                            f"pass policy='skip' to drop such records (counted, up to max_skip_fraction)")
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
                                "fix it (or raise the threshold knowingly)")
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


# ----------------------------------------------------------------------------------------------- TFDS layout

def features():
    """The TFDS features of one record (see the module docstring)."""
    import tensorflow_datasets as tfds

    return tfds.features.FeaturesDict({
        "qid": tfds.features.Text(),
        "pids": tfds.features.Sequence(tfds.features.Text()),
        "labels": tfds.features.Tensor(shape=(None,), dtype=np.int32),
        # two unknown dims need an explicit encoding; "bytes" is raw float32, no compression cost on read
        "scores": tfds.features.Tensor(shape=(None, None), dtype=np.float32, encoding="bytes"),
    })


def _metadata(teacher_names: Sequence[str]):
    import tensorflow_datasets as tfds

    return tfds.core.MetadataDict(teacher_names=list(teacher_names), schema_version=SCHEMA_VERSION)


def _import_tfds():
    import tensorflow_datasets as tfds

    return tfds


class _Builder:
    """Lazily defines the TFDS builder class (tensorflow-datasets is imported only when data is built)."""

    cls = None

    @classmethod
    def get(cls):
        if cls.cls is None:
            cls.cls = _define_builder(_import_tfds())
        return cls.cls


def _define_builder(tfds):
    class TeacherScores(tfds.core.GeneratorBasedBuilder):
        """One example per query: candidate ids, labels and teacher score columns (ArrayRecord shards)."""

        VERSION = tfds.core.Version(VERSION)
        RELEASE_NOTES = {str(VERSION): "query id, candidate ids, int32 labels, float32 scores [M, T]"}

        # TFDS looks for a checksums file beside the builder's code (resolving a package path needs the
        # importlib_resources backport); this builder downloads nothing, so there is no code path to search.
        @tfds.core.utils.classproperty
        @classmethod
        def code_path(cls):
            return None

        def __init__(self, *, records: Callable[[], Iterable[dict]] | None = None,
                     teacher_names: Sequence[str] = (), checker: RecordChecker | None = None, **kwargs):
            self._records, self._teacher_names, self._checker = records, list(teacher_names), checker
            kwargs.setdefault("file_format", "array_record")
            super().__init__(**kwargs)

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=features(), disable_shuffling=True,
                                         metadata=_metadata(self._teacher_names),
                                         description="distill-jax teacher scores (one example per query)")

        def _split_generators(self, dl_manager):
            if self._records is None:
                raise ValueError("TeacherScores: give records= (a callable returning the records) to build")
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            records = self._records()
            if self._checker is not None:
                records = validated(records, self._checker)
            for i, rec in enumerate(records):
                yield i, rec

    return TeacherScores


def __getattr__(name):  # ``from distill_jax.data.teacher_scores import TeacherScores`` defines the class lazily
    if name == "TeacherScores":
        return _Builder.get()
    raise AttributeError(name)


def build_teacher_scores(records: Callable[[], Iterable[dict]], data_dir: str, teacher_names: Sequence[str],
                         checker: RecordChecker | None = None) -> str:
    """Writes a dataset with the :class:`TeacherScores` builder; returns its directory.

    Args:
      records: a callable returning an iterable of records (:func:`make_record` dicts), called once.
      data_dir: TFDS data directory; the dataset lands in ``data_dir/teacher_scores/1.0.0``.
      teacher_names: one name per score column.
      checker: validates records under its policy (None: no validation).
    """
    builder = _Builder.get()(data_dir=data_dir, records=records, teacher_names=teacher_names, checker=checker)
    builder.download_and_prepare()
    return str(builder.data_dir)


def shard_path(out_dir: str, shard_index: int, num_shards: int, split: str = "train") -> str:
    """TFDS's file name for shard ``shard_index`` of ``num_shards``."""
    return os.path.join(out_dir, f"{DATASET_NAME}-{split}.array_record-{shard_index:05d}-of-{num_shards:05d}")


def shard_done(out_dir: str, shard_index: int, num_shards: int, split: str = "train") -> bool:
    """True when the shard and its completion record were both written (a resumable scorer skips it)."""
    path = shard_path(out_dir, shard_index, num_shards, split)
    return os.path.exists(path) and os.path.exists(path + _DONE)


def write_teacher_scores(records: Iterable[dict], out_dir: str, shard_index: int, num_shards: int,
                         teacher_names: Sequence[str], *, split: str = "train",
                         checker: RecordChecker | None = None, validate: bool = True) -> dict:
    """Writes ONE shard atomically; finalises the dataset when it was the last missing shard.

    Args:
      records: the shard's records (:func:`make_record` dicts), in order.
      out_dir: the dataset directory (all shards and ``dataset_info.json`` live directly in it).
      shard_index, num_shards: this shard's position; the file name carries both (TFDS naming).
      teacher_names: one per score column; must agree across shards.
      checker: validates records (None: a default :class:`RecordChecker` with the "raise" policy).
      validate: False writes records unchecked (only to reproduce a foreign writer's bad data in tests; the
        loader checks every record again anyway).

    Returns:
      the shard summary written next to it: ``{"num_records", "num_bytes", "sha256", "teacher_names",
      "skipped"}``.
    """
    from array_record.python.array_record_module import ArrayRecordWriter

    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index {shard_index} not in [0, {num_shards})")
    os.makedirs(out_dir, exist_ok=True)
    checker = checker or RecordChecker(out_dir, num_teachers=len(teacher_names))
    checker.num_teachers = checker.num_teachers or len(teacher_names)
    if checker.num_teachers != len(teacher_names):
        raise ValueError(f"{len(teacher_names)} teacher names but records have {checker.num_teachers} columns")
    feats = features()
    path = shard_path(out_dir, shard_index, num_shards, split)
    tmp = f"{path}.tmp-{os.getpid()}"
    count = 0
    # group_size:1 makes every record its own chunk: O(1) random access, as TFDS writes it
    writer = ArrayRecordWriter(tmp, "group_size:1")
    try:
        for rec in validated(records, checker) if validate else records:
            writer.write(feats.serialize_example(rec))
            count += 1
    except BaseException:
        writer.close()
        os.remove(tmp)
        raise
    writer.close()
    summary = {"num_records": count, "num_bytes": os.path.getsize(tmp), "sha256": _sha256(tmp),
               "teacher_names": list(teacher_names), "skipped": checker.finish()}
    os.replace(tmp, path)
    _atomic_json(path + _DONE, summary)
    if all(shard_done(out_dir, i, num_shards, split) for i in range(num_shards)):
        finalize_teacher_scores(out_dir, num_shards, teacher_names, split)
    return summary


def finalize_teacher_scores(out_dir: str, num_shards: int, teacher_names: Sequence[str],
                            split: str = "train") -> None:
    """Writes TFDS's ``dataset_info.json``/``features.json``/``metadata.json`` for shards written one by one."""
    tfds = _import_tfds()
    summaries = []
    for i in range(num_shards):
        with open(shard_path(out_dir, i, num_shards, split) + _DONE) as f:
            summaries.append(json.load(f))
        if summaries[-1]["teacher_names"] != list(teacher_names):
            raise DataError(f"{out_dir}: shard {i} was written with teachers {summaries[-1]['teacher_names']}, "
                            f"not {list(teacher_names)}; rewrite it")
    identity = tfds.core.DatasetIdentity(name=DATASET_NAME, version=tfds.core.Version(VERSION), data_dir=out_dir,
                                         module_name=__name__)
    info = tfds.core.DatasetInfo(builder=identity, features=features(), disable_shuffling=True,
                                 metadata=_metadata(teacher_names))
    template = tfds.core.ShardedFileTemplate(data_dir=out_dir, dataset_name=DATASET_NAME, split=split,
                                             filetype_suffix="array_record")
    info.set_file_format("array_record")
    info.set_splits(tfds.core.SplitDict([tfds.core.SplitInfo(
        name=split, shard_lengths=[s["num_records"] for s in summaries],
        num_bytes=sum(s["num_bytes"] for s in summaries), filename_template=template)]))
    info.write_to_directory(out_dir)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _shard_sha256(path: str) -> str:
    """The shard's content hash: from its completion record when that matches the file size, else computed
    (about 1 s a GB; a MS MARCO dataset of 500k x 64 candidates is about 0.5 GB)."""
    done = path + _DONE
    if os.path.exists(done):
        with open(done) as f:
            summary = json.load(f)
        if summary.get("num_bytes") == os.path.getsize(path) and "sha256" in summary:
            return summary["sha256"]
    return _sha256(path)


def _atomic_json(path: str, obj) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------- reading

@dataclasses.dataclass(frozen=True)
class TeacherScoreDataset:
    """An opened teacher-score dataset.

    Attributes:
      source: random-access TFDS data source (``len``, ``[i]`` -> record dict with bytes ids).
      teacher_names: the score columns' names.
      fingerprint: sha256 over the schema, teacher names, shard names, shard content hashes and record counts
        (stable when the directory is copied): the loader refuses to resume onto different data.
      path: the dataset directory.
    """

    source: object
    teacher_names: tuple[str, ...]
    fingerprint: str
    path: str

    def __len__(self) -> int:
        return len(self.source)

    def record(self, index: int) -> dict:
        """Record ``index`` with str ids: ``{"qid", "pids", "labels" [M], "scores" [M, T]}``."""
        return decode(self.source[index])


def decode(raw: dict) -> dict:
    dec = lambda x: x.decode("utf-8") if isinstance(x, bytes) else str(x)  # noqa: E731
    return {"qid": dec(raw["qid"]), "pids": [dec(p) for p in raw["pids"]],
            "labels": np.asarray(raw["labels"], np.int32), "scores": np.asarray(raw["scores"], np.float32)}


def find_dataset_dir(path: str) -> str:
    """The directory holding ``dataset_info.json``: ``path`` itself or ``path/teacher_scores/<version>``."""
    for cand in [path, *sorted(glob.glob(os.path.join(path, DATASET_NAME, "*")), reverse=True)]:
        if os.path.exists(os.path.join(cand, "dataset_info.json")):
            return cand
    raise DataError(f"{path}: no dataset_info.json here nor in {DATASET_NAME}/<version>/; write the dataset "
                    "with `distill-jax import-scores` or `distill-jax score` first (an unfinished shard-by-shard "
                    "write has no dataset_info.json until its last shard is written)")


def load_teacher_scores(path: str, split: str = "train") -> TeacherScoreDataset:
    """Opens a dataset written by either writer (no TensorFlow involved)."""
    tfds = _import_tfds()
    directory = find_dataset_dir(path)
    builder = tfds.builder_from_directory(directory)
    meta = dict(builder.info.metadata or {})
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise DataError(f"{directory}: schema_version {meta.get('schema_version')!r}, this code reads "
                        f"{SCHEMA_VERSION}; rewrite the dataset with this version")
    info = builder.info.splits[split]
    files = [os.path.basename(f) for f in info.filenames]
    ident = {"schema": SCHEMA_VERSION, "teachers": list(meta["teacher_names"]), "files": files,
             "sha256": [_shard_sha256(os.path.join(directory, f)) for f in files],
             "lengths": [int(x) for x in info.shard_lengths]}
    fingerprint = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
    return TeacherScoreDataset(builder.as_data_source(split), tuple(meta["teacher_names"]), fingerprint,
                               directory)


# ----------------------------------------------------------------------------------------------- importers

def read_hofstaetter_tsv(path: str, checker: RecordChecker | None = None) -> Iterator[dict]:
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
                    yield _hof_record(group)
                if qid in seen_q:
                    raise DataError(f"{path}:{lineno}: query {qid!r} appears again after other queries; the lines "
                                    f"of a query must be contiguous: sort -t$'\\t' -s -k3,3 {path}")
                seen_q.add(qid)
                group = {"qid": qid, "pos": {}, "neg": {}}
            group["pos"].setdefault(pos, []).append(s_pos)
            group["neg"].setdefault(neg, []).append(s_neg)
    if group is not None:
        yield _hof_record(group)


def _hof_record(group: dict) -> dict:
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
    for index, (lineno, obj) in enumerate(_iter_jsonl_lines(path)):
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


def _iter_jsonl_lines(path: str) -> Iterator[tuple[int, dict]]:
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({e})") from None
