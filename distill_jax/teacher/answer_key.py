"""The answer key (``distill-jax score``): a teacher's scores for every (query, candidate) pair.

``score`` runs one or more cross-encoders over every (query, candidate) pair of a candidate file (from
``distill-jax mine``) and writes the teacher-score dataset (:mod:`distill_jax.data.scores`) shard by shard.
Queries are split into ``num_shards`` work units in candidate-file order; host ``h`` of ``P`` takes shards
``h, h+P, ...`` and scores them on its local devices (:class:`distill_jax.teacher.scorer.PairScorer`). A shard
is written atomically (temporary file + rename + completion record), so a run killed at any moment (SIGKILL
included) continues from the first unfinished shard when the same command is run again, and the result equals an
uninterrupted run: every pair exactly once.

A rerun continues only with the same inputs: the first run writes ``score_manifest.json`` (the candidate file's
size and sha256, ``--max-candidates``, each teacher's fingerprint (its config and weight files' hashes), the
collection's files, the split, ``--num-shards`` and every setting that changes a score), and a later run whose
manifest differs stops before scoring with a one-line error naming the changed input and the fix (another
``--out``, or delete the directory to start over). The directory's own files are the only ones it writes.

Bad candidate lists (a query or passage id missing from the collection, a passage listed twice, no graded
positive) are checked before any scoring, naming the candidate file's line: ``bad_records="raise"`` stops at the
first, ``"skip"`` drops the query (counted; more than ``max_skip_fraction`` still stops). ``empty_docs`` reads
collections with empty documents (Cranfield: ``"skip"`` leaves them and their judgements out).

Several processes (``jax.distributed``, the environment of ``distill-jax train``) each score their own shards;
after a barrier, process 0 alone writes the dataset metadata, so the result equals a single-process run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence

import numpy as np

from distill_jax.teacher.side import SideFeatures, is_side_teacher, side_directory, side_fingerprint

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ScoreConfig:
    """Settings of ``distill-jax score``.

    Attributes:
      teachers: cross-encoder checkpoint directories (or hub ids); several = an ensemble, one column each.
        ``"bm25"`` is the lexical teacher: each pair's BM25 score over the collection (the settings ``mine``
        uses by default), a column to ensemble with a cross-encoder's (``data.teacher_combine="zmean"``).
        ``"side:DIR"`` is side information: each pair's dot product of precomputed query and passage vectors
        (:mod:`distill_jax.teacher.side`; e.g. passage image embeddings), a column no text-only student sees.
      collection: BEIR folder with the corpus and queries.
      candidates: candidate JSONL (``{"qid","pos","neg"}``) from ``distill-jax mine``.
      out_dir: the teacher-score dataset directory.
      split: qrels split that grades the positives (labels column).
      num_shards: work units = output shards (more shards: finer resumption).
      max_length: tokens per pair (query + passage, ``longest_first`` truncation).
      buckets: padded lengths (ascending, the last = max_length); pairs go to the smallest that fits.
      batch_size: pairs per step across every device of the job (see :class:`distill_jax.teacher.scorer.PairScorer`).
      dtype: compute dtype ("float32" or "bfloat16").
      max_candidates: keep at most this many negatives per query (0 = all).
      bad_records: a bad candidate list or scored record: "raise" (stop, naming it) or "skip" (drop, count).
      max_skip_fraction: with "skip", still stop when more than this fraction of the queries is bad.
      empty_docs: collection documents with no text: "raise", "skip" or "keep" (see ``load_collection``).
      allow_pickle: read a teacher directory holding only ``pytorch_model.bin`` (a pickle; trusted sources only).
    """

    teachers: tuple[str, ...]
    collection: str
    candidates: str
    out_dir: str
    split: str = "train"
    num_shards: int = 16
    max_length: int = 256
    buckets: tuple[int, ...] = (64, 128, 192, 256)
    batch_size: int = 128
    dtype: str = "float32"
    max_candidates: int = 0
    bad_records: str = "raise"
    max_skip_fraction: float = 0.001
    empty_docs: str = "raise"
    allow_pickle: bool = False

    def __post_init__(self):
        if not self.teachers:
            raise ValueError("score: give at least one teacher checkpoint (--teacher DIR)")
        if self.bad_records not in ("raise", "skip"):
            raise ValueError(f"score: bad_records={self.bad_records!r}: use 'raise' or 'skip'")
        if self.empty_docs not in ("raise", "skip", "keep"):
            raise ValueError(f"score: empty_docs={self.empty_docs!r}: use 'raise', 'skip' or 'keep'")
        if tuple(sorted(self.buckets)) != tuple(self.buckets) or self.buckets[-1] != self.max_length:
            raise ValueError(f"buckets {self.buckets} must ascend and end at max_length {self.max_length}")


BM25_TEACHER = "bm25"


def teacher_name(path: str) -> str:
    """A column name for a teacher: the checkpoint directory's base name (``"bm25"`` for the lexical one,
    ``"side-<base name>"`` for side features)."""
    if is_side_teacher(path):
        return "side-" + teacher_name(side_directory(path))
    return os.path.basename(os.path.normpath(path)) or path


def lexical_fingerprint() -> str:
    """sha256 of the lexical teacher's settings (its collection is in the manifest already)."""
    from distill_jax.data.negatives import BM25Config

    settings = {"teacher": BM25_TEACHER, **dataclasses.asdict(BM25Config())}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def shards_of_host(num_shards: int, process_index: int, process_count: int) -> list[int]:
    """Shards this host scores: ``process_index, process_index + process_count, ...``."""
    return list(range(process_index, num_shards, process_count))


