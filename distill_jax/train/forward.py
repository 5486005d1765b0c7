"""Student forward passes, one per model kind, from a training batch to relevance scores.

Each kind maps ``(model, params, batch)`` to a :class:`Forward`: the [B, N] scores of every query against its own
candidates, optionally the [B, B*N] scores against every candidate of the batch (in-batch negatives), and the
representations a regulariser needs (SPLADE). Kinds are found by name in :data:`FORWARDS`.

Under ``jax.jit`` over GLOBAL arrays (see :mod:`distill_jax.distributed`) the batch axis here is the global batch,
however many devices hold it: in-batch negatives see the candidates of every device and batch statistics (the
FLOPS mean) are global, so results do not depend on the device count. XLA inserts the collectives.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from distill_jax import scoring
from distill_jax.registry import Registry

Array = jax.Array

FORWARDS: Registry = Registry("forward")


class Forward(NamedTuple):
    """What a student forward returns.

    Attributes:
      scores: [B, N] float32 student scores of each query's own candidates.
      in_batch: [B, B*N] float32 scores of each query against every candidate of the batch (query-major:
        column ``q * N + k`` is candidate k of query q), or None when not requested.
      query_reps: [B, V] SPLADE query vectors (None for other kinds).
      doc_reps: [B, N, V] SPLADE document vectors (None for other kinds).
    """

    scores: Array
    in_batch: Array | None = None
    query_reps: Array | None = None
    doc_reps: Array | None = None


def _apply(model, params, inputs: dict[str, Array], rng: Array | None, salt: int) -> Array:
    """``model.apply`` with dropout on when ``rng`` is given (a different stream per encoder call)."""
    inputs = {k: inputs[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in inputs}
    if rng is None:
        return model.apply({"params": params}, inputs, deterministic=True)
    return model.apply({"params": params}, inputs, deterministic=False,
                       rngs={"dropout": jax.random.fold_in(rng, salt)})


def _score_mask(tokens: dict[str, Array]) -> Array:
    return tokens.get("score_mask", tokens["attention_mask"])


@FORWARDS.register("colbert")
def colbert_forward(model, params, batch: dict[str, Any], rng: Array | None = None,
                    in_batch: bool = False) -> Forward:
    """ColBERT: token vectors of queries [B, Lq, D] and documents [B, N, Ld, D] -> MaxSim [B, N].

    Scoring masks: ``score_mask`` when the tokeniser provides it (expansion [MASK]s scored, punctuation not),
    else the attention mask.
    """
    q = _apply(model, params, batch["query"], rng, 0)
    d = _apply(model, params, batch["docs"], rng, 1)
    q_mask, d_mask = _score_mask(batch["query"]), _score_mask(batch["docs"])
    scores = scoring.maxsim(q, q_mask, d, d_mask)
    ib = None
    if in_batch:
        b, n, ld, dim = d.shape
        ib = scoring.maxsim_in_batch(q, q_mask, d.reshape(b * n, ld, dim), d_mask.reshape(b * n, ld))
    return Forward(scores, ib)


def vector_forward(model, params, batch: dict[str, Any], rng: Array | None = None,
                   in_batch: bool = False) -> Forward:
    """SPLADE and dense: one vector per query [B, V] and document [B, N, V] -> dot products [B, N].

    The vectors are returned too (SPLADE's regularisers act on them)."""
    q = _apply(model, params, batch["query"], rng, 0)
    d = _apply(model, params, batch["docs"], rng, 1)
    scores = scoring.dot(q, d)
    ib = scoring.dot_in_batch(q, d.reshape(-1, d.shape[-1])) if in_batch else None
    return Forward(scores, ib, q, d)


FORWARDS.register("splade", vector_forward)
FORWARDS.register("dense", vector_forward)


@FORWARDS.register("cross_encoder")
def cross_encoder_forward(model, params, batch: dict[str, Any], rng: Array | None = None,
                          in_batch: bool = False) -> Forward:
    """Cross-encoder (teacher training): (query, passage) pairs [B, N, L] -> logits [B, N]."""
    if in_batch:
        raise ValueError("a cross-encoder scores given pairs only; in-batch negatives need separate encoders")
    return Forward(_apply(model, params, batch["pairs"], rng, 0))


def forward(kind: str, model, params, batch: dict[str, Any], rng: Array | None = None,
            in_batch: bool = False) -> Forward:
    """Runs the forward of model ``kind``; ``rng`` turns dropout on (training), None = deterministic."""
    return FORWARDS.get(kind)(model, params, batch, rng=rng, in_batch=in_batch)


def batch_keys(kind: str) -> tuple[str, ...]:
    """Token groups a kind reads from a batch (the rest of the contract is common to all kinds)."""
    return ("pairs",) if kind == "cross_encoder" else ("query", "docs")
