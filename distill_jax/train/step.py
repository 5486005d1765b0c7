"""The train step: one pure function ``(state, batch) -> (state, metrics)`` for every student kind and loss.

Compiled once with ``jax.jit`` over global arrays: the batch is sharded over the mesh's batch axes, the state
keeps the shardings it was born with (replicated parameters, or "embed" over "fsdp"), the old state's buffers are
donated. Gradients are averaged over the whole global batch by construction (the loss is a mean over it; XLA
inserts the all-reduce), which is what a ``pmap`` step with ``lax.pmean`` computes.

Inside the step: [online teacher scores the batch's pairs] -> student forward (:mod:`distill_jax.kinds`) ->
weighted objectives (:mod:`distill_jax.train.objectives`; + SPLADE regularisers with their quadratic warm-up)
-> gradients (optionally accumulated over micro-batches with ``lax.scan``) -> optax update,
applied only when loss and gradient norm are finite. Metrics come back as replicated float32 scalars, plus the
student's [B, N] scores of the batch (``scores``), from which the host computes rank agreement with the teacher
(:func:`distill_jax.train.metrics.spearman_per_query`) outside the compiled step. Several students
(``cfg.students``) each take their own step inside the one compiled program.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

import distill_jax.losses  # noqa: F401  (registers the loss zoo and regularisers)
from distill_jax import distributed
from distill_jax.config import TrainConfig, peer_order
from distill_jax.losses import sparsity_stats, splade_regularization_terms
from distill_jax.registry import regularizers as REGULARIZERS
from distill_jax.kinds import get as get_kind
from distill_jax.train import objectives
from distill_jax.train.state import Teacher, TrainState

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


def make_loss_fn(model, cfg: TrainConfig, score: bool = False) -> Callable:
    """``loss_fn(params, batch, rng, step) -> (loss, (means, sums, scores))`` for the configured kind, objectives
    and regularisers (``score``: run the scoring forward even when no objective needs it).

    The loss is ``sum_i weight_i * objective_i`` over ``cfg.loss.terms()`` (:mod:`distill_jax.train.objectives`;
    the main loss is ``loss_main``, the others ``loss_<label>``), plus SPLADE's regularisers. ``rng=None`` runs
    deterministically (evaluation). ``means`` are averages over the batch's real queries (loss parts, sparsity);
    ``sums`` are counts (examples, tokens); ``scores`` the student's [B, N] scores (zeros when no objective
    needed them).
    """
    kind, lc = get_kind(cfg.model.kind), cfg.loss
    terms = [(t, objectives.get(t.name)) for t in lc.terms()]
    objectives.check_terms([t for t, _ in terms], kind)
    in_batch = objectives.wants_in_batch([t for t, _ in terms])
    capture = objectives.student_layers([t for t, _ in terms])
    for name in (lc.regularizer_q, lc.regularizer_d):  # unknown names fail here, not inside the trace
        if name:
            REGULARIZERS.get(name)

    def loss_fn(params, batch, rng, step):
        weight = batch["weight"].astype(jnp.float32)  # [B]: 0 = padding example
        mask = batch["mask"].astype(jnp.float32) * weight[:, None]  # [B, N]
        products = objectives.Products(kind, model, params, batch, rng, mask, weight, in_batch, capture)
        total, means = None, {}
        for term, objective in terms:
            value = objective.fn(products, term)
            means[f"loss_{term.key}"] = value
            weighted = value if term.weight == 1.0 else term.weight * value
            total = weighted if total is None else total + weighted
        if kind.sparse and (products.has_forward or lc.regularizer_q or lc.regularizer_d):
            out = products.forward()  # SPLADE: sparsity of the real queries and candidates, and the regularisers
            d_flat = out.doc_reps.reshape(-1, out.doc_reps.shape[-1])
            d_rows = mask.reshape(-1)
            means["nnz_query"] = sparsity_stats(out.query_reps, weight)
            means["nnz_doc"] = sparsity_stats(d_flat, d_rows)
            terms_reg = splade_regularization_terms(
                out.query_reps, d_flat, step, lambda_query=lc.lambda_q, lambda_doc=lc.lambda_d,
                warmup_steps=lc.reg_warmup_steps, query_mask=weight, doc_mask=d_rows,
                query_regularizer=lc.regularizer_q or None, doc_regularizer=lc.regularizer_d or None)
            for side in ("query", "doc"):
                if f"reg_{side}" in terms_reg:
                    total = total + terms_reg[f"lambda_{side}"] * terms_reg[f"reg_{side}"]
            means.update(terms_reg)
        means["loss"] = total
        tokens = sum(_real_tokens(batch[g]["attention_mask"], weight) for g in kind.groups)
        sums = {"examples": jnp.sum(weight), "tokens": tokens}
        scores = products.forward().scores if products.has_forward or score else jnp.zeros_like(mask)
        return total, (means, sums, scores)

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


def student_step_fn(model, cfg: TrainConfig, tx: optax.GradientTransformation,
                    schedule: optax.Schedule | None = None, mesh=None) -> Callable:
    """The pure step of ONE student, ``(state, batch) -> (state, metrics)``: float32 scalars, and ``scores``
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
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng, impl=cfg.dropout_prng), state.step)
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

    return train_step