def split_candidates(candidates: Sequence[dict], num_shards: int) -> list[Sequence[dict]]:
    """Contiguous, near-equal slices of the candidate lists, one per shard (deterministic)."""
    bounds = np.linspace(0, len(candidates), num_shards + 1).round().astype(int)
    return [candidates[bounds[i]:bounds[i + 1]] for i in range(num_shards)]


MANIFEST = "score_manifest.json"
SKIP_HINT = "`distill-jax score --bad-records skip`"


def teacher_fingerprint(path: str) -> str:
    """sha256 over a teacher checkpoint's config/tokenizer files and the weight files its loader reads
    (``*.safetensors``, else ``pytorch_model.bin``, per folder): names, sizes and content hashes. The same bytes
    anywhere give the same fingerprint; retrained or re-exported weights another."""
    from distill_jax.data.scores.schema import file_identity
    from distill_jax.models.hf import resolve_checkpoint_dir

    if path == BM25_TEACHER:
        return lexical_fingerprint()
    if is_side_teacher(path):
        return side_fingerprint(side_directory(path))
    directory = resolve_checkpoint_dir(path)
    files = {}
    for root, _, names in os.walk(directory):
        weights = [n for n in names if n.endswith(".safetensors")] or [n for n in names if n == "pytorch_model.bin"]
        for name in sorted(names):
            if name.endswith(".json") or name == "vocab.txt" or name in weights:
                full = os.path.join(root, name)
                files[os.path.relpath(full, directory)] = file_identity(full)
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def score_manifest(cfg: ScoreConfig) -> dict:
    """What a scored dataset is a function of (see the module docstring). Paths are left out: a moved or copied
    input with the same content still continues. The bad-record policy is left out too: every candidate list is
    checked before the first shard, so a run stopped by ``raise`` can continue with ``--bad-records skip``."""
    from distill_jax.data.scores.schema import file_identity

    col = cfg.collection

    def first(*names):
        return next((os.path.join(col, n) for n in names if os.path.exists(os.path.join(col, n))), None)

    collection = {"corpus": file_identity(first("corpus.jsonl", "corpus.jsonl.gz")),
                  "queries": file_identity(first("queries.jsonl", "queries.jsonl.gz")),
                  "qrels": file_identity(first(os.path.join("qrels", f"{cfg.split}.tsv")))}
    return {"writer": "distill-jax score", "candidates": file_identity(cfg.candidates),
            "max_candidates": cfg.max_candidates, "num_shards": cfg.num_shards, "split": cfg.split,
            "collection": collection, "empty_docs": cfg.empty_docs,
            "teachers": [{"name": teacher_name(t), "fingerprint": teacher_fingerprint(t)} for t in cfg.teachers],
            "max_length": cfg.max_length, "dtype": cfg.dtype}


