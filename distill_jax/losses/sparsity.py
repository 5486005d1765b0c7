"""SPLADE regularisers (FLOPS, L1), their quadratic warm-up, and sparsity statistics.

Regularisers take the representations they act on, ``reps [B, V]`` (one non-negative |V|-vector per query or
document) and an optional row ``mask [B]`` (bool or float weights) so padded examples count for nothing; they are
registered in ``distill_jax.registry.regularizers``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from distill_jax.losses.masking import masked_mean
from distill_jax.registry import regularizers


def _row_weights(reps: jax.Array, mask: jax.Array | None) -> jax.Array:
    """[B] float row weights (1 for every row when ``mask`` is None)."""
    if jnp.ndim(reps) != 2:
        raise ValueError(f"regularisers take representations [B, V], got shape {jnp.shape(reps)}")
    if mask is None:
        return jnp.ones(reps.shape[:1], reps.dtype)
    if jnp.shape(mask) != reps.shape[:1]:
        raise ValueError(f"row mask shape {jnp.shape(mask)} != ({reps.shape[0]},): one weight per representation")
    return jnp.asarray(mask).astype(reps.dtype)


def _active_rows(reps: jax.Array, weights: jax.Array) -> jax.Array:
    """|reps| with rows of weight 0 replaced by 0 (double-where: garbage in padded rows cannot leak)."""
    return jnp.abs(jnp.where((weights > 0)[:, None], reps, 0.0))


@regularizers.register("flops")
def flops(reps: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """FLOPS regulariser (Paria et al. 2020, arXiv:2004.05665; SPLADE, Formal et al. 2021, arXiv:2107.05720).

    ``sum_j (sum_i w_i |r_ij| / sum_i w_i)^2``: the squared (weighted) mean activation of each vocabulary term over
    the batch, summed over the vocabulary. With 0/1 weights this is the mean over the real rows only.

    Args:
      reps: [B, V] representations.
      mask: optional [B] row weights / real-row mask.
    Returns:
      scalar; 0 when no row has weight.
    """
    weights = _row_weights(reps, mask)
    mean = jnp.sum(weights[:, None] * _active_rows(reps, weights), axis=0) / jnp.maximum(jnp.sum(weights), 1e-12)
    return jnp.sum(mean * mean)


@regularizers.register("l1")
def l1(reps: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """L1 regulariser: ``sum_i w_i sum_j |r_ij| / sum_i w_i`` (naver/splade applies it to queries).

    Args:
      reps: [B, V].
      mask: optional [B] row weights / real-row mask.
    Returns:
      scalar.
    """
    weights = _row_weights(reps, mask)
    per_row = jnp.sum(_active_rows(reps, weights), axis=-1)
    return jnp.sum(weights * per_row) / jnp.maximum(jnp.sum(weights), 1e-12)


def splade_lambda(step: jax.Array | int, lambda_max: float, warmup_steps: int | jax.Array) -> jax.Array:
    """Quadratic warm-up of a regulariser weight: ``lambda_max * min(1, step / warmup_steps)^2``.

    The SPLADE papers' schedule (naver/splade ``RegWeightScheduler``; sentence-transformers
    ``SpladeRegularizerWeightSchedulerCallback`` with ``scheduler_type="quadratic"``). ``warmup_steps <= 0`` means
    no warm-up. Works with a traced ``step`` inside ``jit``.

    Args:
      step: current optimiser step (0-based), python int or scalar array.
      lambda_max: final weight.
      warmup_steps: steps to reach ``lambda_max``.
    Returns:
      float32 scalar.
    """
    step = jnp.asarray(step, jnp.float32)
    warmup = jnp.asarray(warmup_steps, jnp.float32)
    ratio = jnp.where(warmup > 0, jnp.minimum(1.0, step / jnp.maximum(warmup, 1.0)), 1.0)
    return lambda_max * ratio * ratio


def splade_regularization_terms(query_reps: jax.Array, doc_reps: jax.Array, step: jax.Array | int, *,
                                lambda_query: float, lambda_doc: float, warmup_steps: int,
                                query_mask: jax.Array | None = None, doc_mask: jax.Array | None = None,
                                query_regularizer: str | None = "flops",
                                doc_regularizer: str | None = "flops") -> dict[str, jax.Array]:
    """The parts of :func:`splade_regularization`: ``{"reg_query", "lambda_query", "reg_doc", "lambda_doc"}``
    (a side whose regulariser is None or "" is left out). The train step logs them; the total is their weighted
    sum."""
    terms = {}
    if query_regularizer:
        terms["reg_query"] = regularizers.get(query_regularizer)(query_reps, query_mask)
        terms["lambda_query"] = splade_lambda(step, lambda_query, warmup_steps)
    if doc_regularizer:
        terms["reg_doc"] = regularizers.get(doc_regularizer)(doc_reps, doc_mask)
        terms["lambda_doc"] = splade_lambda(step, lambda_doc, warmup_steps)
    return terms


def splade_regularization(query_reps: jax.Array, doc_reps: jax.Array, step: jax.Array | int, *,
                          lambda_query: float, lambda_doc: float, warmup_steps: int,
                          query_mask: jax.Array | None = None, doc_mask: jax.Array | None = None,
                          query_regularizer: str | None = "flops", doc_regularizer: str | None = "flops") -> jax.Array:
    """``lambda_q(step) * R_q(queries) + lambda_d(step) * R_d(documents)`` with separate weights and regularisers.

    Documents of all candidate columns are regularised together, as sentence-transformers' ``SpladeLoss`` does
    (it concatenates positives and negatives); pass ``doc_reps`` flattened to [B * N, V] with ``doc_mask`` [B * N].

    Args:
      query_reps: [B, V]; doc_reps: [D, V]; step: optimiser step; lambda_query / lambda_doc: final weights;
      warmup_steps: quadratic warm-up length; query_mask / doc_mask: row masks; query_regularizer /
      doc_regularizer: names in ``distill_jax.registry.regularizers`` ("flops", "l1", or a user's; None: none).
    Returns:
      scalar.
    """
    t = splade_regularization_terms(query_reps, doc_reps, step, lambda_query=lambda_query, lambda_doc=lambda_doc,
                                    warmup_steps=warmup_steps, query_mask=query_mask, doc_mask=doc_mask,
                                    query_regularizer=query_regularizer, doc_regularizer=doc_regularizer)
    return sum(t[f"lambda_{side}"] * t[f"reg_{side}"] for side in ("query", "doc") if f"reg_{side}" in t)


def sparsity_stats(reps: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean number of non-zero terms per real representation (the "L0" that SPLADE papers report).

    Args:
      reps: [B, V].
      mask: optional [B] real rows (non-zero = real).
    Returns:
      float32 scalar: mean over real rows of ``#{j : r_ij != 0}``; 0 when no row is real.
    """
    weights = _row_weights(reps, mask)
    nonzero = jnp.sum(reps != 0, axis=-1).astype(jnp.float32)
    return masked_mean(nonzero, weights > 0)
