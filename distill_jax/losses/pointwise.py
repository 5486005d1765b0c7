"""Graded binary cross-entropy (BiXSE): teacher scores as probabilistic relevance targets."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from distill_jax.losses.masking import as_bool, check_scores, masked_mean, zero_padding
from distill_jax.losses.listwise import append_in_batch
from distill_jax.registry import losses


def bce_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Elementwise ``-(y log sigmoid(z) + (1 - y) log(1 - sigmoid(z)))``, stable for any finite z."""
    return jnp.maximum(logits, 0.0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))


@losses.register("graded_bce")
def graded_bce(student_scores: jax.Array, teacher_scores: jax.Array, mask: jax.Array | None = None, *,
               teacher_scale: float = 1.0, teacher_shift: float = 0.0, student_scale: float | jax.Array = 1.0,
               student_bias: float | jax.Array = 0.0, in_batch_scores: jax.Array | None = None,
               in_batch_mask: jax.Array | None = None) -> jax.Array:
    """Graded BCE, BiXSE (Tsirigotis et al. 2025, "BiXSE: Improving Dense Retrieval via Probabilistic Graded
    Relevance Distillation", arXiv:2508.06781).

    Each (query, candidate) pair is a binary event with soft target ``y = sigmoid(teacher_scale * t + teacher_shift)``
    and student logit ``z = student_scale * s + student_bias`` (BiXSE learns this scale and bias, SigLIP-style: pass
    them as traced values to train them). Optional in-batch candidates (``listwise`` module convention) are extra
    pairs with target 0. Loss: mean BCE over all real pairs.

    Args:
      student_scores: [B, N]. teacher_scores: [B, N]. mask: [B, N] real candidates.
      teacher_scale, teacher_shift: map teacher scores (e.g. cross-encoder logits) to probabilities.
      student_scale, student_bias: map student scores to logits.
      in_batch_scores: optional [B, M] scores against other queries' candidates (targets 0).
      in_batch_mask: optional [B, M] which of them count.
    Returns:
      scalar.
    """
    check_scores("graded_bce", student_scores, teacher_scores, mask)
    mask = as_bool(mask, student_scores)
    targets = jax.nn.sigmoid(teacher_scale * zero_padding(teacher_scores, mask) + teacher_shift)
    scores, full_mask = append_in_batch(zero_padding(student_scores, mask), mask, in_batch_scores, in_batch_mask)
    if in_batch_scores is not None:
        targets = jnp.concatenate([targets, jnp.zeros(in_batch_scores.shape, targets.dtype)], axis=-1)
    logits = student_scale * zero_padding(scores, full_mask) + student_bias
    return masked_mean(bce_with_logits(logits, targets), full_mask)