def check_output_dir(cfg: ScoreConfig, manifest: dict) -> None:
    """Continues only onto this run's inputs (see :func:`record_manifest` for when the manifest is written).

    Raises:
      DataError: ``out_dir`` is a file, was scored from other inputs (the first changed one is named), or holds
        teacher-score files without a manifest; the message says how to start over.
    """
    from distill_jax.data.collections import DataError
    from distill_jax.data.scores.schema import own_files
    from distill_jax.data.scores.writer import manifest_difference

    out = cfg.out_dir
    if os.path.exists(out) and not os.path.isdir(out):
        raise DataError(f"--out {out} is a file; pass a directory for the teacher-score dataset")
    path = os.path.join(out, MANIFEST)
    if os.path.isfile(path):
        try:
            with open(path) as f:
                old = json.load(f)
        except json.JSONDecodeError:
            old = {}
        if old != manifest:
            raise DataError(f"{out} was scored from other inputs ({manifest_difference(old, manifest)}); "
                            f"to score these, pass a new --out, or delete {out} to start over")
        return
    existing = own_files(out)
    if existing:
        raise DataError(f"{out} holds teacher-score files ({existing[0]}, ...) but no {MANIFEST}: they "
                        f"were not written by this command from these inputs; pass a new --out, or delete {out} "
                        "to start over")


def record_manifest(cfg: ScoreConfig, manifest: dict) -> None:
    """Writes the manifest of a fresh directory, by every process just before its first shard (atomically, the
    same content from each): a shard on disk always has its manifest beside it, and a run that stopped at the
    checks (a bad candidate line, say) left nothing, so the fixed input can go to the same ``--out``."""
    from distill_jax.data.scores.writer import atomic_json

    path = os.path.join(cfg.out_dir, MANIFEST)
    if not os.path.isfile(path):
        os.makedirs(cfg.out_dir, exist_ok=True)
        atomic_json(path, manifest)


