"""Objectives: the weighted terms of a run's loss, each declaring what it needs from the student.

A run's loss is ``sum_i weight_i * objective_i`` over ``LossConfig.terms()`` (the main score loss, then
``loss.objectives``), e.g. Margin-MSE on scores + 0.1 x MLM on masked query tokens + 0.1 x SimCSE on query
embeddings. An objective reads the student's outputs through :class:`Products`, which computes each product the
first time an objective asks for it and never otherwise: a run with no score objective runs no scoring forward, a
run without MLM never masks a token or projects onto the vocabulary.

    needs           what it is                                    computed by
    scores          [B, N] (+ [B, B*N] in-batch) student scores    the kind's forward (``distill_jax.kinds``)
    teacher         [B, N] teacher scores of the batch             the data, or the online teacher in the step
    token_logits    vocabulary logits at masked positions          a second encoder pass on masked tokens
    embeddings      one vector per query / document                encoder passes with their own dropout streams
    reps            the forward's vectors (ColBERT: per token)     the scoring forward
    hidden          encoder hidden states of chosen layers         the scoring forward (captured, same pass)
    teacher_reps,   the online teacher's vectors / hidden states   the teacher's forward in the step
    teacher_hidden  (its in-batch scores for ``teacher_in_batch``)  (:class:`TeacherNeeds`)

Every score loss of ``distill_jax.registry.losses`` is an objective (needs scores and teacher; ``hp`` may add
``in_batch: true`` for in-batch negatives, or ``teacher_in_batch: true`` to distil the online teacher's scores of
the whole batch, [B, N + B*N], as TCT-ColBERT does); the others are in :data:`OBJECTIVES`.

Hidden states are numbered as Hugging Face's ``output_hidden_states``: 0 = the embeddings' output, i = the
output of encoder layer i (:func:`distill_jax.kinds.hidden_module`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from distill_jax import kinds
from distill_jax.config import ConfigError, ObjectiveConfig
from distill_jax.losses import (append_in_batch, embedding_alignment, in_batch_negative_mask, mask_tokens,
                                masked_mean, mlm, simcse)
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


def _is_score(term: ObjectiveConfig) -> bool:
    return get(term.name).needs == ("scores", "teacher")


def _wants_teacher_in_batch(term: ObjectiveConfig) -> bool:
    return _is_score(term) and bool(term.hp.get("teacher_in_batch"))


def layer_pairs(term: ObjectiveConfig) -> tuple[tuple[int, int], ...]:
    """``hidden_mse``'s and ``lead``'s ``hp["layers"]``: (student hidden state, teacher hidden state) pairs.

    Raises:
      ConfigError: anything but a non-empty list of pairs of numbers >= 0.
    """
    pairs = term.hp.get("layers")
    try:
        out = tuple((int(a), int(b)) for a, b in pairs)
    except (TypeError, ValueError):
        out = ()
    if not out or min(min(p) for p in out) < 0:
        raise ConfigError(f"objective {term.key!r}: hp.layers = {pairs!r}; give (student, teacher) hidden-state "
                          "pairs, 0 = embeddings, i = layer i, e.g. {\"layers\": [[1, 3], [2, 6]]}")
    return out


def check_terms(terms, kind: kinds.Kind) -> None:
    """Fails before tracing when a term cannot run on this student kind (names the term and the fix)."""
    for t in terms:
        obj = get(t.name)
        if obj.needs != ("scores", "teacher") and not t.inputs:
            raise ConfigError(f"objective {t.name!r} reads a token group: set its inputs to one of {kind.groups}")
        if t.inputs and obj.needs != ("scores", "teacher") and t.inputs not in kind.groups:
            raise ConfigError(f"objective {t.key!r} reads {t.inputs!r}, but a {kind.name} batch holds "
                              f"{', '.join(kind.groups)}: set its inputs to one of those")
        if ("embeddings" in obj.needs or "token_logits" in obj.needs) and kind.layout == "pairs":
            raise ConfigError(f"objective {t.name!r} needs separate query/document encodings; a {kind.name} "
                              "scores pairs only")
        if (t.hp.get("in_batch") or _wants_teacher_in_batch(t)) and kind.layout == "pairs":
            raise ConfigError(f"objective {t.name!r} with in_batch needs independent encoders, not a {kind.name}")
        if "reps" in obj.needs and not kind.token_vectors:
            raise ConfigError(f"objective {t.key!r} compares token vectors; a {kind.name} has none (use a "
                              "ColBERT student, or hidden_mse on the encoders' hidden states)")
        if "hidden" in obj.needs:
            layer_pairs(t)


def wants_in_batch(terms) -> bool:
    return any(_is_score(t) and (t.hp.get("in_batch") or t.hp.get("teacher_in_batch")) for t in terms)


def student_layers(terms) -> tuple[int, ...]:
    """The student's hidden states the terms compare (captured in its scoring forward), sorted."""
    return tuple(sorted({s for t in terms if "hidden" in get(t.name).needs for s, _ in layer_pairs(t)}))


