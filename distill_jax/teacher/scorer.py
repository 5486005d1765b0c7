"""The answer-key engine: a cross-encoder scores (query, passage) pairs, data-parallel over a device mesh.

Pairs are tokenised once at the maximum length, then grouped into length buckets (``buckets``: the padded lengths
used), sorted by length inside a bucket and cut into fixed-size batches, so padding is small and there is one
compilation per bucket. Batches are sharded over the ``data`` axis of a mesh of this host's devices: scoring needs no
communication between hosts, so each host scores its own shards of queries with its local devices.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


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


def local_mesh() -> Mesh:
    """A 1-D ``data`` mesh over this host's devices (scoring is embarrassingly parallel across hosts)."""
    return Mesh(np.asarray(jax.local_devices()), ("data",))


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
      batch_size: pairs per step (rounded up to a multiple of the device count).
      buckets: padded lengths, ascending; the last must be the tokenisation length.
      mesh: defaults to :func:`local_mesh`.
    """

    def __init__(self, model, params, batch_size: int = 64, buckets: tuple[int, ...] = (64, 128, 192, 256),
                 mesh: Mesh | None = None):
        self.mesh = mesh or local_mesh()
        n = self.mesh.devices.size
        self.batch_size = -(-batch_size // n) * n
        self.buckets = tuple(sorted(buckets))
        self.params = jax.device_put(params, NamedSharding(self.mesh, P()))
        self.batch_sharding = NamedSharding(self.mesh, P("data"))
        self._forward = jax.jit(
            lambda p, b: model.apply({"params": p}, b),
            in_shardings=(NamedSharding(self.mesh, P()), self.batch_sharding),
            out_shardings=self.batch_sharding,
        )
        self.stats = ScoringStats()

    def score(self, tokens: dict[str, np.ndarray], progress: Callable[[int], Any] | None = None) -> np.ndarray:
        """Scores every row of a tokenised pair batch.

        Args:
          tokens: ``input_ids``, ``attention_mask``, ``token_type_ids`` int32 [P, L] (L = the last bucket), padded at
            the end, as from :func:`distill_jax.data.tokenize.encode_pairs`.
          progress: called with the number of pairs done after each batch.

        Returns:
          [P] float32 logits in the input order.
        """
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
                scores = self._forward(self.params, jax.device_put(batch, self.batch_sharding))
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


__all__ = ["PairScorer", "ScoringStats", "local_mesh", "pick_bucket"]