def run_score(cfg: ScoreConfig, process_index: int | None = None, process_count: int | None = None) -> dict:
    """Scores every shard of this host that is not finished yet; returns run statistics.

    Returns:
      ``{"shards_scored", "shards_skipped", "pairs", "pairs_per_s", "padding_fraction", "records_skipped"}``.

    Raises:
      DataError: changed inputs onto an existing ``out_dir`` (see :func:`check_output_dir`), a bad candidate
        list under the "raise" policy (the candidate file's line named), or a collection that cannot be read.
    """
    import jax
    from tqdm import tqdm

    from distill_jax.data.scores import (BadInputPolicy, RecordChecker, make_record, shard_done,
                                         write_teacher_scores)
    from distill_jax.teacher.scorer import load_teacher, score_pairs

    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    names = [teacher_name(t) for t in cfg.teachers]
    if len(set(names)) != len(names):
        raise ValueError(f"teacher names must differ (from directory names): {names}")
    manifest = score_manifest(cfg)
    check_output_dir(cfg, manifest)
    mine = shards_of_host(cfg.num_shards, pi, pc)
    todo = [s for s in mine if not shard_done(cfg.out_dir, s, cfg.num_shards)]
    stats = {"shards_scored": 0, "shards_skipped": len(mine) - len(todo), "pairs": 0, "pairs_per_s": 0.0,
             "padding_fraction": 0.0, "records_skipped": {}}
    if stats["shards_skipped"]:
        log.info("score: %d shard(s) already written, resuming", stats["shards_skipped"])
    policy = BadInputPolicy(cfg.bad_records, cfg.max_skip_fraction)
    if todo:
        collection, lists, stats["records_skipped"] = checked_candidate_lists(cfg, policy)
        teachers = [lexical_teacher(collection) if t == BM25_TEACHER else
                    (SideFeatures(side_directory(t)), "side") if is_side_teacher(t) else
                    load_teacher(t, cfg.dtype, cfg.batch_size, cfg.buckets, cfg.allow_pickle) for t in cfg.teachers]
        record_manifest(cfg, manifest)
        total = sum(len(p) for s in todo for _, p, _ in lists[s]) * len(teachers)
        start = time.perf_counter()
        with tqdm(total=total, unit="pair", desc="score", smoothing=0.1) as bar:
            for s in todo:
                qids = [q for q, _, _ in lists[s]]
                q_ids = [q for q, pids, _ in lists[s] for _ in pids]
                q_texts = [collection.queries[q] for q in q_ids]
                p_ids = [p for _, pids, _ in lists[s] for p in pids]
                p_texts = [collection.passage(p) for p in p_ids]
                cols = np.stack([lexical_scores(sc, q_texts, p_ids, bar.update) if tok is None else
                                 side_scores(sc, q_ids, p_ids, bar.update) if tok == "side" else
                                 score_pairs(sc, tok, q_texts, p_texts, cfg.max_length, bar.update)
                                 for sc, tok in teachers], axis=-1)  # [pairs, T]
                offsets = np.cumsum([0] + [len(p) for _, p, _ in lists[s]])
                records = [make_record(q, pids, labels, cols[offsets[i]:offsets[i + 1]])
                           for i, (q, pids, labels) in enumerate(lists[s])]
                checker = RecordChecker(cfg.out_dir, policy, len(names), hint=SKIP_HINT)
                write_teacher_scores(records, cfg.out_dir, s, cfg.num_shards, names, checker=checker,
                                     finalize=False)  # finalize_after_barrier writes the metadata, once
                stats["shards_scored"] += 1
                stats["pairs"] += len(q_texts) * len(teachers)
                log.info("score: shard %d/%d written (%d queries)", s + 1, cfg.num_shards, len(qids))
        elapsed = time.perf_counter() - start
        stats["pairs_per_s"] = stats["pairs"] / max(elapsed, 1e-9)
        real = sum(sc.stats.real_tokens for sc, tok in teachers if tok not in (None, "side"))
        padded = sum(sc.stats.padded_tokens for sc, tok in teachers if tok not in (None, "side"))
        stats["padding_fraction"] = padded / max(real + padded, 1)
    finalize_after_barrier(cfg, names, pi, pc)
    return stats


def lexical_teacher(collection) -> tuple[object, None]:
    """(a BM25 index of ``collection``'s passages, None): the lexical teacher in the place of (scorer,
    tokenizer)."""
    from distill_jax.data.negatives import BM25Index

    doc_ids, texts = collection.passages()
    return BM25Index(doc_ids, texts), None


def lexical_scores(index, queries: Sequence[str], doc_ids: Sequence[str], progress=None) -> np.ndarray:
    """[P] BM25 scores of (query text, passage id) pairs."""
    out = index.pair_scores(queries, doc_ids)
    if progress is not None:
        progress(len(doc_ids))
    return out


def side_scores(features: SideFeatures, query_ids: Sequence[str], passage_ids: Sequence[str],
                progress=None) -> np.ndarray:
    """[P] side-feature scores of (query id, passage id) pairs (:meth:`SideFeatures.pair_scores`).

    Raises:
      DataError: a query or passage without a side vector (naming it and the file).
    """
    from distill_jax.data.collections import DataError

    try:
        out = features.pair_scores(query_ids, passage_ids)
    except KeyError as e:
        raise DataError(e.args[0]) from None
    if progress is not None:
        progress(len(passage_ids))
    return out


