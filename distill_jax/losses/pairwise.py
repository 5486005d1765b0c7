"""Pointwise and pairwise score losses: Margin-MSE, fixed-margin MSE, pointwise MSE.

Calling convention (every loss of the zoo): ``loss(student_scores [B, N], teacher_scores [B, N], mask [B, N],
**hyperparameters) -> scalar``; column 0 is the positive, columns 1.. the negatives, ``mask`` marks real candidates.
Reduction: mean over the real entries (real pairs for margin losses) of the whole batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from distill_jax.losses.masking import as_bool, check_scores, masked_mean, zero_padding
from distill_jax.registry import losses


def _pairs(scores: jax.Array, mask: jax.Array, all_pairs: bool) -> tuple[jax.Array, jax.Array]:
    """Score margins and which of them are real.

    Args:
      scores: [B, N] (padding already zeroed).
      mask: [B, N] bool.
      all_pairs: False -> positive minus each negative ([B, N-1]); True -> s_i - s_j for every i < j ([B, N, N]).
    Returns:
      (margins, valid) of the same shape.
    """
    if not all_pairs:
        return scores[:, :1] - scores[:, 1:], mask[:, :1] & mask[:, 1:]
    n = scores.shape[-1]
    upper = jnp.triu(jnp.ones((n, n), dtype=bool), k=1)
    valid = mask[:, :, None] & mask[:, None, :] & upper
    return scores[:, :, None] - scores[:, None, :], valid


@losses.register("margin_mse")
def margin_mse(student_scores: jax.Array, teacher_scores: jax.Array, mask: jax.Array | None = None, *,
               all_pairs: bool = False) -> jax.Array:
    """Margin-MSE (Hofstätter et al. 2020, "Improving Efficient Neural Ranking Models with Cross-Architecture
    Knowledge Distillation", arXiv:2010.02666).

    ``mean_{b,k} ((s_b0 - s_bk) - (t_b0 - t_bk))^2`` over real (positive, negative k) pairs. With ``all_pairs`` the
    margin of every real pair i < j of the list is matched instead (the all-pairs "mse_margin" of naver/splade's HF
    trainer); the sign of a pair does not matter for a squared error, so i < j counts each unordered pair once.

    Args:
      student_scores: [B, N] student scores, column 0 the positive.
      teacher_scores: [B, N] teacher scores.
      mask: [B, N] real candidates (None: all real).
      all_pairs: match all pairwise margins instead of positive-vs-negative ones.
    Returns:
      scalar; 0 when no pair is real.
    """
    check_scores("margin_mse", student_scores, teacher_scores, mask)
    mask = as_bool(mask, student_scores)
    s_margin, valid = _pairs(zero_padding(student_scores, mask), mask, all_pairs)
    t_margin, _ = _pairs(zero_padding(teacher_scores, mask), mask, all_pairs)
    diff = jnp.where(valid, s_margin - t_margin, 0.0)
    return masked_mean(diff * diff, valid)


@losses.register("fixed_margin_mse")
def fixed_margin_mse(student_scores: jax.Array, teacher_scores: jax.Array | None = None,
                     mask: jax.Array | None = None, *, margin: float = 1.0, all_pairs: bool = False) -> jax.Array:
    """Fixed-margin MSE: Margin-MSE with the teacher's margin replaced by a constant (no teacher needed).

    ``mean_{b,k} ((s_b0 - s_bk) - margin)^2`` over real (positive, negative) pairs. ``teacher_scores`` is accepted
    (and ignored) so the loss keeps the zoo's calling convention. With ``all_pairs`` every pair i < j is pushed to
    ``margin``, which only makes sense when the candidates are in the target order.

    Args:
      student_scores: [B, N], column 0 the positive.
      teacher_scores: ignored (may be None).
      mask: [B, N] real candidates.
      margin: target margin (1.0 by default).
      all_pairs: as in :func:`margin_mse`.
    Returns:
      scalar.
    """
    check_scores("fixed_margin_mse", student_scores, None, mask)
    mask = as_bool(mask, student_scores)
    s_margin, valid = _pairs(zero_padding(student_scores, mask), mask, all_pairs)
    diff = jnp.where(valid, s_margin - margin, 0.0)
    return masked_mean(diff * diff, valid)


def mse_targets(teacher_scores, teacher_scale: float = 1.0, teacher_shift: float = 0.0):
    """``teacher_scale * t + teacher_shift``: the targets of :func:`mse` (jax or numpy arrays alike)."""
    return teacher_scale * teacher_scores + teacher_shift


@losses.register("mse")
def mse(student_scores: jax.Array, teacher_scores: jax.Array, mask: jax.Array | None = None, *,
        teacher_scale: float = 1.0, teacher_shift: float = 0.0) -> jax.Array:
    """Pointwise MSE between student scores and (affinely mapped) teacher scores,
    ``mean_{b,k} (s_bk - (teacher_scale * t_bk + teacher_shift))^2`` over real candidates.

    The map matters when the student's score range cannot hold the teacher's: a SPLADE dot product is >= 0, while
    a cross-encoder's logits are negative for most negatives (about -7 on SciFact). Raw logits then ask for 0 on
    every negative, and zero activations are the nearest optimum (FLOPS drives SPLADE there and a relu that is off
    everywhere never comes back); shifting the targets to >= 0 (e.g. ``teacher_shift=8``) keeps the positives
    above the negatives in a range the student can reach. Pointwise MSE is the only loss of the zoo that needs it:
    margins and softmaxes do not see a shift.

    Args:
      student_scores: [B, N].
      teacher_scores: [B, N].
      mask: [B, N] real candidates.
      teacher_scale, teacher_shift: the target is ``teacher_scale * t + teacher_shift``.
    Returns:
      scalar.
    """
    check_scores("mse", student_scores, teacher_scores, mask)
    mask = as_bool(mask, student_scores)
    target = mse_targets(teacher_scores, teacher_scale, teacher_shift)
    diff = zero_padding(student_scores, mask) - zero_padding(target, mask)
    return masked_mean(diff * diff, mask)
