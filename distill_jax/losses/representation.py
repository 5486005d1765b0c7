"""Losses on representations rather than scores: embedding alignment and masked-LM cross-entropy."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from distill_jax.losses.masking import masked_mean

IGNORE_INDEX = -100  # the Hugging Face label value for "no loss here"


def embedding_alignment(student_embeddings: jax.Array, teacher_embeddings: jax.Array,
                        mask: jax.Array | None = None, *, metric: str = "mse", eps: float = 1e-8) -> jax.Array:
    """Align student embeddings with a teacher's (TCT-ColBERT, Lin et al. 2021, arXiv:2010.11386; LEAF, Vujanic &
    Rueckstiess 2025, arXiv:2509.12539; sentence-transformers ``MSELoss``, Reimers & Gurevych 2020).

    ``metric="mse"``: mean over real rows and dimensions of ``(e_s - e_t)^2``; ``"cosine"``: mean over real rows of
    ``1 - cos(e_s, e_t)``. Same width D required (project the student first otherwise).

    Args:
      student_embeddings: [B, D]. teacher_embeddings: [B, D].
      mask: optional [B] real rows.
      metric: "mse" or "cosine".
      eps: norm floor for cosine (a zero vector has cosine 0, with a finite gradient).
    Returns:
      scalar.
    """
    if jnp.shape(student_embeddings) != jnp.shape(teacher_embeddings) or jnp.ndim(student_embeddings) != 2:
        raise ValueError(f"embedding_alignment: student {jnp.shape(student_embeddings)} and teacher "
                         f"{jnp.shape(teacher_embeddings)} embeddings must both be [B, D]")
    rows = (jnp.ones(student_embeddings.shape[:1], bool) if mask is None
            else jnp.broadcast_to(jnp.asarray(mask) != 0, student_embeddings.shape[:1]))
    s = jnp.where(rows[:, None], student_embeddings, 0.0)
    t = jnp.where(rows[:, None], teacher_embeddings, 0.0)
    if metric == "mse":
        return masked_mean((s - t) ** 2, jnp.broadcast_to(rows[:, None], s.shape))
    if metric == "cosine":
        norm = lambda x: jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1), eps * eps))  # noqa: E731
        cosine = jnp.sum(s * t, axis=-1) / (norm(s) * norm(t))
        return masked_mean(1.0 - cosine, rows)
    raise ValueError(f"embedding_alignment: metric must be 'mse' or 'cosine', got {metric!r}")


def mlm(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Masked-language-model cross-entropy, mean over labelled positions (labels != -100, and ``mask`` if given).

    Args:
      logits: [B, L, V] float.
      labels: [B, L] int token ids, -100 where no loss is taken (the Hugging Face convention).
      mask: optional [B, L] further positions to keep (e.g. the attention mask).
    Returns:
      scalar; 0 when no position is labelled.
    """
    if jnp.ndim(logits) != 3 or jnp.shape(labels) != jnp.shape(logits)[:2]:
        raise ValueError(f"mlm: logits must be [B, L, V] and labels [B, L], got {jnp.shape(logits)} and "
                         f"{jnp.shape(labels)}")
    valid = labels != IGNORE_INDEX
    if mask is not None:
        valid = valid & (jnp.asarray(mask) != 0)
    safe_logits = jnp.where(valid[..., None], logits, 0.0)
    log_p = jax.nn.log_softmax(safe_logits, axis=-1)
    target = jnp.clip(jnp.where(valid, labels, 0), 0, logits.shape[-1] - 1)
    nll = -jnp.take_along_axis(log_p, target[..., None], axis=-1)[..., 0]
    return masked_mean(nll, valid)
