"""Orbax checkpoints of a run: train state (params, optimiser, step, RNG) + data iterator state, saved together.

Layout: ``<workdir>/checkpoints/<step>/{state,data,meta}``. Saves are asynchronous (training goes on while a
background thread writes) and atomic: orbax writes into a temporary directory and renames it when complete, so
a process killed mid-save leaves the previous checkpoint intact and the partial one is ignored (and cleaned up on
the next start). Retention: the latest ``keep`` checkpoints plus the ``keep_best`` best by a validation metric.

Restoring takes the TARGET shardings (from the current mesh), so a checkpoint written on 8 devices restores on 1
(or the reverse): orbax reads each array's global value and lays it out as asked.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from distill_jax.config import CheckpointConfig, ConfigError

log = logging.getLogger(__name__)


def _skip_orbax_raw_byte_telemetry() -> bool:
    """Stops orbax from polling tensorstore's I/O counters around every array save and restore.

    Measured (orbax-checkpoint 0.12.8, tensorstore 0.1.86): each ``ts.experimental_collect_matching_metrics``
    call leaks its result (the returned dicts keep an extra reference; ~3.7 KB a call with a handful of
    counters, more as counters accumulate), and orbax calls it twice per save only to log a "raw throughput"
    line and record two ``jax.monitoring`` scalars. RSS then grows with every checkpoint (issue #17: ~120 KB a
    save in a training run, flat without saves). Returning None from orbax's helper takes orbax's own
    "no initial count" branch, which skips that telemetry and nothing else; the checkpoint bytes are unchanged.
    ``DISTILL_JAX_ORBAX_IO_METRICS=1`` keeps orbax's behaviour (for measuring the difference).

    Returns whether the helper was replaced (False when orbax no longer has it, or when kept by the variable).
    """
    if os.environ.get("DISTILL_JAX_ORBAX_IO_METRICS") == "1":
        return False
    try:
        from orbax.checkpoint._src.serialization import tensorstore_utils
    except ImportError:
        return False
    if not callable(getattr(tensorstore_utils, "get_tensorstore_raw_bytes", None)):
        return False
    tensorstore_utils.get_tensorstore_raw_bytes = lambda *args, **kwargs: None
    return True


ORBAX_TELEMETRY_SKIPPED = _skip_orbax_raw_byte_telemetry()


class Checkpointer:
    """A thin wrapper over ``ocp.CheckpointManager`` with the run's items and policies.

    Args:
      directory: where step directories go (created if missing).
      cfg: save interval, retention, best metric, async.
      meta: JSON-able run description stored with every checkpoint (config, versions).
    """

    def __init__(self, directory: str, cfg: CheckpointConfig, meta: dict[str, Any] | None = None):
        if os.path.exists(directory) and not os.path.isdir(directory):
            raise NotADirectoryError(f"{directory} is a file, but a work directory's checkpoints/ must be a "
                                     "directory of step directories: move the file away, or pass another workdir")
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
          FileNotFoundError: no checkpoint; ConfigError (a ValueError): the checkpoint holds another state tree
          (another model geometry, optimiser or recipe: the message names the work directory and, when the saved
          config tells, the first changed field) or was written by a different number of hosts (the data
          position of each host cannot be mapped).
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.manager.directory}")
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        except ValueError as e:  # orbax: tree structures differ / "Requested shape ... not compatible"
            raise self._mismatch(step, e) from e
        data = out["data"]
        if data["process_count"] != jax.process_count():
            raise ConfigError(f"checkpoint step {step} in {self.manager.directory} was written by "
                             f"{data['process_count']} hosts, this job has {jax.process_count()}: the data "
                             "iterator position of each host cannot be restored")
        return out["state"], data["states"][jax.process_index()], step

    def _mismatch(self, step: int, error: ValueError) -> ConfigError:
        """The one-line error of a resume whose state does not fit the checkpoint (orbax's own text is many lines
        about ``partial_restore``, which is not the fix here)."""
        directory = str(self.manager.directory)
        workdir = os.path.dirname(directory.rstrip("/"))
        changed = ""
        try:
            saved = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
            old, new = saved.get("config") or {}, self.meta.get("config") or {}
            # the sections that shape the state first: a longer `steps` is a legitimate change, not the cause
            diff = next((d for d in (_first_difference(old.get(k), new.get(k), f"{k}.")
                                     for k in ("model", "optim", "loss", "data")) if d), "")
            if diff:
                changed = f" (the checkpoint's config has {diff})"
        except (FileNotFoundError, KeyError, ValueError, AttributeError):
            pass
        lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
        detail = " ".join(lines[:2])[:160]
        return ConfigError(f"work directory {workdir}: checkpoint step {step} holds another model or optimiser "
                           f"state than this config builds{changed}: {detail}. Resume with the config the run was "
                           f"started with ({os.path.join(workdir, 'config.json')}), or train this config in a new "
                           "workdir")

    def wait(self) -> None:
        """Blocks until pending async saves are written (raises a save's error, if any)."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _first_difference(saved: Any, current: Any, prefix: str = "") -> str:
    """``field=saved, this run has current`` for the first differing field of two config dicts ("" if none)."""
    if not isinstance(saved, dict) or not isinstance(current, dict):
        return ""
    for key in list(saved) + [k for k in current if k not in saved]:
        a, b = saved.get(key), current.get(key)
        if a == b or key in ("workdir", "name"):
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            return _first_difference(a, b, f"{prefix}{key}.")
        return f"{prefix}{key}={a!r}, this run has {b!r}"
    return ""


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


# ---------------------------------------------------------------------------------------------------------------
# Reading a finished (or running) work directory: parameters only
# ---------------------------------------------------------------------------------------------------------------


def restore_params(workdir: str, step: int | None = None) -> tuple[dict[str, Any], int, Any]:
    """The parameters of one checkpoint of a work directory, as host numpy arrays, and its training config.

    Reads only the ``params`` subtree of the ``state`` item (shapes from the checkpoint's own metadata): no model,
    optimiser or TrainState is built, no Hugging Face weights are loaded, and any device count can read it.

    Args:
      workdir: a training run's work directory (``<workdir>/checkpoints/<step>/``).
      step: the checkpoint to read; None = :func:`select_step` (best by the run's validation metric, else the
        latest).

    Returns:
      (params: nested dict of numpy arrays as the model's ``params`` collection, step, the run's ``TrainConfig``
      as saved with that checkpoint).

    Raises:
      FileNotFoundError: no work directory or no finished checkpoint in it; ValueError: ``step`` is not one of
        the saved steps (the message lists them).
    """
    directory = checkpoints_dir(workdir)
    manager = _read_only_manager(directory)
    try:
        steps = sorted(manager.all_steps())
        if step is None:
            step = select_step(manager, _config_of(manager, steps[-1], workdir).checkpoint, workdir)
        elif step not in steps:
            raise ValueError(f"{directory} has no checkpoint for step {step}; saved steps: {steps} "
                             "(pass one of them, or omit the step for the best, else the latest)")
        state_dir = os.path.join(str(manager.directory), str(step), "state")
        with _quiet_absl():  # orbax warns that a step's item has no metadata file of its own: it never has
            tree = ocp.PyTreeCheckpointer().metadata(state_dir).item_metadata
        abstract = {"params": jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree["params"])}
        as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract)
        out = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=abstract, restore_args=as_numpy, partial_restore=True)))
        cfg = _config_of(manager, step, workdir)
    finally:
        manager.close()
    return _plain_dicts(out["state"]["params"]), int(step), cfg