@dataclasses.dataclass(frozen=True)
class TeacherNeeds:
    """What the online teacher's forward must return beyond its [B, N] scores (``teacher_scores``).

    Attributes:
      in_batch: its [B, B*N] scores of every candidate of the batch (``teacher_in_batch``).
      reps: its output vectors (``teacher_reps_query``, ``teacher_reps_docs``; ColBERT: per token).
      layers: hidden states to capture (``teacher_hidden_<group>``, ``{layer: [..., L, H]}``).
    """

    in_batch: bool = False
    reps: bool = False
    layers: tuple[int, ...] = ()

    @property
    def beyond_scores(self) -> bool:
        return self.in_batch or self.reps or bool(self.layers)


def teacher_needs(terms) -> TeacherNeeds:
    """The teacher outputs ``terms`` read (each computed only when a listed term asks for it)."""
    return TeacherNeeds(
        in_batch=any(_wants_teacher_in_batch(t) for t in terms),
        reps=any({"teacher_reps", "teacher_embeddings"} & set(get(t.name).needs) for t in terms),
        layers=tuple(sorted({b for t in terms if "teacher_hidden" in get(t.name).needs
                             for _, b in layer_pairs(t)})))


def check_teacher(terms, student: kinds.Kind, teacher: kinds.Kind | None, student_model, teacher_model,
                  grad_accum: int) -> None:
    """Fails before tracing when the terms ask the (online) teacher for something it cannot give (names the
    term and the fix). ``teacher=None``: no online teacher."""
    for t in terms:
        needs = get(t.name).needs
        what = ("its in-batch scores" if _wants_teacher_in_batch(t) else "its token vectors"
                if "teacher_reps" in needs else "its embeddings" if "teacher_embeddings" in needs
                else "its hidden states" if "teacher_hidden" in needs else None)
        if what is None:
            continue
        if teacher is None:
            raise ConfigError(f"objective {t.key!r} needs the teacher's outputs ({what}), which only an online "
                              "teacher gives: set teacher.online=true (and teacher.model)")
        if _wants_teacher_in_batch(t):
            if teacher.layout == "pairs":
                raise ConfigError(f"objective {t.key!r}: teacher_in_batch needs a teacher with independent "
                                  f"encoders (colbert, splade, dense), not a {teacher.name}")
            if grad_accum > 1:
                raise ConfigError(f"objective {t.key!r}: teacher_in_batch scores the whole batch, which "
                                  f"optim.grad_accum={grad_accum} splits: set optim.grad_accum=1")
        if "teacher_reps" in needs and not teacher.token_vectors:
            raise ConfigError(f"objective {t.key!r} compares token vectors; a {teacher.name} teacher has none")
        if "teacher_embeddings" in needs and teacher.token_vectors:
            raise ConfigError(f"objective {t.key!r} aligns one vector per text; a {teacher.name} teacher has one "
                              "per token: use a dense or splade teacher, or token_mse for token vectors")
        if "teacher_hidden" in needs:
            if teacher.layout != student.layout:
                raise ConfigError(f"objective {t.key!r} compares hidden states token by token, but the "
                                  f"{teacher.name} teacher reads other tokens ({teacher.layout}) than the "
                                  f"{student.name} student ({student.layout}): use a teacher of the same layout")
            depth = {"student": student_model.cfg.num_layers, "teacher": teacher_model.cfg.num_layers}
            for a, b in layer_pairs(t):
                if a > depth["student"] or b > depth["teacher"]:
                    raise ConfigError(f"objective {t.key!r}: layers ({a}, {b}) but the student has hidden states "
                                      f"0..{depth['student']} and the teacher 0..{depth['teacher']}")
            widths = (student_model.cfg.hidden_size, teacher_model.cfg.hidden_size)
            if t.name == "hidden_mse" and widths[0] != widths[1]:
                raise ConfigError(f"objective {t.key!r}: the student's hidden size {widths[0]} differs from the "
                                  f"teacher's {widths[1]}; hidden_mse compares them directly (no learned "
                                  "projection): use a student of the teacher's width (teacher.init_student)")


