"""Metric writers: one JSON line per logged step (``metrics.jsonl``) and TensorBoard events (tensorboardX).

A writer is created by the trainer and passed to whoever logs; there is no global tracker. Only process 0
writes (every host holds the same replicated scalars).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any


class MetricWriter:
    """Writes scalar dicts to ``<directory>/metrics.jsonl`` and optionally TensorBoard.

    Args:
      directory: output directory (created).
      tensorboard: also write TensorBoard events under ``<directory>/tensorboard``.
      enabled: False makes every call a no-op (non-primary hosts).
    """

    def __init__(self, directory: str, tensorboard: bool = True, enabled: bool = True):
        self.enabled = enabled
        self._tb = None
        self._jsonl = None
        if not enabled:
            return
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, "metrics.jsonl")
        self._jsonl = open(self.path, "a", buffering=1)  # line-buffered: a killed run keeps every full line
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(directory, "tensorboard"))

    def write(self, step: int, scalars: dict[str, Any], prefix: str = "") -> None:
        """One JSON line ``{"step": step, **scalars}`` (prefixed names) and one TensorBoard scalar per entry."""
        if not self.enabled:
            return
        row = {f"{prefix}{k}": _plain(v) for k, v in scalars.items()}
        self._jsonl.write(json.dumps({"step": int(step), **row}) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, int(step))

    def flush(self) -> None:
        if self._jsonl:
            self._jsonl.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._jsonl:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _plain(v: Any):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return int(f) if isinstance(v, int) else f


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """All rows of a metrics file (skipping a torn last line of a killed run)."""
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows
