"""Synthetic batches (tests and benchmarks): the batch contract with a learnable teacher, no files needed."""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from distill_jax.config import ConfigError, DataConfig


class SyntheticBatches:
    """Random token batches following the batch contract; teacher score = query/document token overlap.

    Batch ``i`` is a pure function of ``(seed, i)``, so the iterator state is just the position, and every host
    draws the same global batch and keeps its own rows. Lengths vary (padding is exercised), some negatives are
    masked out, and candidate k shares fewer query tokens the larger k is, so a student can learn the teacher.

    Args:
      data: the data config (batch_size is GLOBAL; n_candidates, query_maxlen, doc_maxlen, pair_maxlen, seed).
      kind: the model kind; its token groups decide the batch (``pairs``, or ``query``/``docs``).
      vocab_size: token ids are drawn from [5, vocab_size) (0-4 are reserved: pad, cls, sep, mask, unk).
      process_index, process_count: this host's share of each global batch.
    """

    PAD, CLS, SEP, MASK = 0, 1, 2, 3

    def __init__(self, data: DataConfig, kind: str, vocab_size: int, process_index: int = 0,
                 process_count: int = 1):
        if data.batch_size % process_count:
            raise ValueError(f"global batch {data.batch_size} is not divisible by {process_count} hosts")
        from distill_jax.kinds import get as get_kind

        self.data, self.kind, self.vocab = data, kind, vocab_size
        self.pairs = get_kind(kind).groups == ("pairs",)
        self.rows = slice(process_index * data.batch_size // process_count,
                          (process_index + 1) * data.batch_size // process_count)
        self.position = 0

    def get_state(self) -> dict[str, Any]:
        return {"kind": "synthetic", "seed": self.data.seed, "batch_size": self.data.batch_size,
                "position": self.position}

    def set_state(self, state: dict[str, Any]) -> None:
        """Resumes at a saved position.

        Raises:
          ConfigError (a ValueError): the position was saved by another loader (a dataset's) or with another
            ``data.seed`` / ``data.batch_size``, naming the field, both values and the fix.
        """
        fix = ("resume with the settings the run was started with (its work directory's config.json), or train "
               "these settings in a new workdir")
        if state.get("kind") != "synthetic":
            raise ConfigError(f"the saved data position belongs to a {state.get('kind', 'dataset')!r} loader, not "
                              f"to synthetic batches (data.source changed?): {fix}")
        for field in ("seed", "batch_size"):
            saved, now = state.get(field, getattr(self.data, field)), getattr(self.data, field)
            if saved != now:
                raise ConfigError(f"the saved data position was drawn with data.{field}={saved}, this run has "
                                  f"data.{field}={now}: {fix}")
        self.position = int(state["position"])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        batch = self.global_batch(self.position)
        self.position += 1
        return {k: (v[self.rows] if isinstance(v, np.ndarray) else {n: a[self.rows] for n, a in v.items()})
                for k, v in batch.items()}

    def global_batch(self, i: int) -> dict[str, Any]:
        d = self.data
        b, n, lq, ld = d.batch_size, d.n_candidates, d.query_maxlen, d.doc_maxlen
        rng = np.random.default_rng([d.seed, i])
        q_len = rng.integers(max(2, lq // 2), lq + 1, size=b)
        d_len = rng.integers(max(2, ld // 2), ld + 1, size=(b, n))
        q_ids = rng.integers(5, self.vocab, size=(b, lq))
        docs = rng.integers(5, self.vocab, size=(b, n, ld))
        # Candidate k copies a share of the query's tokens that falls with k: a graded, learnable relevance.
        share = np.clip(0.8 - 0.7 * np.arange(n) / max(n - 1, 1) + rng.normal(0, 0.1, (b, n)), 0.0, 1.0)
        take = rng.random((b, n, ld)) < share[..., None] * 0.5
        src = rng.integers(0, lq, size=(b, n, ld)) % q_len[:, None, None]
        docs = np.where(take, np.take_along_axis(np.broadcast_to(q_ids[:, None, :], (b, n, lq)), src, axis=2), docs)
        q_att = (np.arange(lq)[None] < q_len[:, None]).astype(np.int32)
        d_att = (np.arange(ld)[None, None] < d_len[..., None]).astype(np.int32)
        q_ids = np.where(q_att > 0, q_ids, self.PAD).astype(np.int32)
        docs = np.where(d_att > 0, docs, self.PAD).astype(np.int32)
        q_ids[:, 0], docs[..., 0] = self.CLS, self.CLS
        overlap = np.array([[np.isin(docs[r, c, :d_len[r, c]], q_ids[r, 1:q_len[r]]).mean()
                             for c in range(n)] for r in range(b)])
        teacher = (10.0 * overlap + rng.normal(0, 0.1, (b, n))).astype(np.float32)
        mask = np.ones((b, n), np.float32)
        if n > 2:
            mask[:, -1] = rng.random(b) > 0.25  # some queries have one candidate fewer
        out: dict[str, Any] = {"teacher_scores": teacher, "mask": mask, "weight": np.ones((b,), np.float32),
                               "index": (i * b + np.arange(b)).astype(np.int64)}
        if self.pairs:
            lp = d.pair_maxlen
            ids = np.zeros((b, n, lp), np.int32)
            types = np.zeros_like(ids)
            for r in range(b):
                for c in range(n):
                    seq = [self.CLS, *q_ids[r, 1:q_len[r]], self.SEP]
                    nq = len(seq)
                    seq += [*docs[r, c, 1:d_len[r, c]], self.SEP]
                    seq = seq[:lp - 1] + [self.SEP] if len(seq) > lp else seq
                    ids[r, c, :len(seq)] = seq
                    types[r, c, nq:len(seq)] = 1
            out["pairs"] = {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int32), "token_type_ids": types}
        else:
            out["query"] = {"input_ids": q_ids, "attention_mask": q_att, "score_mask": q_att.copy()}
            out["docs"] = {"input_ids": docs, "attention_mask": d_att, "score_mask": d_att.copy()}
        return out
