"""The train step: one pure function ``(state, batch) -> (state, metrics)`` for every student kind and loss.

Compiled once with ``jax.jit`` over global arrays: the batch is sharded over the mesh's batch axes, the state
keeps the shardings it was born with (replicated parameters, or "embed" over "fsdp"), the old state's buffers are
donated. Gradients are averaged over the whole global batch by construction (the loss is a mean over it; XLA
inserts the all-reduce), which is what a ``pmap`` step with ``lax.pmean`` computes.

Inside the step: student forward (:mod:`distill_jax.kinds`) -> registered loss (+ SPLADE regularisers with
their quadratic warm-up) -> gradients (optionally accumulated over micro-batches with ``lax.scan``) -> optax update,
applied only when loss and gradient norm are finite. Metrics come back as replicated float32 scalars, plus the
student's [B, N] scores of the batch (``scores``), from which the host computes rank agreement with the teacher
(:func:`distill_jax.train.metrics.spearman_per_query`) outside the compiled step.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

import distill_jax.losses  # noqa: F401  (registers the loss zoo and regularisers)
from distill_jax import distributed
from distill_jax.config import TrainConfig
from distill_jax.losses import in_batch_negative_mask, sparsity_stats, splade_regularization_terms
from distill_jax.registry import losses as LOSSES, regularizers as REGULARIZERS
from distill_jax.kinds import get as get_kind
from distill_jax.train.state import TrainState

Array = jax.Array

# Host-side fields of the batch contract that never enter the step.
HOST_ONLY_KEYS = ("index",)


# ---------------------------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------------------------


def _real_tokens(attention_mask: Array, weight: Array) -> Array:
    """Attended tokens [B, ..., L] of the real examples (weight [B] > 0)."""
    per_example = jnp.sum(attention_mask.reshape(attention_mask.shape[0], -1), axis=-1).astype(jnp.float32)
    return jnp.sum(per_example * (weight > 0))


def make_loss_fn(model, cfg: TrainConfig) -> Callable:
    """``loss_fn(params, batch, rng, step) -> (loss, (means, sums, scores))`` for the configured kind, loss and
    regularisers.

    ``rng=None`` runs deterministically (evaluation). ``means`` are averages over the batch's real queries (loss
    parts, sparsity); ``sums`` are counts (examples, tokens); ``scores`` the student's [B, N] scores.
    """
    kind, lc = get_kind(cfg.model.kind), cfg.loss
    loss = LOSSES.get(lc.name)
    hp = dict(lc.hp)
    for name in (lc.regularizer_q, lc.regularizer_d):  # unknown names fail here, not inside the trace
        if name:
            REGULARIZERS.get(name)

    def loss_fn(params, batch, rng, step):
        weight = batch["weight"].astype(jnp.float32)  # [B]: 0 = padding example
        mask = batch["mask"].astype(jnp.float32) * weight[:, None]  # [B, N]
        teacher = batch["teacher_scores"].astype(jnp.float32)
        out = kind.forward(model, params, batch, rng=rng, in_batch=lc.in_batch)
        kwargs = dict(hp)
        if lc.in_batch:
            kwargs["in_batch_scores"] = out.in_batch
            kwargs["in_batch_mask"] = in_batch_negative_mask(mask, mask.shape[0])
        main = loss(out.scores, teacher, mask, **kwargs)
        total = main
        means = {"loss_main": main}
        if kind.sparse:  # SPLADE: sparsity of the real queries and candidates, and the regularisers
            d_flat = out.doc_reps.reshape(-1, out.doc_reps.shape[-1])
            d_rows = mask.reshape(-1)
            means["nnz_query"] = sparsity_stats(out.query_reps, weight)
            means["nnz_doc"] = sparsity_stats(d_flat, d_rows)
            terms = splade_regularization_terms(
                out.query_reps, d_flat, step, lambda_query=lc.lambda_q, lambda_doc=lc.lambda_d,
                warmup_steps=lc.reg_warmup_steps, query_mask=weight, doc_mask=d_rows,
                query_regularizer=lc.regularizer_q or None, doc_regularizer=lc.regularizer_d or None)
            for side in ("query", "doc"):
                if f"reg_{side}" in terms:
                    total = total + terms[f"lambda_{side}"] * terms[f"reg_{side}"]
            means.update(terms)
        means["loss"] = total
        tokens = sum(_real_tokens(batch[g]["attention_mask"], weight) for g in kind.groups)
        sums = {"examples": jnp.sum(weight), "tokens": tokens}
        return total, (means, sums, out.scores)

    return loss_fn


# ---------------------------------------------------------------------------------------------------------------
# Step
# ---------------------------------------------------------------------------------------------------------------


def _split_micro(x: Array, k: int, mesh) -> Array:
    """[B, ...] -> [k, B/k, ...] with micro-batch j = rows j, j+k, j+2k, ...: every micro-batch is spread over all
    devices (contiguous blocks would leave most devices idle), each still sharded over the batch axes."""
    y = x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)
    if mesh is None:
        return y
    return jax.lax.with_sharding_constraint(y, NamedSharding(mesh, P(None, distributed.BATCH_AXES)))


def make_step_fn(model, cfg: TrainConfig, tx: optax.GradientTransformation,
                 schedule: optax.Schedule | None = None, mesh=None) -> Callable:
    """The pure (un-jitted) ``train_step(state, batch) -> (state, metrics)``: float32 scalars, and ``scores``
    [B, N] (the student's scores of the batch's candidates)."""
    loss_fn = make_loss_fn(model, cfg)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    k = cfg.optim.grad_accum

    def gradients(params, batch, key, step):
        if k == 1:
            (loss, (means, sums, scores)), grads = grad_fn(params, batch, key, step)
            return loss, means, sums, scores, grads
        micro = jax.tree.map(lambda x: _split_micro(x, k, mesh), batch)

        def body(carry, xs):
            i, mb = xs
            (loss, (means, sums, scores)), grads = grad_fn(params, mb, jax.random.fold_in(key, i), step)
            w = sums["examples"]  # micro-batches weigh by their real queries: the big-batch mean
            g_acc, m_acc, s_acc, w_acc = carry
            g_acc = jax.tree.map(lambda a, g: a + w * g, g_acc, grads)
            m_acc = {n: m_acc[n] + w * v for n, v in means.items()}
            s_acc = {n: s_acc[n] + v for n, v in sums.items()}
            return (g_acc, m_acc, s_acc, w_acc + w), scores

        shapes = jax.eval_shape(lambda: grad_fn(params, jax.tree.map(lambda x: x[0], micro), key, step))
        (_, (m_shape, s_shape, _)), _ = shapes
        zeros = lambda t: jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), t)  # noqa: E731
        init = (jax.tree.map(jnp.zeros_like, params), zeros(m_shape), zeros(s_shape), jnp.zeros((), jnp.float32))
        (g, m, s, w), scores = jax.lax.scan(body, init, (jnp.arange(k), micro))
        w = jnp.maximum(w, 1e-12)
        means = {n: v / w for n, v in m.items()}
        scores = scores.swapaxes(0, 1).reshape(-1, scores.shape[-1])  # back to batch order (see _split_micro)
        return means["loss"], means, s, scores, jax.tree.map(lambda a: a / w, g)

    def train_step(state: TrainState, batch: dict[str, Any]) -> tuple[TrainState, dict[str, Array]]:
        train_step.traces += 1  # Python runs only while jax traces: one trace per compiled shape
        batch = {n: v for n, v in batch.items() if n not in HOST_ONLY_KEYS}
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        loss, means, sums, scores, grads = gradients(state.params, batch, key, state.step)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        # A non-finite update is never applied, under both policies; "raise" stops on the host (trainer).
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
        new_state = state.replace(step=state.step + 1, params=keep(params, state.params),
                                  opt_state=keep(opt_state, state.opt_state),
                                  skipped=state.skipped + (~finite).astype(jnp.int32))
        metrics = {**means, **sums, "grad_norm": grad_norm, "nonfinite": (~finite).astype(jnp.float32),
                   "skipped": new_state.skipped.astype(jnp.float32)}
        if schedule is not None:
            metrics["learning_rate"] = jnp.asarray(schedule(state.step), jnp.float32)
        metrics = {n: jnp.asarray(v, jnp.float32) for n, v in metrics.items()}
        return new_state, {**metrics, "scores": scores.astype(jnp.float32)}

    train_step.traces = 0
    return train_step


def compile_train_step(model, cfg: TrainConfig, tx: optax.GradientTransformation, mesh,
                       shardings: TrainState, schedule: optax.Schedule | None = None, donate: bool = True):
    """``jax.jit`` of the step with explicit shardings: state as born, batch over the batch axes, metrics
    replicated; the input state is donated (its buffers are reused for the new state). The jitted function's
    ``__wrapped__.traces`` counts its compilations."""
    step = make_step_fn(model, cfg, tx, schedule, mesh)
    return jax.jit(step, in_shardings=(shardings, distributed.batch_sharding(mesh)),
                   out_shardings=(shardings, distributed.replicated(mesh)),
                   donate_argnums=(0,) if donate else ())
