"""Metric writers: one JSON line per logged step (``metrics.jsonl``) and TensorBoard events (tensorboardX), and
the host-side metrics computed from a step's outputs (rank agreement with the teacher).

A writer is created by the trainer and passed to whoever logs; there is no global tracker. Only process 0
writes (every host holds the same replicated scalars).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np


class MetricWriter:
    """Writes scalar dicts to ``<directory>/metrics.jsonl`` and optionally TensorBoard.

    Args:
      directory: output directory (created).
      tensorboard: also write TensorBoard events under ``<directory>/tensorboard``.
      enabled: False makes every call a no-op (non-primary hosts).
      start_step: the step a resumed run starts from (its checkpoint's): rows of a killed run logged after it
        (step > start_step) are dropped on open, since the resumed run logs those steps again; every step then
        has one row. None keeps the file as it is (append only).
    """

    def __init__(self, directory: str, tensorboard: bool = True, enabled: bool = True,
                 start_step: int | None = None):
        self.enabled = enabled
        self._tb = None
        self._jsonl = None
        if not enabled:
            return
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, "metrics.jsonl")
        if start_step is not None:
            truncate_after(self.path, start_step)
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


def truncate_after(path: str, step: int) -> int:
    """Drops the rows of ``path`` with a step after ``step`` (and a torn last line), atomically (a temporary file
    renamed over it). Returns the number of rows dropped; a missing file is left missing."""
    if not os.path.isfile(path):
        return 0
    kept, dropped = [], 0
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            if isinstance(row, dict) and int(row.get("step", 0)) > step:
                dropped += 1
                continue
            kept.append(line if line.endswith("\n") else line + "\n")
    if dropped:
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, path)
    return dropped


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


# Logged per step but not a quantity a run is judged by (rates, schedules, counters, the single step's loss).
# A student of several logs its own under "<student>/": there "loss" is the window mean, so it is followed.
NOT_FOLLOWED = frozenset({"step", "loss", "grad_norm", "learning_rate", "nonfinite", "skipped", "examples_per_s",
                          "tokens_per_s", "examples", "tokens", "lambda_query", "lambda_doc"})


def followed(name: str) -> bool:
    """Whether :func:`start_end` follows the logged quantity ``name``."""
    base = name.rsplit("/", 1)[-1]
    return name not in NOT_FOLLOWED and (base == "loss" or base not in NOT_FOLLOWED)


def start_end(rows: list[dict[str, Any]]) -> dict[str, tuple[int, float, int, float]]:
    """What a run's metrics did from its first logged window to its last.

    Args:
      rows: the rows of a ``metrics.jsonl`` (:func:`read_jsonl`), in step order.

    Returns:
      ``{name: (first step, value, last step, value)}`` for every numeric quantity a run is judged by: the
      window-mean loss (``loss_mean``) and its terms (``loss_*``), rank agreement with the teacher (``spearman``,
      ``<student>/spearman``), a student's own loss and terms (``<student>/loss*``), validation metrics
      (``val/*``) and what else a step reports (SPLADE's non-zeros and regulariser terms); rates, counters,
      gradient norms and schedules are left out.
      A quantity logged once has equal start and end.
    """
    out: dict[str, tuple[int, float, int, float]] = {}
    for row in rows:
        for k, v in row.items():
            if not followed(k) or not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            step = int(row["step"])
            first = out.get(k, (step, float(v)))[:2]
            out[k] = (*first, step, float(v))
    return out


def format_start_end(changes: dict[str, tuple[int, float, int, float]]) -> list[str]:
    """One line per quantity of :func:`start_end`: ``name  start (step a) -> end (step b)  change``."""
    width = max((len(k) for k in changes), default=0)
    return [f"{k:<{width}}  {a:10.4f} (step {sa}) -> {b:10.4f} (step {sb})  {b - a:+.4f}"
            for k, (sa, a, sb, b) in sorted(changes.items())]


def _average_ranks(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """0-based ranks of ``x`` [B, N] among the valid entries of each row, ties sharing their average rank."""
    xi, xj = x[:, :, None], x[:, None, :]
    vj = valid[:, None, :].astype(np.float64)
    less = np.sum(vj * (xj < xi), axis=-1)
    ties = np.sum(vj * (xj == xi), axis=-1) - 1.0  # minus the entry itself
    return less + 0.5 * ties


def spearman_per_query(student, teacher, mask) -> tuple[np.ndarray, np.ndarray]:
    """Spearman correlation of student and teacher scores over each query's real candidates (host side, numpy:
    it is a metric, computed from the step's returned scores, never inside the compiled step).

    Args:
      student: [B, N] scores.
      teacher: [B, N] scores.
      mask: [B, N] real candidates.

    Returns:
      (rho [B] float64, defined [B] bool): rho is 0 where undefined (fewer than 2 real candidates, or a row
      whose scores are all equal).
    """
    student, teacher = np.asarray(student, np.float64), np.asarray(teacher, np.float64)
    valid = np.asarray(mask) > 0
    rs = _average_ranks(np.where(valid, student, 0.0), valid)
    rt = _average_ranks(np.where(valid, teacher, 0.0), valid)
    n = np.maximum(np.sum(valid, axis=-1, keepdims=True), 1).astype(np.float64)
    center = lambda r: np.where(valid, r - np.sum(np.where(valid, r, 0.0), -1, keepdims=True) / n, 0.0)  # noqa: E731
    cs, ct = center(rs), center(rt)
    cov, vs, vt = (np.sum(cs * ct, -1), np.sum(cs * cs, -1), np.sum(ct * ct, -1))
    defined = (vs > 0) & (vt > 0)
    rho = np.where(defined, cov / np.sqrt(np.where(defined, vs * vt, 1.0)), 0.0)
    return rho, defined


def batch_spearman(scores, batch: dict[str, Any]) -> tuple[float, float]:
    """Mean rank agreement of a batch's student ``scores`` [B, N] with its teacher scores, over the real queries
    (weight > 0) where it is defined. Returns (mean rho, number of queries it averages)."""
    weight = np.asarray(batch["weight"], np.float64)
    mask = np.asarray(batch["mask"], np.float64) * weight[:, None]
    rho, defined = spearman_per_query(scores, batch["teacher_scores"], mask)
    w = defined * weight
    return float(np.sum(rho * w) / max(np.sum(w), 1e-12)), float(np.sum(w))