def student_batch(batch: dict[str, Any], name: str, kind_name: str) -> dict[str, Any]:
    """Student ``name``'s view of a multi-student batch: its own token groups (``<name>/query``, ...) where the
    batch has them (students with different tokenisation layouts), else the shared ones; the rest in common."""
    groups = get_kind(kind_name).groups
    view = {k: v for k, v in batch.items() if "/" not in k}
    view.update({g: batch[f"{name}/{g}"] for g in groups if f"{name}/{g}" in batch})
    return view


def run_totals(metrics: dict[str, Array], names, nonfinite: Array, skipped: Array) -> dict[str, Array]:
    """The run-level metrics of several students' ``<name>/<metric>``: summed ``loss`` and ``tokens``, the
    examples of the batch, the total ``grad_norm`` (root of the summed squares), ``nonfinite`` and ``skipped``."""
    return {"loss": sum(metrics[f"{n}/loss"] for n in names), "tokens": sum(metrics[f"{n}/tokens"] for n in names),
            "examples": metrics[f"{names[0]}/examples"], "nonfinite": nonfinite,
            "grad_norm": jnp.sqrt(sum(metrics[f"{n}/grad_norm"] ** 2 for n in names)),
            "skipped": skipped.astype(jnp.float32)}


def multi_student_step_fn(models: dict, cfg: TrainConfig, txs: dict, schedules: dict | None = None,
                          mesh=None) -> Callable:
    """Several students in one step from the same batch: each student's own step (:func:`student_step_fn`) on its
    own parameters and optimiser state (``state.params[name]``, ``state.opt_state[name]``), so the result is the
    single-student steps run separately, in one compiled program. Metrics are ``<name>/<metric>`` plus the sums
    ``loss`` and ``tokens``, the total ``grad_norm`` and ``nonfinite`` (any student); a student's non-finite
    update is skipped for that student alone."""
    steps = {name: student_step_fn(models[name], sub, txs[name], (schedules or {}).get(name), mesh)
             for name, sub in cfg.student_configs()}
    kind_of = {name: sub.model.kind for name, sub in cfg.student_configs()}

    def train_step(state: TrainState, batch: dict[str, Any]) -> tuple[TrainState, dict[str, Array]]:
        params, opt_state, metrics = {}, {}, {}
        for name, step in steps.items():
            sub = state.replace(params=state.params[name], opt_state=state.opt_state[name])
            new, m = step(sub, student_batch(batch, name, kind_of[name]))
            params[name], opt_state[name] = new.params, new.opt_state
            metrics.update({f"{name}/{k}": v for k, v in m.items()})
        names = list(steps)
        nonfinite = jnp.max(jnp.stack([metrics[f"{n}/nonfinite"] for n in names]))
        skipped = state.skipped + (nonfinite > 0).astype(jnp.int32)
        metrics.update(run_totals(metrics, names, nonfinite, skipped))
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state, skipped=skipped), metrics

    return train_step


