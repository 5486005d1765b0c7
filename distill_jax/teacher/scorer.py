"""The answer-key engine: a cross-encoder scores (query, passage) pairs, data-parallel over a device mesh.

Pairs are tokenised once at the maximum length, then grouped into length buckets (``buckets``: the padded lengths
used), sorted by length inside a bucket and cut into fixed-size batches, so padding is small and there is one
compilation per bucket. Batches are sharded over the ``data`` axis of a mesh of this host's devices: scoring needs no
communication between hosts, so each host scores its own shards of queries with its local devices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from distill_jax.distributed import local_mesh


@dataclasses.dataclass
class ScoringStats:
    """Counters of one scoring run: pairs scored, real and padded tokens, batches, compiled shapes."""

    pairs: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    batches: int = 0
    shapes: set = dataclasses.field(default_factory=set)

    @property
    def padding_fraction(self) -> float:
        """Share of computed token positions that were padding."""
        total = self.real_tokens + self.padded_tokens
        return self.padded_tokens / total if total else 0.0


def pair_buckets(max_length: int) -> tuple[int, ...]:
    """The padded lengths pairs tokenised to ``max_length`` are bucketed into: 64, 128, 192 below it, then
    ``max_length``."""
    return tuple(b for b in (64, 128, 192) if b < max_length) + (max_length,)


def pick_bucket(length: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket that holds ``length`` tokens (the last bucket is the maximum length)."""
    for b in buckets:
        if length <= b:
            return b
    return buckets[-1]


class PairScorer:
    """Scores tokenised pairs with a cross-encoder on a mesh; one compile per (batch, bucket) shape.

    Args:
      model: a ``CrossEncoder`` module.
      params: its parameters (placed replicated on the mesh once).
      batch_size: pairs per step across the job: the mesh's devices on every host (``mesh.devices.size x
        jax.process_count()``; one process: the mesh). Each device scores ``ceil(batch_size / that)`` rows per
        step, so a host's step is that times its mesh size: every device sees the same [rows, bucket] shape and
        the same consecutive rows whatever the split into hosts, and scores are bitwise equal for 1 x 8 and 2 x 4
        devices (XLA:CPU's float32 result for a row depends on the per-device batch shape).
      buckets: padded lengths, ascending; the last must be the tokenisation length.
      mesh: defaults to :func:`distill_jax.distributed.local_mesh` (this host's devices).
    """

    def __init__(self, model, params, batch_size: int = 64, buckets: tuple[int, ...] = (64, 128, 192, 256),
                 mesh: Mesh | None = None):
        self.mesh = mesh or local_mesh()
        n = self.mesh.devices.size
        self.batch_size = -(-batch_size // (n * jax.process_count())) * n
        self.buckets = tuple(sorted(buckets))
        self.params = None if params is None else jax.device_put(params, NamedSharding(self.mesh, P()))
        self.batch_sharding = NamedSharding(self.mesh, P("data"))
        self._forward = jax.jit(
            lambda p, b: model.apply({"params": p}, b),
            in_shardings=(NamedSharding(self.mesh, P()), self.batch_sharding),
            out_shardings=self.batch_sharding,
        )
        self.stats = ScoringStats()

    def score(self, tokens: dict[str, np.ndarray], progress: Callable[[int], Any] | None = None,
              params=None) -> np.ndarray:
        """Scores every row of a tokenised pair batch (with ``params`` when given, else the scorer's own: the
        same compiled forward either way).

        Args:
          tokens: ``input_ids``, ``attention_mask``, ``token_type_ids`` int32 [P, L] (L = the last bucket), padded at
            the end, as from :func:`distill_jax.data.tokenize.encode_pairs`.
          progress: called with the number of pairs done after each batch.

        Returns:
          [P] float32 logits in the input order.
        """
        params = self.params if params is None else jax.device_put(params, NamedSharding(self.mesh, P()))
        if params is None:
            raise ValueError("PairScorer built without params: pass params= to score()")
        n_pairs, max_len = tokens["input_ids"].shape
        if max_len != self.buckets[-1]:
            raise ValueError(f"pairs are tokenised to {max_len} tokens but the largest bucket is "
                             f"{self.buckets[-1]}; tokenise to the largest bucket")
        lengths = tokens["attention_mask"].sum(axis=1)
        out = np.zeros(n_pairs, np.float32)
        order = np.argsort(lengths, kind="stable")
        bucket_of = np.array([pick_bucket(int(x), self.buckets) for x in lengths[order]])
        for bucket in self.buckets:
            rows = order[bucket_of == bucket]
            for start in range(0, len(rows), self.batch_size):
                idx = rows[start:start + self.batch_size]
                batch = {k: _pad_rows(v[idx, :bucket], self.batch_size) for k, v in tokens.items()}
                scores = self._forward(params, jax.device_put(batch, self.batch_sharding))
                out[idx] = np.asarray(scores)[: len(idx)]
                self.stats.pairs += len(idx)
                self.stats.batches += 1
                real = int(lengths[idx].sum())
                self.stats.real_tokens += real
                self.stats.padded_tokens += self.batch_size * bucket - real
                self.stats.shapes.add((self.batch_size, bucket))
                if progress is not None:
                    progress(len(idx))
        return out


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """Pads a [r, L] array with zero rows (all-padding pairs, scored and discarded) to [rows, L]."""
    if len(x) == rows:
        return np.ascontiguousarray(x)
    return np.concatenate([x, np.zeros((rows - len(x),) + x.shape[1:], x.dtype)])


def score_pairs(scorer, tok, queries: Sequence[str], passages: Sequence[str], max_length: int,
                progress=None, chunk: int = 8192) -> np.ndarray:
    """Scores text pairs: tokenise (in chunks, bounded memory) and run the bucketed scorer.

    Returns:
      [P] float32 logits in input order.
    """
    from distill_jax.data.tokenize import encode_pairs

    out = np.zeros(len(queries), np.float32)
    for start in range(0, len(queries), chunk):
        tokens = encode_pairs(tok, queries[start:start + chunk], passages[start:start + chunk], max_length)
        out[start:start + chunk] = scorer.score(tokens, progress)
    return out


def load_teacher(path: str, dtype: str = "float32", batch_size: int = 128,
                 buckets: tuple[int, ...] = (64, 128, 192, 256), allow_pickle: bool = False):
    """(scorer, tokenizer) for a cross-encoder checkpoint, on this host's devices (``allow_pickle``: read a
    ``pytorch_model.bin``-only directory)."""
    import jax.numpy as jnp

    from distill_jax.data.tokenize import load_tokenizer
    from distill_jax.models import load_pretrained

    model, params = load_pretrained("cross_encoder", path, dtype=jnp.dtype(dtype), allow_pickle=allow_pickle)
    return PairScorer(model, params, batch_size=batch_size, buckets=buckets), load_tokenizer(path)


__all__ = ["PairScorer", "ScoringStats", "pair_buckets", "pick_bucket", "score_pairs", "load_teacher"]
