"""Orbax checkpoints of a run: train state (params, optimiser, step, RNG) + data iterator state, saved together.

Layout: ``<workdir>/checkpoints/<step>/{state,data,meta}``. Saves are asynchronous (training goes on while a
background thread writes) and atomic: orbax writes into a temporary directory and renames it when complete, so
a process killed mid-save leaves the previous checkpoint intact and the partial one is ignored (and cleaned up on
the next start). Retention: the latest ``keep`` checkpoints plus the ``keep_best`` best by a validation metric.

Restoring takes the TARGET shardings (from the current mesh), so a checkpoint written on 8 devices restores on 1
(or the reverse): orbax reads each array's global value and lays it out as asked.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from distill_jax.config import CheckpointConfig

log = logging.getLogger(__name__)


class Checkpointer:
    """A thin wrapper over ``ocp.CheckpointManager`` with the run's items and policies.

    Args:
      directory: where step directories go (created if missing).
      cfg: save interval, retention, best metric, async.
      meta: JSON-able run description stored with every checkpoint (config, versions).
    """

    def __init__(self, directory: str, cfg: CheckpointConfig, meta: dict[str, Any] | None = None):
        self.cfg = cfg
        self.meta = meta or {}
        keep: list[Any] = [policies.LatestN(n=max(cfg.keep, 1))]
        if cfg.keep_best > 0:
            keep.append(policies.BestN(get_metric_fn=lambda m: m[cfg.best_metric], reverse=cfg.best_mode == "min",
                                       n=cfg.keep_best, keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(keep),
            enable_async_checkpointing=cfg.async_save,
            cleanup_tmp_directories=True,  # partial saves of a killed run are removed, never read
            create=True,
        )
        self.manager = ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                             item_names=("state", "data", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, data_state: Any, metrics: dict[str, float] | None = None,
             force: bool = True) -> bool:
        """Starts saving ``state`` and the data iterator state at ``step`` (returns at once when async).

        ``data_state`` is this host's iterator state; with several hosts every host's state is stored, in process
        order, and each host restores its own.
        """
        states = _gather_json(data_state)
        metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
        return self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave({"process_count": jax.process_count(), "states": states}),
                meta=ocp.args.JsonSave(self.meta),
            ),
            metrics=metrics, force=force,
        )

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, Any, int]:
        """Restores the state laid out as ``abstract_state`` (a tree of ``jax.ShapeDtypeStruct`` with shardings).

        Returns:
          (state, this host's data iterator state, step).

        Raises:
          FileNotFoundError: no checkpoint; ValueError: the checkpoint was written by a different number of
          hosts (the data position of each host cannot be mapped).
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.manager.directory}")
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        data = out["data"]
        if data["process_count"] != jax.process_count():
            raise ValueError(f"checkpoint step {step} in {self.manager.directory} was written by "
                             f"{data['process_count']} hosts, this job has {jax.process_count()}: the data "
                             "iterator position of each host cannot be restored")
        return out["state"], data["states"][jax.process_index()], step

    def wait(self) -> None:
        """Blocks until pending async saves are written (raises a save's error, if any)."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(state: Any, shardings: Any) -> Any:
    """``jax.ShapeDtypeStruct`` tree of ``state``'s shapes with the given target shardings."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


def _gather_json(value: Any) -> list[Any]:
    """Every host's JSON-able value, in process order (one host: ``[value]``)."""
    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils

    raw = np.frombuffer(json.dumps(value).encode(), np.uint8)
    sizes = multihost_utils.process_allgather(np.array([raw.size], np.int64)).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:raw.size] = raw
    every = multihost_utils.process_allgather(padded).reshape(len(sizes), -1)
    return [json.loads(bytes(every[i, :sizes[i]]).decode()) for i in range(len(sizes))]
