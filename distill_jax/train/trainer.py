"""The training loop, top to bottom: setup, mesh, data, model + optimiser, step, checkpoint, eval, loop.

    distill-jax train configs/colbert_margin_mse.py --set workdir=runs/colbert data.dataset_dir=...

Always resumes from ``workdir`` when it holds a checkpoint (model, optimiser, step, RNG and data position), so
re-running the same command after a crash or a pre-emption continues the run exactly.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Iterator

import numpy as np

from distill_jax.config import DataConfig, TrainConfig, to_dict, validate

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------


def make_loader(cfg: TrainConfig, vocab_size: int):
    """This host's batch iterator (with ``get_state``/``set_state``) for ``cfg.data``."""
    import jax

    d = cfg.data
    if d.source == "synthetic":
        return SyntheticBatches(d, cfg.model.kind, vocab_size, jax.process_index(), jax.process_count())
    from distill_jax.data.collections import TextTable, load_collection
    from distill_jax.data.pipeline import LoaderConfig, TrainLoader
    from distill_jax.data.tokenize import load_tokenizer

    collection = load_collection(d.collection_dir, split=None)
    tok = load_tokenizer(tokenizer_path(cfg))
    loader_cfg = LoaderConfig(batch_size=d.batch_size, num_candidates=d.n_candidates, model_kind=cfg.model.kind,
                              query_maxlen=d.query_maxlen, doc_maxlen=d.doc_maxlen, pair_maxlen=d.pair_maxlen,
                              seed=d.seed, **d.options)
    loader = TrainLoader(d.dataset_dir, TextTable.from_collection(collection), collection.queries, tok, loader_cfg)
    return iter(loader)


def tokenizer_path(cfg: TrainConfig) -> str:
    from distill_jax.models.hf import resolve_checkpoint_dir

    path = cfg.data.tokenizer or cfg.model.checkpoint
    if not path:
        raise ValueError("no tokenizer: set data.tokenizer (or model.checkpoint, whose tokenizer is used)")
    return resolve_checkpoint_dir(path)