def restore_student(workdir: str, student: str | None = None, step: int | None = None
                    ) -> tuple[dict[str, Any], int, Any]:
    """:func:`restore_params` of ONE student: a one-student run as it is, or student ``student`` of a run of
    several (``TrainConfig.students``), its parameters and its single-student config
    (:meth:`TrainConfig.student_configs`), so export and retrieval treat it as a run of its own.

    Raises:
      ValueError: a run of several students and ``student`` is not one of them (the message lists them), or a
        one-student run and ``student`` is given.
    """
    params, step, cfg = restore_params(workdir, step)
    names = [s.name for s in cfg.students]
    if not names:
        if student:
            raise ValueError(f"{workdir} trains one student; drop --student {student}")
        return params, step, cfg
    if student not in names:
        raise ValueError(f"{workdir} trains {len(names)} students ({', '.join(names)}): pick one with --student "
                         "NAME" + (f" ({student!r} is none of them)" if student else ""))
    return params[student], step, dict(cfg.student_configs())[student]


def checkpoints_dir(workdir: str) -> str:
    """``<workdir>/checkpoints``, checked to exist and to hold at least one finished checkpoint.

    Raises:
      FileNotFoundError / NotADirectoryError: naming the path and what a work directory holds.
    """
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"work directory {workdir} does not exist; pass the directory a training run "
                                "wrote (the one named by its config's workdir)")
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise NotADirectoryError(f"{directory} is a file; a work directory's checkpoints/ is a directory of "
                                 "step directories written by `distill-jax train`")
    finished = [d for d in (os.listdir(directory) if os.path.isdir(directory) else []) if d.isdigit()]
    if not finished:
        raise FileNotFoundError(f"{directory} holds no finished checkpoint; train until the first save "
                                "(checkpoint.every_steps, and always at the last step) and try again")
    return directory