def finalize_after_barrier(cfg: ScoreConfig, names: Sequence[str], process_index: int, process_count: int) -> None:
    """Writes the dataset metadata once every shard is done (a rerun after a kill between the last shard and the
    metadata writes it then).

    Under ``jax.distributed`` every process first waits at a barrier until all have written their shards, then
    process 0 alone writes it: no two processes ever write ``dataset_info.json``. Hosts run as independent jobs
    (``process_index``/``process_count`` given, no ``jax.distributed``) have no barrier: whichever sees every
    shard done writes it, and the metadata files are renamed into place whole and identical, so two finishing
    together cannot leave a torn or mixed file.
    """
    import jax

    from distill_jax.data.scores import finalize_teacher_scores, shard_done

    if process_count > 1 and jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("distill-jax score: every shard written")
        if process_index != 0:
            return
    if all(shard_done(cfg.out_dir, s, cfg.num_shards) for s in range(cfg.num_shards)):
        finalize_teacher_scores(cfg.out_dir, cfg.num_shards, names)


def checked_candidate_lists(cfg: ScoreConfig, policy) -> tuple[object, dict[int, list], dict[str, int]]:
    """(the collection, ``{shard: [(qid, pids, labels)]}`` after the bad-record checks, the skip counts). Every
    shard is checked, not only this process's unfinished ones, so every process and every resumption takes the
    same decisions."""
    from distill_jax.data.candidates import read_candidates
    from distill_jax.data.collections import load_collection
    from distill_jax.data.scores import RecordChecker

    collection = load_collection(cfg.collection, cfg.split, on_empty=cfg.empty_docs)
    shards = split_candidates(read_candidates(cfg.candidates, duplicates="keep", line_numbers=True), cfg.num_shards)
    checker = RecordChecker(cfg.candidates, policy, unit="line", hint=SKIP_HINT)
    lists = {s: candidate_lists(shards[s], collection, cfg.max_candidates, checker)
                   for s in range(cfg.num_shards)}
    return collection, lists, checker.finish()


def candidate_lists(cands: Sequence[dict], collection, max_candidates: int,
                    checker=None) -> list[tuple[str, list, list]]:
    """(qid, pids = positives then negatives, labels = qrels grades) for each query of a shard.

    Every list is checked before any scoring: its query must be a query of the split, every passage id in the
    corpus and listed once, and one candidate graded > 0 (a ``"line"`` key, from ``read_candidates(...,
    line_numbers=True)``, names the line). A bad list goes to ``checker`` (a ``RecordChecker``: raise or skip);
    without one, the first raises a :class:`DataError`.
    """
    from distill_jax.data.candidates import duplicate_id
    from distill_jax.data.scores import RecordChecker

    checker = checker or RecordChecker("candidates", unit="candidate list", hint=SKIP_HINT)
    out = []
    for i, c in enumerate(cands):
        where, qid = c.get("line", i), c["qid"]
        checker.seen += 1
        if qid not in collection.queries:
            checker.fault(where, qid, "missing_query", f"query id {qid!r} is not a query of {collection.path} with "
                          "judgements in this split; mine candidates for the same collection and split")
            continue
        dup = duplicate_id(c)
        if dup is not None:
            checker.fault(where, qid, "duplicate_pid", f"passage {dup!r} is listed more than once")
            continue
        neg = c["neg"][:max_candidates] if max_candidates else c["neg"]
        pos = set(c["pos"])
        pids = list(c["pos"]) + [n for n in neg if n not in pos]
        missing = [p for p in pids if p not in collection.corpus]
        if missing:
            checker.fault(where, qid, "missing_pid", f"passage {missing[0]!r} is not in {collection.path}'s corpus "
                          f"({len(missing)} missing in this list; were the candidates mined from another corpus, "
                          "or with other --empty-docs?)")
            continue
        grades = collection.qrels.get(qid, {})
        labels = [grades.get(p, 0) for p in pids]
        if checker.policy.require_positive and not any(g > 0 for g in labels):
            checker.fault(where, qid, "no_positive", "no candidate is judged relevant (> 0) in the split's qrels")
            continue
        out.append((qid, pids, labels))
    return out
