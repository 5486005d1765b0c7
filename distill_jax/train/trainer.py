"""The training loop, top to bottom: setup, mesh, model(s) + optimiser(s) (+ online teacher), data, step,
checkpoint, eval, loop.

    distill-jax train configs/colbert_margin_mse.py --set workdir=runs/colbert data.dataset_dir=...

Always resumes from ``workdir`` when it holds a checkpoint (model, optimiser, step, RNG and data position), so
re-running the same command after a crash or a pre-emption continues the run exactly.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Callable

import numpy as np

from distill_jax.config import ConfigError, TrainConfig, to_dict, validate

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------
# Checks of the first batch
# ---------------------------------------------------------------------------------------------------------------


def check_mse_targets(cfg: TrainConfig, batch: dict[str, Any], threshold: float = 0.05) -> float:
    """Warns when pointwise MSE asks a student whose scores cannot go below 0 (SPLADE: a dot product of
    non-negative vectors) for negative scores; the loss then pulls every activation to zero. Returns the fraction
    of real candidates of ``batch`` whose target ``teacher_scale * t + teacher_shift`` is negative (0.0 for other
    losses and kinds)."""
    from distill_jax import kinds

    if not kinds.get(cfg.model.kind).nonnegative_scores or cfg.loss.name != "mse":
        return 0.0
    from distill_jax.losses.pairwise import mse_targets

    target = mse_targets(np.asarray(batch["teacher_scores"]), **cfg.loss.hp)
    real = (np.asarray(batch["mask"]) * np.asarray(batch["weight"])[:, None]) > 0
    frac = float(np.mean(target[real] < 0)) if real.any() else 0.0
    if frac > threshold:
        log.warning("%.0f%% of this batch's MSE targets are below 0, which a SPLADE score (a dot product of "
                    "non-negative vectors) cannot reach (min %.2f): the loss will push activations to zero. Shift "
                    "the targets, e.g. --set 'loss.hp={\"teacher_shift\": %.1f}', or use margin_mse / kl.",
                    100 * frac, float(target[real].min()), max(1.0, float(np.ceil(-np.percentile(target[real], 25)))))
    return frac


# ---------------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------------


def train(cfg: TrainConfig, mesh=None, validator: Callable | None = None) -> dict[str, Any]:
    """Runs (or resumes) ``cfg`` to ``cfg.steps``.

    Args:
      cfg: the run.
      mesh: the device mesh (default: ``cfg.mesh`` over every device).
      validator: ``validator(cfg, model, mesh) -> (params -> metrics)``, needed when ``cfg.eval.every_steps``:
        :func:`distill_jax.eval.rerank.validator` (what ``distill-jax train`` passes). Evaluation is a later stage
        of the pipeline than training, so the loop takes it as an argument instead of importing it.

    Returns:
      ``{"state", "losses" {step: loss}, "compiles" (of the train step), "start_step", "last_metrics",
      "validation"}``.
    """
    import jax
    from tqdm import tqdm

    from distill_jax import distributed
    from distill_jax.train import checkpoint as ckpt_lib
    from distill_jax.train import state as state_lib
    from distill_jax.train.batches import loader_for_run
    from distill_jax.train.metrics import MetricWriter, batch_spearman
    from distill_jax.train.step import HOST_ONLY_KEYS, compile_train_step

    validate(cfg)
    primary = jax.process_index() == 0

    # --- mesh ------------------------------------------------------------------------------------------------
    mesh = mesh or distributed.make_mesh(cfg.mesh.data, cfg.mesh.fsdp)
    distributed.check_batch_divisibility(cfg.data.batch_size, mesh, cfg.optim.grad_accum)

    # --- model(s) + optimiser(s), state born sharded; the online teacher beside it --------------------------------
    students = state_lib.create_students(cfg, mesh)
    model, tx, schedule, state, shardings = students[:5]
    teacher = state_lib.make_teacher(cfg, mesh) if cfg.teacher.online else None
    teacher_args = () if teacher is None else (teacher.params,)
    if primary:
        log.info("%s: %s student(s), %.1fM parameters, mesh %s%s", cfg.name,
                 "+".join(sub.model.kind for _, sub in cfg.student_configs()),
                 state_lib.count_params(state.params) / 1e6, dict(mesh.shape),
                 f", online {teacher.kind} teacher" if teacher else "")

    # --- data --------------------------------------------------------------------------------------------------
    loader = loader_for_run(cfg, students.vocab_size, teacher and teacher.model.cfg.vocab_size)

    # --- checkpoints: resume from the work directory -----------------------------------------------------------
    os.makedirs(cfg.workdir, exist_ok=True)
    meta = {"config": to_dict(cfg), "versions": _versions()}
    ckpt = ckpt_lib.Checkpointer(os.path.join(cfg.workdir, "checkpoints"), cfg.checkpoint, meta)
    start = 0
    if ckpt.latest_step() is not None:
        state, data_state, start = ckpt.restore(ckpt_lib.abstract_like(state, shardings))
        loader.set_state(data_state)
        if primary:
            log.info("resumed from %s at step %d", cfg.workdir, start)
    if primary:
        with open(os.path.join(cfg.workdir, "config.json"), "w") as f:
            json.dump(to_dict(cfg), f, indent=1)

    # --- step, validation, metrics -----------------------------------------------------------------------------
    train_step = compile_train_step(model, cfg, tx, mesh, shardings, schedule, teacher=teacher)
    if cfg.eval.every_steps and validator is None:
        raise ConfigError("eval.every_steps is set but no validator was given: pass "
                          "validator=distill_jax.eval.rerank.validator to train(), or set eval.every_steps=0")
    validate_params = validator(cfg, model, mesh) if cfg.eval.every_steps else None
    writer = MetricWriter(cfg.workdir, tensorboard=cfg.tensorboard, enabled=primary, start_step=start)

    losses: dict[int, float] = {}
    last: dict[str, float] = {}
    window: list[dict[str, float]] = []
    val_metrics: dict[str, float] | None = None
    t_window = time.perf_counter()

    def consume(step_done: int, metrics, batch) -> None:
        """Host side of step ``step_done`` (1-based): non-finite policy, rank agreement, logging. Called one step
        late, so fetching the metrics of step t overlaps the device running step t+1."""
        nonlocal t_window, last
        fetched = jax.device_get(metrics)
        rows = len(batch["weight"])  # this host's queries: its block of the global batch
        mine = lambda x: np.asarray(x)[jax.process_index() * rows:][:rows]  # noqa: E731
        arrays = {k: mine(fetched.pop(k)) for k in list(fetched) if np.ndim(fetched[k])}  # [B, N] scores
        if "teacher_scores" in arrays:  # online: rank agreement with the teacher of this step
            batch = {**batch, "teacher_scores": arrays.pop("teacher_scores")}
        m = {k: float(v) for k, v in fetched.items()}
        for k, scores in arrays.items():  # "scores", or "<student>/scores"
            m[k[:-len("scores")] + "spearman"], _ = batch_spearman(scores, batch)
        losses[step_done] = m["loss"]
        if m["nonfinite"] and cfg.optim.nonfinite == "raise":
            ckpt.wait()
            raise FloatingPointError(
                f"non-finite loss or gradient at step {step_done} (loss={m['loss']}, grad_norm={m['grad_norm']}); "
                f"the update was not applied. Lower optim.learning_rate, check the data, or set "
                f"optim.nonfinite=skip. Last checkpoint: step {ckpt.latest_step()} in {cfg.workdir}")
        window.append(m)
        if step_done % cfg.log_every == 0 or step_done == cfg.steps:
            dt = max(time.perf_counter() - t_window, 1e-9)
            row = {k: float(np.mean([w[k] for w in window])) for k in window[-1]
                   if k not in ("examples", "tokens", "skipped")}
            row["loss_mean"] = row["loss"]
            row["loss"] = m["loss"]  # the step's own loss (bit-exact resume checks read it)
            row.update(skipped=m["skipped"], examples_per_s=sum(w["examples"] for w in window) / dt,
                       tokens_per_s=sum(w["tokens"] for w in window) / dt)
            writer.write(step_done, row)
            last = row
            window.clear()
            t_window = time.perf_counter()

    bar = tqdm(total=cfg.steps, initial=start, disable=not (cfg.progress and primary), desc=cfg.name,
               dynamic_ncols=True)
    pending = None
    step = start
    try:
        while step < cfg.steps:
            batch = next(loader)
            if step == start and primary and "teacher_scores" in batch:
                for _, sub in cfg.student_configs():
                    check_mse_targets(sub, batch)
            device_batch = {k: v for k, v in batch.items() if k not in HOST_ONLY_KEYS}
            state, metrics = train_step(state, distributed.global_batch(device_batch, mesh), *teacher_args)
            step += 1
            if pending is not None:
                consume(*pending)
            pending = (step, metrics, batch)
            bar.update(1)
            if step % cfg.log_every == 0 and last:  # rank agreement: "spearman", or each "<student>/spearman"
                bar.set_postfix(loss=f"{last['loss']:.4f}", **{
                    k.replace("spearman", "rho"): f"{v:.3f}" for k, v in last.items() if k.endswith("spearman")})
            evaluate_now = validate_params is not None and (step % cfg.eval.every_steps == 0 or step == cfg.steps)
            save_now = (cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0) or step == cfg.steps
            if evaluate_now or save_now:
                consume(*pending)  # never checkpoint past an unseen non-finite step
                pending = None
            if evaluate_now:
                val_metrics = validate_params(state.params)
                writer.write(step, val_metrics, prefix="val/")
                if primary:
                    log.info("step %d validation: %s", step, val_metrics)
            if save_now:
                has_metric = val_metrics is not None and cfg.checkpoint.best_metric in val_metrics and evaluate_now
                ckpt.save(step, state, loader.get_state(),
                          metrics={cfg.checkpoint.best_metric: val_metrics[cfg.checkpoint.best_metric]}
                          if has_metric else None)
        if pending is not None:
            consume(*pending)
    finally:
        bar.close()
        writer.close()
        ckpt.close()
    return {"state": state, "losses": losses, "compiles": train_step.__wrapped__.traces, "start_step": start,
            "last_metrics": last, "validation": val_metrics}


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out
