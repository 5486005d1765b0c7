"""Listwise losses over each query's candidate list: KL, ListNet, InfoNCE (+ PLD and CPRD in ranking.py).

Calling convention: ``loss(student_scores [B, N], teacher_scores [B, N], mask [B, N], **hyperparameters)``;
column 0 is the positive where a loss needs one. Reduction: mean over the queries (rows) that have at least one
real candidate (InfoNCE: whose positive is real).

In-batch negatives (InfoNCE, graded BCE) use ONE convention: the extra candidates come as
``in_batch_scores [B, M]`` (query b scored against M more candidates, e.g. every candidate of the global batch,
flattened query-major) with ``in_batch_mask [B, M]`` marking which of them count as negatives. They are appended
after the query's own N candidates, so the positive stays at column 0. Build the mask with
:func:`in_batch_negative_mask`, which removes each query's own candidates (already among its N columns).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from distill_jax.losses.masking import (as_bool, check_scores, masked_log_softmax, masked_mean,
                                         zero_padding)
from distill_jax.registry import losses


def in_batch_negative_mask(candidate_mask: jax.Array, num_queries: int, query_offset: int | jax.Array = 0
                           ) -> jax.Array:
    """Which columns of a query-major in-batch score matrix are negatives for each query.

    Candidate ``k`` of query ``q`` sits at flat column ``q * N + k``. Query ``b`` (global index
    ``query_offset + b``) must not see its own candidates twice, so they are removed.

    Args:
      candidate_mask: [Q, N] real candidates of all Q queries whose candidates form the columns.
      num_queries: B, the number of rows (queries) being scored (B <= Q).
      query_offset: global index of row 0 (a device's first query under data parallelism).
    Returns:
      [B, Q * N] bool.
    """
    q, n = candidate_mask.shape
    owner = jnp.repeat(jnp.arange(q), n)  # [Q*N] which query each column belongs to
    rows = query_offset + jnp.arange(num_queries)
    return (owner[None, :] != rows[:, None]) & as_bool(candidate_mask, candidate_mask).reshape(1, q * n)


def append_in_batch(scores: jax.Array, mask: jax.Array, in_batch_scores: jax.Array | None,
                    in_batch_mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """``[B, N]`` own candidates followed by ``[B, M]`` in-batch ones -> ``[B, N + M]`` (see module docstring)."""
    if in_batch_scores is None:
        if in_batch_mask is not None:
            raise ValueError("in_batch_mask was given without in_batch_scores")
        return scores, mask
    if jnp.ndim(in_batch_scores) != 2 or in_batch_scores.shape[0] != scores.shape[0]:
        raise ValueError(f"in_batch_scores must be [B, M] with B = {scores.shape[0]}, got {jnp.shape(in_batch_scores)}")
    extra_mask = as_bool(in_batch_mask, in_batch_scores)
    return (jnp.concatenate([scores, in_batch_scores.astype(scores.dtype)], axis=-1),
            jnp.concatenate([mask, extra_mask], axis=-1))


def minmax_normalize(scores: jax.Array, mask: jax.Array, eps: float = 1e-8) -> jax.Array:
    """Per-row ``(s - min) / (max - min + eps)`` over real entries (PyLate's ``normalize_scores``). [B, N] -> [B, N]."""
    safe = zero_padding(scores, mask)
    low = jnp.min(jnp.where(mask, safe, jnp.inf), axis=-1, keepdims=True)
    high = jnp.max(jnp.where(mask, safe, -jnp.inf), axis=-1, keepdims=True)
    real_row = jnp.any(mask, axis=-1, keepdims=True)
    low = jnp.where(real_row, low, 0.0)
    high = jnp.where(real_row, high, 0.0)
    return jnp.where(mask, (safe - low) / (high - low + eps), 0.0)


@losses.register("kl")
def kl(student_scores: jax.Array, teacher_scores: jax.Array, mask: jax.Array | None = None, *,
       temperature: float = 1.0, teacher_temperature: float | None = None, t2_scaling: bool = False,
       normalize_student: bool = False, reverse: bool = False) -> jax.Array:
    """Listwise KL distillation, ``KL(softmax(t / T_t) || softmax(s / T))`` per query, mean over queries.

    The ColBERTv2 (Santhanam et al. 2022, arXiv:2112.01488), RocketQAv2 (Ren et al. 2021, arXiv:2110.07367) and
    PyLate listwise loss. The teacher distribution is the target; no gradient is stopped here (the trainer decides
    whether the teacher is trainable).

    Args:
      student_scores: [B, N].
      teacher_scores: [B, N].
      mask: [B, N] real candidates.
      temperature: T, dividing the student scores (and the teacher's unless ``teacher_temperature`` is set).
      teacher_temperature: T_t (default: T).
      t2_scaling: multiply by T^2 (Hinton et al. 2015), as sentence-transformers' ``DistillKLDivLoss`` always
        does; off by default so the loss value does not depend on how T is factored (identical at T = 1).
      normalize_student: min-max normalise each row of student scores first, as PyLate ``Distillation``
        (``normalize_scores=True``) does; off by default because it caps the student's logit range at [0, 1]
        and so bounds how peaked its distribution can get.
      reverse: ``KL(softmax(s / T) || softmax(t / T_t))`` instead, the student's distribution weighing the log
        ratio: RocketQAv2's L_KL (its eq. 4, retriever || re-ranker), whose two sides both train.
    Returns:
      scalar.
    """
    check_scores("kl", student_scores, teacher_scores, mask)
    mask = as_bool(mask, student_scores)
    teacher_temperature = temperature if teacher_temperature is None else teacher_temperature
    student = minmax_normalize(student_scores, mask) if normalize_student else zero_padding(student_scores, mask)
    log_p_student = masked_log_softmax(student / temperature, mask)
    log_p_teacher = masked_log_softmax(zero_padding(teacher_scores, mask) / teacher_temperature, mask)
    if reverse:
        p_student = jnp.where(mask, jnp.exp(log_p_student), 0.0)
        per_query = jnp.sum(p_student * (log_p_student - log_p_teacher), axis=-1)
    else:
        p_teacher = jnp.where(mask, jnp.exp(log_p_teacher), 0.0)
        per_query = jnp.sum(p_teacher * (log_p_teacher - log_p_student), axis=-1)
    loss = masked_mean(per_query, jnp.any(mask, axis=-1))
    return loss * temperature**2 if t2_scaling else loss


@losses.register("listnet")
def listnet(student_scores: jax.Array, teacher_scores: jax.Array, mask: jax.Array | None = None, *,
            temperature: float = 1.0) -> jax.Array:
    """ListNet (Cao et al. 2007, "Learning to Rank: From Pairwise Approach to Listwise Approach"): top-one
    cross-entropy ``-sum_k softmax(t/T)_k log softmax(s/T)_k`` per query, mean over queries.

    Equals :func:`kl` plus the teacher's entropy (a constant for the student, so the same gradient).

    Args:
      student_scores: [B, N].
      teacher_scores: [B, N].
      mask: [B, N] real candidates.
      temperature: T on both sides (sentence-transformers' ``ListNetLoss`` has none, i.e. T = 1).
    Returns:
      scalar.
    """
    check_scores("listnet", student_scores, teacher_scores, mask)
    mask = as_bool(mask, student_scores)
    log_p_student = masked_log_softmax(zero_padding(student_scores, mask) / temperature, mask)
    log_p_teacher = masked_log_softmax(zero_padding(teacher_scores, mask) / temperature, mask)
    p_teacher = jnp.where(mask, jnp.exp(log_p_teacher), 0.0)
    per_query = -jnp.sum(p_teacher * log_p_student, axis=-1)
    return masked_mean(per_query, jnp.any(mask, axis=-1))


@losses.register("infonce")
def infonce(student_scores: jax.Array, teacher_scores: jax.Array | None = None, mask: jax.Array | None = None, *,
            temperature: float = 1.0, in_batch_scores: jax.Array | None = None,
            in_batch_mask: jax.Array | None = None) -> jax.Array:
    """Contrastive InfoNCE with hard labels (van den Oord et al. 2018, arXiv:1807.03748; DPR, Karpukhin et al.
    2020): ``-log softmax(s / T)_0`` per query, the positive at column 0, mean over queries whose positive is real.

    The no-distillation baseline: ``teacher_scores`` is accepted and ignored. With ``in_batch_scores`` the
    softmax runs over the query's own N candidates followed by the M in-batch ones (module docstring).
    sentence-transformers' ``MultipleNegativesRankingLoss`` ``scale`` is ``1 / T``.

    Args:
      student_scores: [B, N], column 0 the positive.
      teacher_scores: ignored (may be None).
      mask: [B, N] real candidates.
      temperature: T.
      in_batch_scores: optional [B, M] scores of query b against M extra candidates.
      in_batch_mask: optional [B, M] which of them count as negatives (see :func:`in_batch_negative_mask`).
    Returns:
      scalar.
    """
    check_scores("infonce", student_scores, None, mask)
    mask = as_bool(mask, student_scores)
    logits, full_mask = append_in_batch(zero_padding(student_scores, mask), mask, in_batch_scores, in_batch_mask)
    log_p = masked_log_softmax(logits / temperature, full_mask)
    return masked_mean(-log_p[:, 0], mask[:, 0])
