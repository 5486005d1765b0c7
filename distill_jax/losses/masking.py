"""Masked reductions and a masked log-softmax shared by every loss.

Padding must change neither a loss value nor any gradient. Multiplying by 0 is not enough (0 * inf = nan, and a
padded logit of -inf poisons the gradient of a log-sum-exp), so every helper here *selects* with ``jnp.where`` and
applies the "double where": padded entries are replaced by a harmless 0 *before* any arithmetic, so the branch
``jnp.where`` discards never produces an inf/nan whose cotangent (0 * inf) would leak back.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def as_bool(mask: jax.Array, like: jax.Array) -> jax.Array:
    """Mask as bool, broadcast to ``like``'s shape (``None`` means every entry is real)."""
    if mask is None:
        return jnp.ones(jnp.shape(like), dtype=bool)
    mask = jnp.asarray(mask)
    mask = mask if mask.dtype == jnp.bool_ else mask != 0
    return jnp.broadcast_to(mask, jnp.shape(like))


def zero_padding(x: jax.Array, mask: jax.Array) -> jax.Array:
    """``x`` with padded entries replaced by 0 (the first half of the double-where)."""
    return jnp.where(mask, x, jnp.zeros_like(x))


def masked_mean(values: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean of ``values`` over entries where ``valid`` is true; 0 (with zero gradient) if none is.

    Args:
      values: [...] float.
      valid: [...] bool, same shape.
    Returns:
      scalar.
    """
    total = jnp.sum(jnp.where(valid, values, jnp.zeros_like(values)))
    count = jnp.sum(valid)
    return total / jnp.maximum(count, 1).astype(total.dtype)


def masked_log_softmax(logits: jax.Array, mask: jax.Array, axis: int = -1) -> jax.Array:
    """log-softmax over the real entries only; padded entries get log-probability 0 (callers must ignore them).

    Exactly the unpadded log-softmax on the real entries (same value, same gradient), finite for logits of
    any finite size, and 0 with zero gradient for a fully padded row.

    Args:
      logits: [..., N] float.
      mask: [..., N] bool.
    Returns:
      [..., N] log-probabilities (0 where ``mask`` is false).
    """
    safe = zero_padding(logits, mask)
    # Shift by the row maximum of the real entries (a constant for the gradient: log-softmax is shift-invariant).
    peak = jnp.max(jnp.where(mask, safe, -jnp.inf), axis=axis, keepdims=True)
    peak = jax.lax.stop_gradient(jnp.where(jnp.isfinite(peak), peak, jnp.zeros_like(peak)))
    shifted = jnp.where(mask, safe - peak, jnp.zeros_like(safe))
    total = jnp.sum(jnp.where(mask, jnp.exp(shifted), jnp.zeros_like(shifted)), axis=axis, keepdims=True)
    # total >= 1 on any row with a real entry (the peak contributes exp(0)); guard the fully padded row.
    log_total = jnp.log(jnp.where(total > 0, total, jnp.ones_like(total)))
    return jnp.where(mask, shifted - log_total, jnp.zeros_like(shifted))


def masked_softmax(logits: jax.Array, mask: jax.Array, axis: int = -1) -> jax.Array:
    """softmax over the real entries; exactly 0 on padded entries. Shapes as :func:`masked_log_softmax`."""
    logp = masked_log_softmax(logits, mask, axis)
    return jnp.where(mask, jnp.exp(logp), jnp.zeros_like(logp))


def check_scores(name: str, student: jax.Array, teacher: jax.Array | None, mask: jax.Array | None) -> None:
    """Fail early (at trace time) with the shapes when the calling convention is broken."""
    if jnp.ndim(student) != 2:
        raise ValueError(f"{name}: student_scores must be [B, N] (query b's N candidates), got shape "
                         f"{jnp.shape(student)}; vmap over extra leading axes")
    if teacher is not None and jnp.shape(teacher) != jnp.shape(student):
        raise ValueError(f"{name}: teacher_scores shape {jnp.shape(teacher)} != student_scores shape "
                         f"{jnp.shape(student)}; both must be [B, N] with the same candidate order")
    if mask is not None and jnp.shape(mask) != jnp.shape(student):
        raise ValueError(f"{name}: mask shape {jnp.shape(mask)} != student_scores shape {jnp.shape(student)}")
