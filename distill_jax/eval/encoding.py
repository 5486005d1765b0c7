"""Encoding many texts for retrieval: length-bucketed batches through one jitted apply, sharded over local devices.

Real text is not padded to the maximum length: texts are sorted by their framed token count and cut into batches
of ``batch_size``; each batch is framed to its longest member rounded up to ``multiple`` tokens (capped at the
maximum), so a corpus compiles at most ``max_length / multiple`` shapes and a 60-token query never pays for 256
positions. Padding rows of the last batch are copies of a real row and are dropped before anything is returned.

    apply = ShardedApply(model, params)                        # params replicated over a 1-D ("data",) mesh
    for rows, batch, out in encode_batches(apply, lengths, frame, max_length=180, batch_size=32):
        ...                                                    # out[i] belongs to text rows[i]
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from distill_jax.distributed import local_mesh

Batch = dict[str, np.ndarray]
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # what a model reads (not score_mask)


class ShardedApply:
    """``model.apply`` jitted with parameters replicated and the batch split over a 1-D mesh.

    Args:
      model: a Flax module; ``model.apply({"params": params}, batch)`` -> [B, ...].
      params: its parameters (host or device arrays).
      mesh: a 1-D ``("data",)`` mesh (default: this host's devices, :func:`distill_jax.distributed.local_mesh`:
        retrieval needs no traffic between hosts).
    """

    def __init__(self, model: Any, params: Any, mesh: Mesh | None = None):
        self.mesh = local_mesh() if mesh is None else mesh
        self._replicated = NamedSharding(self.mesh, P())
        self._rows = NamedSharding(self.mesh, P("data"))
        self.params = jax.device_put(params, self._replicated)
        self._fn = jax.jit(lambda p, b: model.apply({"params": p}, b, deterministic=True),
                           in_shardings=(self._replicated, self._rows), out_shardings=self._rows)

    def with_params(self, params: Any) -> ShardedApply:
        """The same compiled apply with other parameters (validation during training: no recompile)."""
        other = copy.copy(self)
        other.params = jax.device_put(params, self._replicated)
        return other

    @property
    def n_devices(self) -> int:
        return int(self.mesh.devices.size)

    def __call__(self, batch: Batch) -> np.ndarray:
        """Model outputs of one batch.

        Args:
          batch: int arrays [B, L] (``input_ids``, ``attention_mask``, optionally ``token_type_ids``; other keys
            are ignored), B a multiple of the device count.

        Returns:
          [B, ...] host numpy array.
        """
        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        b = inputs["input_ids"].shape[0]
        if b % self.n_devices:
            raise ValueError(f"batch of {b} rows does not split over {self.n_devices} devices; use a batch size "
                             f"that is a multiple of {self.n_devices}")
        return np.asarray(jax.device_get(self._fn(self.params, jax.device_put(inputs, self._rows))))


def buckets(lengths: np.ndarray, batch_size: int, max_length: int, multiple: int = 32) -> list[tuple[np.ndarray, int]]:
    """Length-sorted batches and the length each is framed to.

    Args:
      lengths: int [N] framed token count of each text (special tokens included, already capped at
        ``max_length``).
      batch_size: texts per batch.
      max_length: the longest frame.
      multiple: frame lengths are rounded up to a multiple of this (bounds the number of compiled shapes).

    Returns:
      ``[(rows int64 [<= batch_size], frame length)]`` covering every text once, shortest texts first (ties in
      input order).
    """
    if batch_size < 1 or multiple < 1:
        raise ValueError(f"batch_size={batch_size} and multiple={multiple} must be positive")
    lengths = np.asarray(lengths, np.int64)
    order = np.argsort(lengths, kind="stable")
    out = []
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        longest = int(lengths[rows].max())
        out.append((rows, int(min(max_length, -(-longest // multiple) * multiple))))
    return out


def pad_rows(batch: Batch, rows: int) -> Batch:
    """Pads every array [n, ...] to [rows, ...] with copies of row 0 (results of those rows are discarded)."""
    n = next(iter(batch.values())).shape[0]
    if n == rows:
        return batch
    take = np.concatenate([np.arange(n), np.zeros(rows - n, np.int64)])
    return {k: v[take] for k, v in batch.items()}


def encode_batches(apply: Callable[[Batch], np.ndarray], lengths: np.ndarray,
                   frame: Callable[[np.ndarray, int], Batch], max_length: int, batch_size: int = 32,
                   multiple: int = 32, n_devices: int = 1, desc: str | None = None
                   ) -> Iterator[tuple[np.ndarray, Batch, np.ndarray]]:
    """Encodes texts in length buckets (see :func:`buckets`).

    Args:
      apply: ``batch -> [B, ...]`` model outputs (a :class:`ShardedApply`).
      lengths: int [N] framed token counts.
      frame: ``(rows [n], length) -> batch`` of int arrays [n, length] for those texts.
      max_length: the longest frame.
      batch_size: rows per call (at most the number of texts), rounded up to a multiple of ``n_devices``;
        every call has exactly this many rows (one compile per frame length).
      multiple: frame-length rounding.
      n_devices: devices the batch is split over.
      desc: a tqdm progress-bar label (None: no bar).

    Yields:
      ``(rows [n], batch (n real rows), outputs [n, ...])`` in bucket order.
    """
    from tqdm.auto import tqdm

    # fewer texts than a batch (a single query): a smaller batch, not rows of padding
    batch_size = -(-min(batch_size, max(len(lengths), 1)) // n_devices) * n_devices
    plan = buckets(lengths, batch_size, max_length, multiple)
    bar = tqdm(total=len(lengths), desc=desc, unit="text", disable=desc is None, mininterval=5)
    try:
        for rows, length in plan:
            batch = frame(rows, length)
            out = apply(pad_rows(batch, batch_size))[: len(rows)]
            bar.update(len(rows))
            yield rows, batch, out
    finally:
        bar.close()


class Timer:
    """Wall-clock seconds of a block: ``with Timer() as t: ...; t.seconds``."""

    def __enter__(self) -> Timer:
        self._start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._start


__all__ = ["ShardedApply", "buckets", "pad_rows", "encode_batches", "Timer", "MODEL_INPUTS"]