def select_step(manager: ocp.CheckpointManager, cfg: CheckpointConfig, workdir: str | None = None) -> int:
    """The best saved step by ``cfg.best_metric`` (``cfg.best_mode``; ties: the later step), else the latest.

    A step's metric is the one orbax stored with the checkpoint, else the ``val/<best_metric>`` row of
    ``<workdir>/metrics.jsonl`` at that step (the last such row: a resumed run repeats steps). Only steps with a
    finite metric compete (validation runs on its own schedule); with none, the latest step is returned.
    """
    logged = _validation_log(workdir, cfg.best_metric) if workdir else {}
    scored = []
    for step in manager.all_steps():
        value = (manager.metrics(step) or {}).get(cfg.best_metric, logged.get(step))
        if value is not None and np.isfinite(value):
            scored.append((float(value) if cfg.best_mode == "max" else -float(value), step))
    return max(scored)[1] if scored else int(manager.latest_step())


def _validation_log(workdir: str, metric: str) -> dict[int, float]:
    """{step: value} of ``val/<metric>`` in ``<workdir>/metrics.jsonl`` (later rows win; bad lines skipped, as
    a killed writer can leave a partial last line)."""
    path, key, out = os.path.join(workdir, "metrics.jsonl"), f"val/{metric}", {}
    if not os.path.isfile(path):
        return out
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and key in row and isinstance(row[key], (int, float)):
                out[int(row["step"])] = float(row[key])
    return out


def _read_only_manager(directory: str) -> ocp.CheckpointManager:
    with _quiet_absl():  # read_only=True logs three warnings about its own defaults
        return ocp.CheckpointManager(os.path.abspath(directory), item_names=("state", "data", "meta"),
                                     options=ocp.CheckpointManagerOptions(read_only=True))


@contextlib.contextmanager
def _quiet_absl():
    """absl (orbax's logger) at ERROR for the duration of a block, restored afterwards."""
    import absl.logging

    verbosity = absl.logging.get_verbosity()
    absl.logging.set_verbosity(absl.logging.ERROR)
    try:
        yield
    finally:
        absl.logging.set_verbosity(verbosity)


def _config_of(manager: ocp.CheckpointManager, step: int, workdir: str) -> Any:
    """The TrainConfig saved with checkpoint ``step`` (its ``meta`` item), else ``<workdir>/config.json``."""
    from distill_jax.config import from_dict

    try:
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        saved = meta.get("config")
    except (FileNotFoundError, KeyError, ValueError):
        saved = None
    if saved is None:
        path = os.path.join(workdir, "config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint {step} in {manager.directory} carries no config and {path} is "
                                    "missing: the run's TrainConfig is needed to rebuild its model")
        with open(path) as f:
            saved = json.load(f)
    return from_dict(saved)


def _plain_dicts(tree: Any) -> Any:
    """Nested mappings -> plain dicts (leaves kept)."""
    if hasattr(tree, "items"):
        return {k: _plain_dicts(v) for k, v in tree.items()}
    return tree
