"""Losses on representations rather than scores: embedding alignment and masked-LM cross-entropy."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from distill_jax.losses.listwise import infonce
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


def mask_tokens(rng: jax.Array, input_ids: jax.Array, maskable: jax.Array, *, probability: float = 0.15,
                mask_token_id: int = 103) -> tuple[jax.Array, jax.Array]:
    """BERT-style masking for :func:`mlm`: each maskable position is replaced by ``mask_token_id`` with
    ``probability`` (all selected positions become [MASK]; no random-token or keep-as-is share).

    Args:
      rng: PRNG key (the masks are a pure function of it, whatever the sharding).
      input_ids: [..., L] int token ids.
      maskable: [..., L] bool, positions that may be masked (real text tokens: not padding or special tokens).
      probability: chance of each maskable position being masked.
      mask_token_id: the tokenizer's [MASK] id.
    Returns:
      (masked input ids [..., L], labels [..., L]: the original id where masked, ``IGNORE_INDEX`` elsewhere).
    """
    chosen = jax.random.bernoulli(rng, probability, jnp.shape(input_ids)) & maskable
    masked = jnp.where(chosen, jnp.asarray(mask_token_id, input_ids.dtype), input_ids)
    return masked, jnp.where(chosen, input_ids, IGNORE_INDEX)


def simcse(first: jax.Array, second: jax.Array, mask: jax.Array | None = None, *,
           temperature: float = 0.05) -> jax.Array:
    """Unsupervised SimCSE (Gao, Yao & Chen 2021, arXiv:2104.08821): two views of each text (two dropout
    passes) are positives, the other texts of the batch negatives; InfoNCE over cosine similarities / T.

    Args:
      first, second: [B, D] embeddings of the same B texts under two dropout masks.
      mask: optional [B] real rows (padding rows are neither anchors nor negatives).
      temperature: T (the paper's 0.05).
    Returns:
      scalar, mean over real rows.
    """
    if jnp.shape(first) != jnp.shape(second) or jnp.ndim(first) != 2:
        raise ValueError(f"simcse: both views must be [B, D], got {jnp.shape(first)} and {jnp.shape(second)}")
    rows = (jnp.ones(first.shape[:1], bool) if mask is None
            else jnp.broadcast_to(jnp.asarray(mask) != 0, first.shape[:1]))
    unit = lambda x: x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), 1e-24))  # noqa: E731
    dtype = jnp.promote_types(first.dtype, jnp.float32)  # float32 at least (float64 in x64 tests)
    a, b = unit(first.astype(dtype)), unit(second.astype(dtype))
    sim = a @ b.T  # [B, B]: row i's positive on the diagonal
    others = ~jnp.eye(len(rows), dtype=bool) & rows[None, :]
    return infonce(jnp.diagonal(sim)[:, None], None, rows[:, None], temperature=temperature,
                   in_batch_scores=sim, in_batch_mask=others)