class Products:
    """The student's outputs on one (micro-)batch, each computed at most once and only when asked for.

    Args:
      kind, model, params: the student.
      batch: the step's batch (token groups, ``teacher_scores``, ``mask``, ``weight``).
      rng: dropout key (None: deterministic; MLM then masks with a fixed key).
      mask: [B, N] float real candidates of real queries; weight: [B] float real queries.
      in_batch: the scoring forward also returns in-batch scores.
      capture: hidden states the scoring forward also returns (:func:`student_layers`).
    """

    def __init__(self, kind: kinds.Kind, model, params, batch: dict[str, Any], rng: Array | None, mask: Array,
                 weight: Array, in_batch: bool, capture: tuple[int, ...] = ()):
        self.kind, self.model, self.params, self.batch, self.rng = kind, model, params, batch, rng
        self.mask, self.weight, self.in_batch, self.capture = mask, weight, in_batch, capture
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
                                                               in_batch=self.in_batch, capture=self.capture))

    def teacher(self) -> Array:
        """[B, N] float32 teacher scores (the data's, or the online teacher's)."""
        if "teacher_scores" not in self.batch:
            raise ConfigError("an objective needs teacher scores but the batch has none: use a teacher-score "
                              "dataset or teacher.online=true")
        return self.batch["teacher_scores"].astype(jnp.float32)

    def teacher_output(self, field: str):
        """An output of the online teacher the step put in the batch (``teacher_in_batch`` [B, B*N],
        ``teacher_reps_<group>``, ``teacher_hidden_<group>`` {layer: [..., L, H]}); no gradient flows into it."""
        if field not in self.batch:
            raise ConfigError(f"an objective needs the online teacher's {field!r}, which the batch lacks: set "
                              "teacher.online=true")
        return jax.lax.stop_gradient(self.batch[field])

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
    """A score loss of the zoo on the student's [B, N] scores against the teacher's (optionally in-batch).

    ``hp["in_batch"]``: the student's in-batch scores go to the loss as in-batch negatives (InfoNCE).
    ``hp["teacher_in_batch"]``: student and online teacher both score every candidate of the batch and the loss
    compares the two [B, N + B*N] rows (own candidates first, then the other queries' ones; TCT-ColBERT's
    in-batch distillation, Lin et al. 2021)."""
    hp = dict(term.hp)
    in_batch, with_teacher = hp.pop("in_batch", False), hp.pop("teacher_in_batch", False)
    out = p.forward()
    ib_mask = in_batch_negative_mask(p.mask, p.mask.shape[0]) if in_batch or with_teacher else None
    if with_teacher:
        ib_mask = ib_mask & (p.weight > 0)[:, None]  # a padding query's row stays empty (out of the mean)
        scores, mask = append_in_batch(out.scores, p.mask > 0, out.in_batch, ib_mask)
        teacher, _ = append_in_batch(p.teacher(), p.mask > 0, p.teacher_output("teacher_in_batch"), ib_mask)
        return LOSSES.get(term.name)(scores, teacher, mask, **hp)
    if in_batch:
        hp["in_batch_scores"] = out.in_batch
        hp["in_batch_mask"] = ib_mask
    return LOSSES.get(term.name)(out.scores, p.teacher(), p.mask, **hp)


def _mlm(p: Products, term: ObjectiveConfig) -> Array:
    logits, labels = p.token_logits(term.inputs, **term.hp)
    return mlm(logits, labels)


def _simcse(p: Products, term: ObjectiveConfig) -> Array:
    rows = p.rows(term.inputs) > 0
    return simcse(p.embeddings(term.inputs, 0), p.embeddings(term.inputs, 1), rows, **term.hp)


def _embedding_alignment(p: Products, term: ObjectiveConfig) -> Array:
    """LEAF's alignment (Vujanic & Rueckstiess 2025, arXiv:2509.12539): the student's vector of each real row of
    ``inputs`` against the online teacher's vector of the same text (``metric`` "mse" or "cosine"); no scores,
    no judgments."""
    student = p.embeddings(term.inputs, 0)
    teacher = p.teacher_output(f"teacher_reps_{term.inputs}")
    teacher = _wide(teacher).reshape(-1, teacher.shape[-1])
    if student.shape != teacher.shape:
        raise ConfigError(f"objective {term.key!r}: student vectors {student.shape} vs the teacher's "
                          f"{teacher.shape}; alignment needs one vector per text of the same width (set the "
                          "student's dense_projection_dim to the teacher's width, or 0 for both)")
    return embedding_alignment(student, teacher, p.rows(term.inputs), **term.hp)


def _wide(x: Array) -> Array:
    """At least float32 (bf16 hidden states are compared in float32)."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _token_rows(p: Products, group: str) -> Array:
    """[R, L] bool: the scored tokens (``score_mask``, else attended) of the real rows of ``group``."""
    tokens = p.batch[group]
    scored = tokens.get("score_mask", tokens["attention_mask"])
    scored = scored.reshape(-1, scored.shape[-1]) > 0
    return scored & (p.rows(group) > 0)[:, None]


def _token_mse(p: Products, term: ObjectiveConfig) -> Array:
    """Self-distillation's token-embedding MSE: ``||s_t - t_t||^2`` (unit vectors: 2 - 2 cos) between the
    student's and the teacher's vector of each scored token of ``inputs``, mean over the tokens of real rows."""
    out = p.forward()
    student = out.query_reps if term.inputs == "query" else out.doc_reps
    teacher = p.teacher_output(f"teacher_reps_{term.inputs}")
    if student.shape != teacher.shape:
        raise ConfigError(f"objective {term.key!r}: student token vectors {student.shape} vs the teacher's "
                          f"{teacher.shape}; token_mse needs the same tokens and the same colbert_dim")
    dim = student.shape[-1]
    sq = jnp.sum((_wide(student).reshape(-1, dim) - _wide(teacher).reshape(-1, dim)) ** 2, axis=-1)
    return masked_mean(sq, _token_rows(p, term.inputs).reshape(-1))


def _hidden_mse(p: Products, term: ObjectiveConfig) -> Array:
    """TinyBERT's hidden-state MSE (Jiao et al. 2020, arXiv:1909.10351) without its projection: for each
    (student, teacher) pair of ``hp["layers"]``, the mean over hidden units and the attended tokens of real rows
    of ``(h_s - h_t)^2``; the mean over the pairs."""
    student = p.forward().hidden[term.inputs]
    teacher = p.teacher_output(f"teacher_hidden_{term.inputs}")
    att = p.batch[term.inputs]["attention_mask"]
    real = ((att.reshape(-1, att.shape[-1]) > 0) & (p.rows(term.inputs) > 0)[:, None]).reshape(-1)
    values = []
    for a, b in layer_pairs(term):
        hs, ht = _wide(student[a]), _wide(teacher[b])
        per_token = jnp.mean((hs - ht) ** 2, axis=-1).reshape(-1)
        values.append(masked_mean(per_token, real))
    return sum(values) / len(values)


def cls_attention_log(hidden: Array, attended: Array, temperature: float = 1.0) -> Array:
    """[R, L] log-distribution of each row's [CLS] state over its attended tokens, ``softmax(h_0 . h_j /
    (sqrt(H) T))``; ``hidden`` [R, L, H] (float32 or wider), ``attended`` [R, L] bool (padding gets -inf)."""
    logits = jnp.einsum("rh,rlh->rl", hidden[:, 0], hidden) / (jnp.sqrt(hidden.shape[-1]) * temperature)
    logits = jnp.where(attended, logits, -jnp.inf)
    return jax.nn.log_softmax(logits, axis=-1)


def _lead(p: Products, term: ObjectiveConfig) -> Array:
    """LEAD's layer-wise distillation (Sun et al. 2023, "LEAD: Liberal Feature-based Distillation for Dense
    Retrieval", arXiv:2212.05225): for each (student, teacher) layer pair of ``hp["layers"]``, KL(teacher ||
    student) between the two models' [CLS]-to-token attention distributions (:func:`cls_attention_log`) of each
    real row of ``inputs``, mean over the rows; the mean over the pairs. The distributions are over tokens, so
    student and teacher may differ in width (not in tokens)."""
    student = p.forward().hidden[term.inputs]
    teacher = p.teacher_output(f"teacher_hidden_{term.inputs}")
    att = p.batch[term.inputs]["attention_mask"]
    attended = att.reshape(-1, att.shape[-1]) > 0
    real = p.rows(term.inputs) > 0
    temperature = float(term.hp.get("temperature", 1.0))
    values = []
    for a, b in layer_pairs(term):
        hs, ht = _wide(student[a]), _wide(teacher[b])
        ls = cls_attention_log(hs.reshape(-1, *hs.shape[-2:]), attended, temperature)
        lt = cls_attention_log(ht.reshape(-1, *ht.shape[-2:]), attended, temperature)
        kl = jnp.sum(jnp.where(attended, jnp.exp(lt) * (lt - ls), 0.0), axis=-1)
        values.append(masked_mean(kl, real))
    return sum(values) / len(values)


OBJECTIVES.register("mlm", Objective("mlm", ("token_logits",), _mlm))
OBJECTIVES.register("lead", Objective("lead", ("hidden", "teacher_hidden"), _lead))
OBJECTIVES.register("token_mse", Objective("token_mse", ("reps", "teacher_reps"), _token_mse))
OBJECTIVES.register("hidden_mse", Objective("hidden_mse", ("hidden", "teacher_hidden"), _hidden_mse))
OBJECTIVES.register("simcse", Objective("simcse", ("embeddings",), _simcse))
OBJECTIVES.register("embedding_alignment", Objective("embedding_alignment", ("embeddings", "teacher_embeddings"),
                                                     _embedding_alignment))

__all__ = ["OBJECTIVES", "Objective", "Products", "TeacherNeeds", "check_teacher", "check_terms", "get",
           "cls_attention_log", "layer_pairs", "score_objective", "student_layers", "teacher_needs", "wants_in_batch"]