def joint_student_step_fn(models: dict, cfg: TrainConfig, txs: dict, schedules: dict | None = None
                          ) -> Callable:
    """Students trained together (``StudentConfig.peer``; RocketQAv2, Ren et al. 2021, arXiv:2110.07367): in
    :func:`distill_jax.config.peer_order`, each student's loss (:func:`make_loss_fn`) on its view of the batch,
    a student with a peer reading that peer's [B, N] scores of this step (dropout and all) as its
    ``teacher_scores``, not stopped; ONE gradient of the sum of the losses with respect to every parameter set,
    then each student's own optimiser on its part. Students without a peer relation contribute a separable term,
    so they step as they would alone. A non-finite loss or gradient skips the update of every student (their
    gradients are coupled). Metrics as :func:`multi_student_step_fn`'s."""
    subs = dict(cfg.student_configs())
    order = peer_order(cfg.students)
    peer_of = {s.name: s.peer for s in cfg.students}
    read = set(peer_of.values()) - {""}
    loss_fns = {n: make_loss_fn(models[n], subs[n], score=n in read) for n in order}
    kind_of = {n: subs[n].model.kind for n in order}

    def joint_loss(params, batch, key, step):
        total, aux, scores = 0.0, {}, {}
        for name in order:
            view = student_batch(batch, name, kind_of[name])
            if peer_of[name]:
                view = {**view, "teacher_scores": scores[peer_of[name]]}
            loss, (means, sums, scores[name]) = loss_fns[name](params[name], view, key, step)
            total = total + loss
            aux[name] = (means, sums, scores[name])
        return total, aux

    grad_fn = jax.value_and_grad(joint_loss, has_aux=True)

    def train_step(state: TrainState, batch: dict[str, Any]) -> tuple[TrainState, dict[str, Array]]:
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng, impl=cfg.dropout_prng), state.step)
        (total, aux), grads = grad_fn(state.params, batch, key, state.step)
        norms = {n: optax.tree.norm(grads[n]) for n in order}
        grad_norm = jnp.sqrt(sum(v ** 2 for v in norms.values()))
        finite = jnp.isfinite(total) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
        params, opt_state, metrics = {}, {}, {}
        skipped = state.skipped + (~finite).astype(jnp.int32)
        for name in order:
            updates, opt = txs[name].update(grads[name], state.opt_state[name], state.params[name])
            params[name] = keep(optax.apply_updates(state.params[name], updates), state.params[name])
            opt_state[name] = keep(opt, state.opt_state[name])
            means, sums, scores = aux[name]
            m = {**means, **sums, "grad_norm": norms[name], "nonfinite": (~finite).astype(jnp.float32),
                 "skipped": skipped.astype(jnp.float32)}
            if (schedules or {}).get(name) is not None:
                m["learning_rate"] = schedules[name](state.step)
            m = {k: jnp.asarray(v, jnp.float32) for k, v in m.items()}
            metrics.update({f"{name}/{k}": v for k, v in {**m, "scores": scores.astype(jnp.float32)}.items()})
        metrics.update(run_totals(metrics, order, (~finite).astype(jnp.float32), skipped))
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state, skipped=skipped), metrics

    return train_step


TEACHER_PREFIX = "teacher_"  # the teacher's own token groups in a batch (batches.loader_for_run): teacher_pairs


def teacher_view(teacher: Teacher, batch: dict[str, Any]) -> dict[str, Any]:
    """The teacher's token groups: its own view (``teacher_<group>``) when its layout differs from the student's,
    else the student's groups (same layout, same tokens)."""
    return {g: batch.get(TEACHER_PREFIX + g, batch.get(g)) for g in get_kind(teacher.kind).groups}


def teacher_outputs(teacher: Teacher, params, batch: dict[str, Any],
                    needs: objectives.TeacherNeeds = objectives.TeacherNeeds()) -> dict[str, Any]:
    """The online teacher's outputs on the batch, as batch fields (deterministic, under ``stop_gradient``):
    ``teacher_scores`` [B, N] float32 always, and what ``needs`` lists: ``teacher_in_batch`` [B, B*N],
    ``teacher_reps_query`` / ``teacher_reps_docs`` (its vectors; ColBERT: [B, Lq, D] / [B, N, Ld, D]),
    ``teacher_hidden_<group>`` ({layer: [..., L, H]})."""
    kind = get_kind(teacher.kind)
    out = kind.forward(teacher.model, params, teacher_view(teacher, batch), in_batch=needs.in_batch,
                       capture=needs.layers)
    fields = {"teacher_scores": out.scores.astype(jnp.float32)}
    if needs.in_batch:
        fields["teacher_in_batch"] = out.in_batch.astype(jnp.float32)
    if needs.reps:
        fields.update(teacher_reps_query=out.query_reps, teacher_reps_docs=out.doc_reps)
    for group, hidden in (out.hidden or {}).items():
        fields[f"teacher_hidden_{group}"] = hidden
    return jax.lax.stop_gradient(fields)


