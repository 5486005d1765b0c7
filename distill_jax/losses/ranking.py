"""Ranking-likelihood distillation: Plackett-Luce distillation (PLD) and contrastive partial ranking (CPRD).

Both read the teacher's scores as a *ranking* of the query's candidates and maximise the student's Plackett-Luce
likelihood of (part of) that ranking. A Plackett-Luce step "item r is chosen first among the items still left"
costs ``-log softmax(s / T)`` restricted to the remaining items, so both are built from one helper,
:func:`_suffix_nll`, which evaluates every step at once with the masked log-softmax ([B, N, N] work: N is the
candidate list, tens of items). Calling convention and reductions as in ``listwise.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from distill_jax.losses.masking import (as_bool, check_scores, masked_log_softmax, masked_mean, masked_softmax,
                                         zero_padding)
from distill_jax.registry import losses


def _teacher_order(teacher: jax.Array, mask: jax.Array, first: jax.Array | None = None) -> jax.Array:
    """Column indices sorted by descending teacher score, padded columns last, ``first`` columns before all.

    Args:
      teacher: [B, N] (padding zeroed). mask: [B, N] bool. first: optional [B, N] bool forced to the front.
    Returns:
      [B, N] int32 permutation (stable, so ties keep column order).
    """
    key = jnp.where(mask, -teacher, jnp.inf)
    if first is not None:
        key = jnp.where(first & mask, -jnp.inf, key)
    return jnp.argsort(key, axis=-1, stable=True)


def _suffix_nll(scores: jax.Array, mask: jax.Array) -> jax.Array:
    """``-log( exp(x_r) / sum_{l >= r, real} exp(x_l) )`` for every position r of an already ordered list.

    Args:
      scores: [B, N] logits in ranking order. mask: [B, N] real positions.
    Returns:
      [B, N]; 0 at padded positions.
    """
    n = scores.shape[-1]
    later = jnp.arange(n)[None, :] >= jnp.arange(n)[:, None]  # [r, l]: l is still left at step r
    step_mask = later[None] & mask[:, None, :]  # [B, r, l]
    logp = masked_log_softmax(jnp.broadcast_to(scores[:, None, :], step_mask.shape), step_mask)
    chosen = jnp.diagonal(logp, axis1=1, axis2=2)  # log-probability of choosing item r at step r
    return jnp.where(mask, -chosen, 0.0)


@losses.register("plackett_luce")
def plackett_luce(student_scores: jax.Array, teacher_scores: jax.Array, mask: jax.Array | None = None, *,
                  temperature: float = 1.0, positive_first: bool = True) -> jax.Array:
    """Plackett-Luce distillation, PLD (Bassam, Zhu & Bian 2025, "PLD: A Choice-Theoretic List-Wise Knowledge
    Distillation", arXiv:2506.12542), adapted from classes to a query's candidates.

    The teacher-optimal permutation ``pi`` puts the positive (column 0, the "true label") first and the other
    candidates in descending teacher score. Each step of the student's Plackett-Luce likelihood of ``pi`` is weighted
    by the teacher's confidence in the item chosen there:

        L_b = sum_k  softmax(t_b / T)_{pi_k} * ( log sum_{l >= k} exp(s_{b, pi_l} / T) - s_{b, pi_k} / T )

    over real candidates, mean over queries with a real candidate. The weights sum to 1, so the k = 1 term is a
    teacher-weighted cross-entropy on the positive; the last term is always 0.

    Args:
      student_scores: [B, N], column 0 the positive.
      teacher_scores: [B, N].
      mask: [B, N] real candidates.
      temperature: T on both sides.
      positive_first: put column 0 first whatever the teacher says (the paper's choice); False ranks purely by
        the teacher.
    Returns:
      scalar.
    """
    check_scores("plackett_luce", student_scores, teacher_scores, mask)
    mask = as_bool(mask, student_scores)
    student = zero_padding(student_scores, mask) / temperature
    teacher = zero_padding(teacher_scores, mask) / temperature
    first = (jnp.arange(mask.shape[-1]) == 0)[None, :] if positive_first else None
    order = _teacher_order(teacher, mask, first)
    weights = masked_softmax(teacher, mask)
    take = lambda x: jnp.take_along_axis(x, order, axis=-1)  # noqa: E731
    nll = _suffix_nll(take(student), take(mask))
    per_query = jnp.sum(take(weights) * nll, axis=-1)
    return masked_mean(per_query, jnp.any(mask, axis=-1))


@losses.register("cprd")
def cprd(student_scores: jax.Array, teacher_scores: jax.Array, mask: jax.Array | None = None, *,
         num_hard_negatives: int = 8, temperature: float = 1.0) -> jax.Array:
    """Contrastive partial ranking distillation (CPRD): only the teacher's order among the hard negatives.

    The hard negatives are the ``num_hard_negatives`` real negatives (columns 1..) the teacher scores highest,
    ``h_1 > h_2 > ... > h_k``. Each is contrasted, InfoNCE-style, with every negative the teacher ranks below it
    (the later hard negatives and all remaining "easy" negatives), i.e. the student's top-k partial Plackett-Luce
    likelihood of the teacher's negative ranking:

        L_b = (1/k) sum_{r=1..k} -log( exp(s_{h_r}/T) / sum_{n ranked >= r} exp(s_n/T) )

    The positive and the teacher's score *values* play no part: only the relative order among the negatives is
    distilled (pair it with InfoNCE or Margin-MSE for the positive). Mean over queries with a real negative.

    Args:
      student_scores: [B, N], column 0 the positive (ignored here).
      teacher_scores: [B, N].
      mask: [B, N] real candidates.
      num_hard_negatives: k, how many top teacher-ranked negatives have their position distilled (static).
      temperature: T.
    Returns:
      scalar.
    """
    check_scores("cprd", student_scores, teacher_scores, mask)
    if num_hard_negatives < 1:
        raise ValueError(f"cprd: num_hard_negatives must be >= 1, got {num_hard_negatives}")
    mask = as_bool(mask, student_scores)
    negatives = mask & (jnp.arange(mask.shape[-1]) > 0)[None, :]
    student = zero_padding(student_scores, negatives) / temperature
    order = _teacher_order(zero_padding(teacher_scores, negatives), negatives)
    take = lambda x: jnp.take_along_axis(x, order, axis=-1)  # noqa: E731
    sorted_real = take(negatives)
    nll = _suffix_nll(take(student), sorted_real)
    hard = sorted_real & (jnp.arange(mask.shape[-1]) < num_hard_negatives)[None, :]  # real ones sort first
    count = jnp.sum(hard, axis=-1)
    per_query = jnp.sum(jnp.where(hard, nll, 0.0), axis=-1) / jnp.maximum(count, 1)
    return masked_mean(per_query, count > 0)
