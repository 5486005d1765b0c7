"""Objectives: the weighted terms of a run's loss, each declaring what it needs from the student.

A run's loss is ``sum_i weight_i * objective_i`` over ``LossConfig.terms()`` (the main score loss, then
``loss.objectives``), e.g. Margin-MSE on scores + 0.1 x MLM on masked query tokens + 0.1 x SimCSE on query
embeddings. An objective reads the student's outputs through :class:`Products`, which computes each product the
first time an objective asks for it and never otherwise: a run with no score objective runs no scoring forward, a
run without MLM never masks a token or projects onto the vocabulary.

    needs         what it is                                    computed by
    scores        [B, N] (+ [B, B*N] in-batch) student scores    the kind's forward (``distill_jax.kinds``)
    teacher       [B, N] teacher scores of the batch             the data, or the online teacher in the step
    token_logits  vocabulary logits at masked positions          a second encoder pass on masked tokens
    embeddings    one vector per query / document                encoder passes with their own dropout streams

Every score loss of ``distill_jax.registry.losses`` is an objective (needs scores and teacher; ``hp`` may add
``in_batch: true`` for in-batch negatives); the others are in :data:`OBJECTIVES`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from distill_jax import kinds
from distill_jax.config import ConfigError, ObjectiveConfig
from distill_jax.losses import embedding_alignment, in_batch_negative_mask, mask_tokens, mlm, simcse
from distill_jax.losses.representation import IGNORE_INDEX
from distill_jax.models.encoder import Encoder
from distill_jax.registry import Registry, losses as LOSSES

Array = jax.Array

# Dropout streams of the objectives' own encoder calls (the kinds' forwards use 0 for queries, 1 for documents).
MLM_SALT, EMBED_SALT = 100, 200


@dataclasses.dataclass(frozen=True)
class Objective:
    """A registered objective.

    Attributes:
      name: its name in configs.
      needs: what it reads ("scores", "teacher", "token_logits", "embeddings", "teacher_embeddings").
      fn: ``fn(products, term) -> scalar`` (``term``: its :class:`ObjectiveConfig`).
    """

    name: str
    needs: tuple[str, ...]
    fn: Callable[["Products", ObjectiveConfig], Array]


OBJECTIVES: Registry = Registry("objective")


def get(name: str) -> Objective:
    """The objective ``name``: one of :data:`OBJECTIVES` or a score loss of ``registry.losses``."""
    if name in OBJECTIVES:
        return OBJECTIVES.get(name)
    if name in LOSSES:
        return Objective(name, ("scores", "teacher"), score_objective)
    raise KeyError(f"unknown objective {name!r}; known: {', '.join(sorted(OBJECTIVES.names() + LOSSES.names()))}")


def check_terms(terms, kind: kinds.Kind) -> None:
    """Fails before tracing when a term cannot run on this student kind (names the term and the fix)."""
    for t in terms:
        obj = get(t.name)
        if obj.needs != ("scores", "teacher") and not t.inputs:
            raise ConfigError(f"objective {t.name!r} reads a token group: set its inputs to 'query' or 'docs'")
        if ("embeddings" in obj.needs or "token_logits" in obj.needs) and kind.layout == "pairs":
            raise ConfigError(f"objective {t.name!r} needs separate query/document encodings; a {kind.name} "
                              "scores pairs only")
        if t.hp.get("in_batch") and kind.layout == "pairs":
            raise ConfigError(f"objective {t.name!r} with in_batch needs independent encoders, not a {kind.name}")


def wants_in_batch(terms) -> bool:
    return any(get(t.name).needs == ("scores", "teacher") and t.hp.get("in_batch") for t in terms)


class Products:
    """The student's outputs on one (micro-)batch, each computed at most once and only when asked for.

    Args:
      kind, model, params: the student.
      batch: the step's batch (token groups, ``teacher_scores``, ``mask``, ``weight``).
      rng: dropout key (None: deterministic; MLM then masks with a fixed key).
      mask: [B, N] float real candidates of real queries; weight: [B] float real queries.
      in_batch: the scoring forward also returns in-batch scores.
    """

    def __init__(self, kind: kinds.Kind, model, params, batch: dict[str, Any], rng: Array | None, mask: Array,
                 weight: Array, in_batch: bool):
        self.kind, self.model, self.params, self.batch, self.rng = kind, model, params, batch, rng
        self.mask, self.weight, self.in_batch = mask, weight, in_batch
        self._memo: dict[Any, Any] = {}

    def _once(self, key, make):
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    @property
    def has_forward(self) -> bool:
        return "forward" in self._memo

    def forward(self) -> kinds.Forward:
        """The kind's scoring forward (scores [B, N], in-batch scores, SPLADE vectors)."""
        return self._once("forward", lambda: self.kind.forward(self.model, self.params, self.batch, rng=self.rng,
                                                               in_batch=self.in_batch))

    def teacher(self) -> Array:
        """[B, N] float32 teacher scores (the data's, or the online teacher's)."""
        if "teacher_scores" not in self.batch:
            raise ConfigError("an objective needs teacher scores but the batch has none: use a teacher-score "
                              "dataset or teacher.online=true")
        return self.batch["teacher_scores"].astype(jnp.float32)

    def rows(self, group: str) -> Array:
        """[R] float weights of a group's flattened rows: real queries, or real candidates of real queries."""
        return self.weight if group == "query" else self.mask.reshape(-1)

    def _tokens(self, group: str) -> dict[str, Array]:
        tokens = self.batch[group]
        length = tokens["input_ids"].shape[-1]
        return {k: v.reshape(-1, length) for k, v in tokens.items()}

    def token_logits(self, group: str, probability: float = 0.15, mask_token_id: int = 103,
                     first_text_id: int = 999) -> tuple[Array, Array]:
        """MLM: mask text tokens of ``group``, re-encode, project onto the vocabulary at (up to) twice the expected
        number of masked positions per row, so logits are [R, K, V] with K << L, never [R, L, V].

        Maskable tokens are attended ids >= ``first_text_id`` of real rows (BERT vocabularies: 999, below it
        [PAD], [unusedN], [CLS], [SEP], [MASK], ColBERT's markers and query-expansion [MASK]s).

        Returns:
          (logits [R, K, V] float32, labels [R, K] with ``IGNORE_INDEX`` where no loss is taken).
        """
        def make():
            tokens = self._tokens(group)
            ids, att = tokens["input_ids"], tokens["attention_mask"]
            length = ids.shape[-1]
            maskable = (att > 0) & (ids >= first_text_id) & (self.rows(group) > 0)[:, None]
            key = jax.random.fold_in(self.rng if self.rng is not None else jax.random.key(0), MLM_SALT)
            masked, labels = mask_tokens(jax.random.fold_in(key, 0 if group == "query" else 1), ids, maskable,
                                         probability=probability, mask_token_id=mask_token_id)
            k = min(length, max(1, math.ceil(2 * probability * length)))
            # The K masked positions of each row, masked ones first (stable: in position order).
            slots = jnp.argsort((labels == IGNORE_INDEX).astype(jnp.int32), axis=-1, stable=True)[:, :k]
            hidden = self._hidden(masked, att, jax.random.fold_in(key, 2 if group == "query" else 3))
            picked = jnp.take_along_axis(hidden, slots[..., None], axis=1)  # [R, K, H]
            return self._decode(picked), jnp.take_along_axis(labels, slots, axis=1)

        return self._once(("token_logits", group, probability, mask_token_id, first_text_id), make)

    def _hidden(self, ids: Array, att: Array, rng: Array) -> Array:
        """The student's encoder (its ``encoder`` parameters) on ``ids``: [R, L, H] last hidden states."""
        m = self.model
        encoder = Encoder(m.cfg, m.dtype, m.remat)
        dropout = self.rng is not None
        return encoder.apply({"params": self.params["encoder"]}, ids, att, None, not dropout,
                             rngs={"dropout": rng} if dropout else None)

    def _decode(self, hidden: Array) -> Array:
        """Vocabulary logits: the model's own MLM head (SPLADE) or the tied word embeddings (ColBERT, dense)."""
        m = self.model
        if hasattr(type(m), "mlm_logits"):
            return m.apply({"params": self.params}, hidden, method="mlm_logits").astype(jnp.float32)
        encoder = Encoder(m.cfg, m.dtype, m.remat)
        return encoder.apply({"params": self.params["encoder"]}, hidden, method="attend").astype(jnp.float32)

    def embeddings(self, group: str, stream: int = 0) -> Array:
        """[R, D] one vector per row of ``group`` under dropout stream ``stream`` (ColBERT: the mean of its
        scored token vectors; SPLADE and dense: the vector itself)."""
        def make():
            tokens = self._tokens(group)
            salt = EMBED_SALT + 2 * stream + (0 if group == "query" else 1)
            out = kinds.apply(self.model, self.params, tokens, self.rng, salt)
            if out.ndim == 3:  # token vectors [R, L, D]
                m = tokens.get("score_mask", tokens["attention_mask"]).astype(jnp.float32)[..., None]
                out = jnp.sum(out * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
            return out.astype(jnp.float32)

        return self._once(("embeddings", group, stream), make)


# ---------------------------------------------------------------------------------------------------------------
# The objectives
# ---------------------------------------------------------------------------------------------------------------


def score_objective(p: Products, term: ObjectiveConfig) -> Array:
    """A score loss of the zoo on the student's [B, N] scores against the teacher's (optionally in-batch)."""
    hp = dict(term.hp)
    in_batch = hp.pop("in_batch", False)
    out = p.forward()
    if in_batch:
        hp["in_batch_scores"] = out.in_batch
        hp["in_batch_mask"] = in_batch_negative_mask(p.mask, p.mask.shape[0])
    return LOSSES.get(term.name)(out.scores, p.teacher(), p.mask, **hp)


def _mlm(p: Products, term: ObjectiveConfig) -> Array:
    logits, labels = p.token_logits(term.inputs, **term.hp)
    return mlm(logits, labels)


def _simcse(p: Products, term: ObjectiveConfig) -> Array:
    rows = p.rows(term.inputs) > 0
    return simcse(p.embeddings(term.inputs, 0), p.embeddings(term.inputs, 1), rows, **term.hp)


def _embedding_alignment(p: Products, term: ObjectiveConfig) -> Array:
    key = f"teacher_embeddings_{term.inputs}"
    if key not in p.batch:
        raise ConfigError(f"embedding_alignment on {term.inputs!r} needs the batch field {key!r} [R, D] "
                          "(teacher embeddings of the same rows)")
    target = jax.lax.stop_gradient(p.batch[key].astype(jnp.float32))
    return embedding_alignment(p.embeddings(term.inputs, 0), target, p.rows(term.inputs), **term.hp)


OBJECTIVES.register("mlm", Objective("mlm", ("token_logits",), _mlm))
OBJECTIVES.register("simcse", Objective("simcse", ("embeddings",), _simcse))
OBJECTIVES.register("embedding_alignment", Objective("embedding_alignment", ("embeddings", "teacher_embeddings"),
                                                     _embedding_alignment))

__all__ = ["OBJECTIVES", "Objective", "Products", "check_terms", "get", "score_objective", "wants_in_batch"]
