"""The answer key (``distill-jax score``): a teacher's scores for every (query, candidate) pair.

``score`` runs one or more cross-encoders over every (query, candidate) pair of a candidate file (from
``distill-jax mine``) and writes the teacher-score dataset (:mod:`distill_jax.data.scores`) shard by shard.
Queries are split into ``num_shards`` work units in candidate-file order; host ``h`` of ``P`` takes shards
``h, h+P, ...`` and scores them on its local devices (:class:`distill_jax.teacher.scorer.PairScorer`). A shard
is written atomically (temporary file + rename + completion record), so a run killed at any moment (SIGKILL
included) continues from the first unfinished shard when the same command is run again, and the result equals an
uninterrupted run: every pair exactly once.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ScoreConfig:
    """Settings of ``distill-jax score``.

    Attributes:
      teachers: cross-encoder checkpoint directories (or hub ids); several = an ensemble, one column each.
      collection: BEIR folder with the corpus and queries.
      candidates: candidate JSONL (``{"qid","pos","neg"}``) from ``distill-jax mine``.
      out_dir: the teacher-score dataset directory.
      split: qrels split that grades the positives (labels column).
      num_shards: work units = output shards (more shards: finer resumption).
      max_length: tokens per pair (query + passage, ``longest_first`` truncation).
      buckets: padded lengths (ascending, the last = max_length); pairs go to the smallest that fits.
      batch_size: pairs per step (a multiple of the local device count).
      dtype: compute dtype ("float32" or "bfloat16").
      max_candidates: keep at most this many negatives per query (0 = all).
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

    def __post_init__(self):
        if not self.teachers:
            raise ValueError("score: give at least one teacher checkpoint (--teacher DIR)")
        if tuple(sorted(self.buckets)) != tuple(self.buckets) or self.buckets[-1] != self.max_length:
            raise ValueError(f"buckets {self.buckets} must ascend and end at max_length {self.max_length}")


def teacher_name(path: str) -> str:
    """A column name for a teacher: the checkpoint directory's base name."""
    return os.path.basename(os.path.normpath(path)) or path


def shards_of_host(num_shards: int, process_index: int, process_count: int) -> list[int]:
    """Shards this host scores: ``process_index, process_index + process_count, ...``."""
    return list(range(process_index, num_shards, process_count))


def split_candidates(candidates: Sequence[dict], num_shards: int) -> list[Sequence[dict]]:
    """Contiguous, near-equal slices of the candidate lists, one per shard (deterministic)."""
    bounds = np.linspace(0, len(candidates), num_shards + 1).round().astype(int)
    return [candidates[bounds[i]:bounds[i + 1]] for i in range(num_shards)]


def run_score(cfg: ScoreConfig, process_index: int | None = None, process_count: int | None = None) -> dict:
    """Scores every shard of this host that is not finished yet; returns run statistics.

    Returns:
      ``{"shards_scored", "shards_skipped", "pairs", "pairs_per_s", "padding_fraction"}``.
    """
    import jax
    from tqdm import tqdm

    from distill_jax.data.collections import load_collection
    from distill_jax.data.candidates import read_candidates
    from distill_jax.data.scores import make_record, shard_done, write_teacher_scores
    from distill_jax.teacher.scorer import load_teacher, score_pairs

    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    names = [teacher_name(t) for t in cfg.teachers]
    if len(set(names)) != len(names):
        raise ValueError(f"teacher names must differ (from directory names): {names}")
    todo = [s for s in shards_of_host(cfg.num_shards, pi, pc) if not shard_done(cfg.out_dir, s, cfg.num_shards)]
    stats = {"shards_scored": 0, "shards_skipped": len(shards_of_host(cfg.num_shards, pi, pc)) - len(todo),
             "pairs": 0, "pairs_per_s": 0.0, "padding_fraction": 0.0}
    if stats["shards_skipped"]:
        log.info("score: %d shard(s) already written, resuming", stats["shards_skipped"])
    if not todo:
        return stats
    collection = load_collection(cfg.collection, cfg.split)
    shards = split_candidates(read_candidates(cfg.candidates), cfg.num_shards)
    teachers = [load_teacher(t, cfg.dtype, cfg.batch_size, cfg.buckets) for t in cfg.teachers]
    lists = {s: candidate_lists(shards[s], collection, cfg.max_candidates) for s in todo}
    total = sum(len(p) for s in todo for _, p, _ in lists[s]) * len(teachers)
    start = time.perf_counter()
    with tqdm(total=total, unit="pair", desc="score", smoothing=0.1) as bar:
        for s in todo:
            qids = [q for q, _, _ in lists[s]]
            q_texts = [collection.queries[q] for q, pids, _ in lists[s] for _ in pids]
            p_texts = [collection.passage(p) for _, pids, _ in lists[s] for p in pids]
            cols = np.stack([score_pairs(sc, tok, q_texts, p_texts, cfg.max_length, bar.update)
                             for sc, tok in teachers], axis=-1)  # [pairs, T]
            offsets = np.cumsum([0] + [len(p) for _, p, _ in lists[s]])
            records = [make_record(q, pids, labels, cols[offsets[i]:offsets[i + 1]])
                       for i, (q, pids, labels) in enumerate(lists[s])]
            write_teacher_scores(records, cfg.out_dir, s, cfg.num_shards, names)
            stats["shards_scored"] += 1
            stats["pairs"] += len(q_texts) * len(teachers)
            log.info("score: shard %d/%d written (%d queries)", s + 1, cfg.num_shards, len(qids))
    elapsed = time.perf_counter() - start
    stats["pairs_per_s"] = stats["pairs"] / max(elapsed, 1e-9)
    real = sum(sc.stats.real_tokens for sc, _ in teachers)
    padded = sum(sc.stats.padded_tokens for sc, _ in teachers)
    stats["padding_fraction"] = padded / max(real + padded, 1)
    return stats


def candidate_lists(cands: Sequence[dict], collection, max_candidates: int) -> list[tuple[str, list, list]]:
    """(qid, pids = positives then negatives, labels = qrels grades) for each query of a shard."""
    out = []
    for c in cands:
        if c["qid"] not in collection.queries:
            raise ValueError(f"candidates: query id {c['qid']!r} is not in {collection.path} queries of split "
                             f"with qrels; mine candidates for the same collection and split")
        neg = c["neg"][:max_candidates] if max_candidates else c["neg"]
        grades = collection.qrels.get(c["qid"], {})
        pids = list(c["pos"]) + [n for n in neg if n not in set(c["pos"])]
        out.append((c["qid"], pids, [grades.get(p, 0) for p in pids]))
    return out