def teacher_scores(teacher: Teacher, params, batch: dict[str, Any]) -> Array:
    """The online teacher's [B, N] float32 scores of the batch (deterministic, no gradient)."""
    return teacher_outputs(teacher, params, batch)["teacher_scores"]


def make_step_fn(model, cfg: TrainConfig, tx, schedule=None, mesh=None, teacher: Teacher | None = None
                 ) -> Callable:
    """The pure (un-jitted) ``train_step(state, batch[, teacher_params]) -> (state, metrics)``.

    ``model``, ``tx``, ``schedule``: one each, or dicts by student name when ``cfg.students`` is set
    (:func:`multi_student_step_fn`; :func:`joint_student_step_fn` when a student learns from a peer). With ``teacher`` (online distillation; a frozen model of any kind) the step
    takes the teacher's frozen parameters as a third argument, runs the teacher on the batch (its own token
    groups, or the student's when the layouts agree) and uses its scores as ``teacher_scores`` (also returned as
    the metric ``teacher_scores`` [B, N]) and, when an objective asks, its in-batch scores, vectors or hidden
    states (:func:`teacher_outputs`); the teacher is never differentiated.

    Raises:
      ConfigError: an objective asks the teacher for what it cannot give (:func:`objectives.check_teacher`).
    """
    if any(s.peer for s in cfg.students):
        inner = joint_student_step_fn(model, cfg, tx, schedule)
    elif cfg.students:
        inner = multi_student_step_fn(model, cfg, tx, schedule, mesh)
    else:
        inner = student_step_fn(model, cfg, tx, schedule, mesh)
    needs = objectives.TeacherNeeds()
    for name, sub in cfg.student_configs():
        terms = sub.loss.terms()
        objectives.check_teacher(terms, get_kind(sub.model.kind), teacher and get_kind(teacher.kind),
                                 model[name] if cfg.students else model, teacher and teacher.model,
                                 sub.optim.grad_accum)
        wanted = objectives.teacher_needs(terms)
        needs = objectives.TeacherNeeds(needs.in_batch or wanted.in_batch, needs.reps or wanted.reps,
                                        tuple(sorted(set(needs.layers) | set(wanted.layers))))
    own_groups = () if teacher is None else tuple(TEACHER_PREFIX + g for g in get_kind(teacher.kind).groups)

    def train_step(state: TrainState, batch: dict[str, Any], teacher_params=None):
        train_step.traces += 1  # Python runs only while jax traces: one trace per compiled shape
        batch = {n: v for n, v in batch.items() if n not in HOST_ONLY_KEYS}
        if teacher is None:
            return inner(state, batch)
        fields = teacher_outputs(teacher, teacher_params, batch, needs)
        batch = {**{n: v for n, v in batch.items() if n not in own_groups}, **fields}
        new_state, metrics = inner(state, batch)
        return new_state, {**metrics, "teacher_scores": fields["teacher_scores"]}

    train_step.traces = 0
    return train_step


def compile_train_step(model, cfg: TrainConfig, tx, mesh, shardings: TrainState, schedule=None,
                       donate: bool = True, teacher: Teacher | None = None):
    """``jax.jit`` of the step with explicit shardings: state as born, batch over the batch axes, the online
    teacher's parameters with their own shardings, metrics replicated; the input state is donated (its buffers
    are reused for the new state). The jitted function's ``__wrapped__.traces`` counts its compilations."""
    step = make_step_fn(model, cfg, tx, schedule, mesh, teacher)
    in_shardings = (shardings, distributed.batch_sharding(mesh))
    if teacher is not None:
        in_shardings += (teacher.shardings,)
    return jax.jit(step, in_shardings=in_shardings, out_shardings=(shardings, distributed.replicated(mesh)),
                   donate_argnums=(0,) if donate else ())