def _device_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch without host-only fields (the record ``index`` is for exactly-once checks, not the step)."""
    return {k: v for k, v in batch.items() if k != "index"}


def check_mse_targets(cfg: TrainConfig, batch: dict[str, Any], threshold: float = 0.05) -> float:
    """Warns when pointwise MSE asks a SPLADE student for scores below 0 (a dot product of non-negative vectors
    cannot go there; the loss then pulls every activation to zero). Returns the fraction of real candidates of
    ``batch`` whose target ``teacher_scale * t + teacher_shift`` is negative (0.0 for other losses and kinds)."""
    if cfg.model.kind != "splade" or cfg.loss.name != "mse":
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


def _check_ids(batch: dict[str, Any], vocab_size: int) -> None:
    from distill_jax.models import check_token_ids

    for group in ("query", "docs", "pairs"):
        if group in batch:
            ids = batch[group]["input_ids"]
            check_token_ids(ids.reshape(-1, ids.shape[-1]), vocab_size, f"{group}.input_ids")


# ---------------------------------------------------------------------------------------------------------------
# Validation: rerank held-out candidates, nDCG@10 through distill_jax.evaluate
# ---------------------------------------------------------------------------------------------------------------


class RerankValidator:
    """Reranks the top-``depth`` BM25 candidates of held-out queries with the current parameters.

    Tokenisation happens once; each call runs the jitted deterministic scorer over fixed-shape chunks of queries
    (the last chunk padded, so one compile) and returns ``evaluate_run`` metrics.
    """

    def __init__(self, cfg: TrainConfig, model, mesh):
        import jax

        from distill_jax.data.collections import load_collection
        from distill_jax.data.tokenize import load_tokenizer
        from distill_jax.train.step import make_score_fn

        e, d = cfg.eval, cfg.data
        folder = e.collection_dir or d.collection_dir
        col = load_collection(folder, split=e.split)
        qids = sorted(col.queries)[: e.max_queries or None]
        self.qrels = {q: col.qrels[q] for q in qids}
        doc_ids, texts = col.passages()
        from distill_jax.data.negatives import bm25_search

        run = bm25_search(doc_ids, texts, {q: col.queries[q] for q in qids}, k=e.depth)
        text = dict(zip(doc_ids, texts))
        self.depth = e.depth
        self.kind = cfg.model.kind
        self.cands = {q: [p for p, _ in run.get(q, [])][: e.depth] for q in qids}
        self.qids = [q for q in qids if self.cands[q]]
        n_dev = mesh.devices.size
        self.chunk = max(n_dev, (max(1, e.batch_size // e.depth) + n_dev - 1) // n_dev * n_dev)
        tok = load_tokenizer(tokenizer_path(cfg))
        queries = [col.queries[q] for q in self.qids]
        docs = [[text[p] for p in self.cands[q]] for q in self.qids]
        self.batch = _tokenize_queries_docs(tok, cfg, queries, docs, e.depth)
        self.mask = np.array([[1.0] * len(self.cands[q]) + [0.0] * (e.depth - len(self.cands[q]))
                              for q in self.qids], np.float32)
        self.score = make_score_fn(model, self.kind, mesh)
        self.mesh = mesh
        self.measures = tuple(e.metrics)
        self._jax = jax

    def __call__(self, params) -> dict[str, float]:
        from distill_jax import distributed
        from distill_jax.evaluate import evaluate_run

        n = len(self.qids)
        scores = []
        for start in range(0, n, self.chunk):
            idx = np.arange(start, start + self.chunk) % n  # wrap: pad the last chunk with real rows
            part = self._jax.tree.map(lambda x: x[idx], self.batch)
            s = self.score(params, distributed.global_batch(part, self.mesh))
            scores.append(np.asarray(self._jax.device_get(s))[: min(self.chunk, n - start)])
        scores = np.concatenate(scores)
        run = {q: {p: float(scores[i, j]) for j, p in enumerate(self.cands[q])} for i, q in enumerate(self.qids)}
        return evaluate_run(self.qrels, run, self.measures)


def _tokenize_queries_docs(tok, cfg: TrainConfig, queries: list[str], docs: list[list[str]], n: int) -> dict:
    """Contract-shaped token dicts for queries and their (padded to ``n``) candidate lists."""
    from distill_jax.data import tokenize as tk
    from distill_jax.models import ColBERTConfig

    d = cfg.data
    flat = [(lst + [""] * (n - len(lst)))[:n] for lst in docs]
    flat = [t if t else "[PAD]" for lst in flat for t in lst]  # empty slots: any text, masked out by ``mask``
    b = len(queries)
    shape = lambda t: {k: v.reshape(b, n, -1) for k, v in t.items()}  # noqa: E731
    if cfg.model.kind == "cross_encoder":
        return {"pairs": shape(tk.encode_pairs(tok, [q for q in queries for _ in range(n)], flat, d.pair_maxlen))}
    if cfg.model.kind == "colbert":
        c = ColBERTConfig(dim=cfg.model.colbert_dim, query_maxlen=d.query_maxlen, doc_maxlen=d.doc_maxlen)
        return {"query": tk.encode_colbert_queries(tok, queries, c),
                "docs": shape(tk.encode_colbert_documents(tok, flat, c))}
    return {"query": tk.encode_texts(tok, queries, d.query_maxlen),
            "docs": shape(tk.encode_texts(tok, flat, d.doc_maxlen))}


# ---------------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------------


def train(cfg: TrainConfig, mesh=None) -> dict[str, Any]:
    """Runs (or resumes) ``cfg`` to ``cfg.steps``.

    Returns:
      ``{"state", "losses" {step: loss}, "compiles" (of the train step), "start_step", "last_metrics",
      "validation"}``.
    """
    import jax
    from tqdm import tqdm

    from distill_jax import distributed
    from distill_jax.train import checkpoint as ckpt_lib
    from distill_jax.train import state as state_lib
    from distill_jax.train.metrics import MetricWriter
    from distill_jax.train.step import compile_train_step

    validate(cfg)
    primary = jax.process_index() == 0

    # --- mesh ------------------------------------------------------------------------------------------------
    mesh = mesh or distributed.make_mesh(cfg.mesh.data, cfg.mesh.fsdp)
    distributed.check_batch_divisibility(cfg.data.batch_size, mesh, cfg.optim.grad_accum)

    # --- model + optimiser, state born sharded ------------------------------------------------------------------
    model, enc, pretrained = state_lib.make_model(cfg)
    schedule = state_lib.learning_rate_schedule(cfg.optim, cfg.steps)
    tx = state_lib.make_optimizer(cfg.optim, cfg.steps)
    state, shardings = state_lib.create_state(model, tx, mesh, cfg.seed, pretrained)
    del pretrained
    if primary:
        log.info("%s: %s student, %.1fM parameters, mesh %s", cfg.name, cfg.model.kind,
                 state_lib.count_params(state.params) / 1e6, dict(mesh.shape))

    # --- data --------------------------------------------------------------------------------------------------
    loader = make_loader(cfg, enc.vocab_size)

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
    train_step = compile_train_step(model, cfg, tx, mesh, shardings, schedule)
    validator = RerankValidator(cfg, model, mesh) if cfg.eval.every_steps else None
    writer = MetricWriter(cfg.workdir, tensorboard=cfg.tensorboard, enabled=primary)

    losses: dict[int, float] = {}
    last: dict[str, float] = {}
    window: list[dict[str, float]] = []
    val_metrics: dict[str, float] | None = None
    t_window = time.perf_counter()

    def consume(step_done: int, metrics) -> None:
        """Host side of step ``step_done`` (1-based): non-finite policy, logging. Called one step late, so
        fetching the metrics of step t overlaps the device running step t+1."""
        nonlocal t_window, last
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
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
                   if k not in ("examples", "tokens", "spearman_queries", "skipped")}
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
            _check_ids(batch, enc.vocab_size)
            if step == start and primary:
                check_mse_targets(cfg, batch)
            state, metrics = train_step(state, distributed.global_batch(_device_batch(batch), mesh))
            step += 1
            if pending is not None:
                consume(*pending)
            pending = (step, metrics)
            bar.update(1)
            if step % cfg.log_every == 0 and last:
                bar.set_postfix(loss=f"{last['loss']:.4f}", rho=f"{last.get('spearman', 0):.3f}")
            evaluate_now = validator is not None and (step % cfg.eval.every_steps == 0 or step == cfg.steps)
            save_now = (cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0) or step == cfg.steps
            if evaluate_now or save_now:
                consume(*pending)  # never checkpoint past an unseen non-finite step
                pending = None
            if evaluate_now:
                val_metrics = validator(state.params)
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
    return {"state": state, "losses": losses, "compiles": train_step._cache_size(), "start_step": start,
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
