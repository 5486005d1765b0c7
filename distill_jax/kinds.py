"""One object per model kind: what a kind builds, how its batches are tokenised, and its forward pass.

    kind = kinds.get("colbert")
    model = build_model(kind.name, enc, **kind.model_options(cfg.model, cfg.data))
    spec = kind.run_token_spec(cfg.data)                   # tokenisation layout + lengths
    out = kind.forward(model, params, batch, rng=None)     # Forward(scores [B, N], ...)
    out = kind.forward(model, params, batch, capture=(0, 2))  # + hidden states after the embeddings, layer 2

Each forward maps ``(model, params, batch)`` to a :class:`Forward`: the [B, N] scores of every query against its
own candidates, optionally the [B, B*N] scores against every candidate of the batch (in-batch negatives), and the
vectors a regulariser needs (SPLADE). Under ``jax.jit`` over GLOBAL arrays (see :mod:`distill_jax.distributed`) the
batch axis is the global batch, however many devices hold it: in-batch negatives see the candidates of every
device and batch statistics (the FLOPS mean) are global, so results do not depend on the device count.

Each kind also names how later stages treat it: ``index``, the corpus index it retrieves with
(:data:`distill_jax.eval.retrieve.INDEXES`), and ``serving``, the layout it is exported in
(:data:`distill_jax.export.SERVING`); they dispatch through these names, never on the kind's name.

Adding a kind touches this module and :mod:`distill_jax.models` only (and eval / export only for a new index or
serving layout). The kind names are also listed, jax-free, in
:data:`distill_jax.config.STUDENT_KINDS` (configs load without jax).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from distill_jax import scoring
from distill_jax.models.colbert import ColBERTConfig

Array = jax.Array


class Forward(NamedTuple):
    """What a student forward returns.

    Attributes:
      scores: [B, N] float32 student scores of each query's own candidates.
      in_batch: [B, B*N] float32 scores of each query against every candidate of the batch (query-major:
        column ``q * N + k`` is candidate k of query q), or None when not requested.
      query_reps: [B, V] query vectors of the vector kinds, [B, Lq, D] token vectors of ColBERT (None for the
        cross-encoder).
      doc_reps: [B, N, V] document vectors of the vector kinds, [B, N, Ld, D] token vectors of ColBERT.
      hidden: the encoder's hidden states asked for with ``capture``: ``{group: {layer: [..., L, H]}}`` (the
        group's leading shape, e.g. [B, N] for "docs"), None when none was asked for.
    """

    scores: Array
    in_batch: Array | None = None
    query_reps: Array | None = None
    doc_reps: Array | None = None
    hidden: dict | None = None


@dataclasses.dataclass(frozen=True)
class TokenSpec:
    """How a model kind's batches are tokenised (by :func:`distill_jax.data.tokenize.encode_groups` and
    :func:`~distill_jax.data.tokenize.assemble_groups`): the layout and the lengths.

    Attributes:
      layout: "pairs" (cross-encoder: ``[CLS] q [SEP] p [SEP]``), "colbert" (markers, [MASK] expansion,
        punctuation mask) or "text" (``[CLS] text [SEP]``: SPLADE and dense).
      query_maxlen, doc_maxlen, pair_maxlen: token lengths.
      colbert: the ColBERT settings (markers, expansion; its lengths are the ones above) for ``layout="colbert"``.
    """

    layout: str
    query_maxlen: int = 32
    doc_maxlen: int = 180
    pair_maxlen: int = 256
    colbert: ColBERTConfig | None = None

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"TokenSpec.layout={self.layout!r}: use one of {LAYOUTS}")
        if self.layout == "colbert" and self.colbert is None:
            raise ValueError("TokenSpec(layout='colbert') needs colbert=ColBERTConfig(...)")

    @property
    def rooms(self) -> tuple[int, int]:
        """Text tokens kept of a query and of a document (the rest of the length is special tokens)."""
        if self.layout == "pairs":
            return self.pair_maxlen - 3, self.pair_maxlen - 3
        extra = 3 if self.layout == "colbert" else 2
        return self.query_maxlen - extra, self.doc_maxlen - extra


    def group_lengths(self, query_lengths: np.ndarray, doc_lengths: np.ndarray) -> dict[str, np.ndarray]:
        """Tokens before the padding of each token group that bucketing may shorten, from body lengths.

        Args:
          query_lengths, doc_lengths: int [K] full body token counts of K (query, candidate) pairs.

        Returns:
          ``{"pairs": [K]}`` (``[CLS] q [SEP] p [SEP]``, longest-first truncation), or ``{"query": [K], "docs":
          [K]}``; ColBERT queries are absent: their [MASK] padding to ``query_maxlen`` is part of the model.
        """
        q_room, d_room = self.rooms
        if self.layout == "pairs":
            return {"pairs": np.minimum(query_lengths + doc_lengths, q_room) + 3}
        extra = self.doc_maxlen - d_room
        out = {"docs": np.minimum(doc_lengths, d_room) + extra}
        if self.layout == "text":
            out["query"] = np.minimum(query_lengths, q_room) + 2
        return out

    def group_maxlen(self, group: str) -> int:
        """The padded length of ``group`` without bucketing."""
        return {"pairs": self.pair_maxlen, "query": self.query_maxlen, "docs": self.doc_maxlen}[group]


LAYOUTS = ("pairs", "colbert", "text")


def hidden_module(layer: int) -> str:
    """The encoder sub-module whose output is hidden state ``layer``, in Hugging Face's ``output_hidden_states``
    numbering: 0 = the embeddings' output, i = the output of encoder layer i (``layer_{i-1}``)."""
    return "embeddings" if layer == 0 else f"layer_{layer - 1}"


def _call(model, params, inputs: dict[str, Array], rng: Array | None, salt: int, **kwargs):
    if rng is None:
        return model.apply({"params": params}, inputs, deterministic=True, **kwargs)
    return model.apply({"params": params}, inputs, deterministic=False,
                       rngs={"dropout": jax.random.fold_in(rng, salt)}, **kwargs)


def _apply(model, params, inputs: dict[str, Array], rng: Array | None, salt: int,
           capture: tuple[int, ...] = ()):
    """``model.apply`` with dropout on when ``rng`` is given (a different stream per encoder call).

    With ``capture`` (hidden-state numbers, :func:`hidden_module`) it returns ``(output, {layer: [..., L, H]})``,
    the hidden states of the same pass (shaped like the group's ``input_ids`` plus the hidden axis)."""
    inputs = {k: inputs[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in inputs}
    if not capture:
        return _call(model, params, inputs, rng, salt)
    names = {hidden_module(i) for i in capture}
    out, state = _call(model, params, inputs, rng, salt, mutable=["intermediates"],
                       capture_intermediates=lambda mdl, method: method == "__call__" and mdl.name in names)
    found = state["intermediates"]["encoder"]
    shape = inputs["input_ids"].shape
    return out, {i: found[hidden_module(i)]["__call__"][0].reshape(*shape, -1) for i in capture}


def apply(model, params, inputs: dict[str, Array], rng: Array | None = None, salt: int = 0) -> Array:
    """One encoder call of a kind's model on a token group (``rng``: dropout on, stream ``salt``): what the
    forwards run, public for the objectives that encode a group on their own (SimCSE's two views)."""
    return _apply(model, params, inputs, rng, salt)


def _encode(model, params, batch, groups: tuple[str, ...], rng, capture) -> tuple[list[Array], dict | None]:
    """Each group's output (dropout stream = its position) and, with ``capture``, ``{group: {layer: ...}}``."""
    outs, hidden = [], {}
    for salt, g in enumerate(groups):
        out = _apply(model, params, batch[g], rng, salt, capture)
        if capture:
            out, hidden[g] = out
        outs.append(out)
    return outs, (hidden or None)


def _score_mask(tokens: dict[str, Array]) -> Array:
    return tokens.get("score_mask", tokens["attention_mask"])


def colbert_forward(model, params, batch: dict[str, Any], rng: Array | None = None,
                    in_batch: bool = False, capture: tuple[int, ...] = ()) -> Forward:
    """ColBERT: token vectors of queries [B, Lq, D] and documents [B, N, Ld, D] -> MaxSim [B, N] (the token
    vectors are returned too: self-distillation's token MSE reads them).

    Scoring masks: ``score_mask`` when the tokeniser provides it (expansion [MASK]s scored, punctuation not),
    else the attention mask.
    """
    (q, d), hidden = _encode(model, params, batch, ("query", "docs"), rng, capture)
    q_mask, d_mask = _score_mask(batch["query"]), _score_mask(batch["docs"])
    scores = scoring.maxsim(q, q_mask, d, d_mask)
    ib = None
    if in_batch:
        b, n, ld, dim = d.shape
        ib = scoring.maxsim_in_batch(q, q_mask, d.reshape(b * n, ld, dim), d_mask.reshape(b * n, ld))
    return Forward(scores, ib, q, d, hidden)


def vector_forward(model, params, batch: dict[str, Any], rng: Array | None = None,
                   in_batch: bool = False, capture: tuple[int, ...] = ()) -> Forward:
    """SPLADE and dense: one vector per query [B, V] and document [B, N, V] -> dot products [B, N].

    The vectors are returned too (SPLADE's regularisers act on them)."""
    (q, d), hidden = _encode(model, params, batch, ("query", "docs"), rng, capture)
    scores = scoring.dot(q, d)
    ib = scoring.dot_in_batch(q, d.reshape(-1, d.shape[-1])) if in_batch else None
    return Forward(scores, ib, q, d, hidden)


def cross_encoder_forward(model, params, batch: dict[str, Any], rng: Array | None = None,
                          in_batch: bool = False, capture: tuple[int, ...] = ()) -> Forward:
    """Cross-encoder: (query, passage) pairs [B, N, L] -> logits [B, N]."""
    if in_batch:
        raise ValueError("a cross-encoder scores given pairs only; in-batch negatives need separate encoders")
    (logits,), hidden = _encode(model, params, batch, ("pairs",), rng, capture)
    return Forward(logits, hidden=hidden)


@dataclasses.dataclass(frozen=True)
class Kind:
    """A model kind.

    Attributes:
      name: the registered model name (``distill_jax.registry.models``) and ``model.kind`` of a config.
      layout: the tokenisation layout (:class:`TokenSpec`).
      forward: ``(model, params, batch, rng=None, in_batch=False, capture=()) -> Forward`` (``capture``:
        hidden-state numbers to return in ``Forward.hidden``, see :func:`hidden_module`).
      options: ``(model_cfg, data_cfg) -> build_model keyword options`` (ColBERT settings, SPLADE chunking,
        dense pooling and projection).
      nonnegative_scores: scores are dot products of non-negative vectors (SPLADE): pointwise targets below 0
        cannot be reached.
      sparse: the kind's vectors take SPLADE's sparsity regularisers.
      token_vectors: its ``query_reps`` / ``doc_reps`` are one vector per token (ColBERT), which token-level
        objectives (self-distillation's ``token_mse``) compare.
      index: the corpus index it retrieves with, a name in :data:`distill_jax.eval.retrieve.INDEXES` ("tokens":
        a ColBERT token store and MaxSim, "sparse": a CSR matrix, "dense": one vector per text); None: it scores
        given (query, passage) pairs only, so it reranks and cannot index a corpus.
      serving: its native serving layout, a name in :data:`distill_jax.export.SERVING` (the library that loads
        the exported directory).
    """

    name: str
    layout: str
    forward: Callable[..., Forward]
    options: Callable[[Any, Any], dict] = lambda model_cfg, data_cfg: {}
    nonnegative_scores: bool = False
    sparse: bool = False
    token_vectors: bool = False
    index: str | None = None
    serving: str = ""

    @property
    def scores_pairs(self) -> bool:
        """It scores (query, passage) pairs jointly (a cross-encoder) instead of encoding each side alone."""
        return self.layout == "pairs"

    @property
    def groups(self) -> tuple[str, ...]:
        """The token groups a batch of this kind holds (the rest of the batch contract is common)."""
        return ("pairs",) if self.layout == "pairs" else ("query", "docs")

    def model_options(self, model_cfg, data_cfg) -> dict:
        """Keyword options of :func:`distill_jax.models.build_model` for this kind."""
        return self.options(model_cfg, data_cfg)

    def token_spec(self, query_maxlen: int, doc_maxlen: int, pair_maxlen: int,
                   colbert: ColBERTConfig | None = None) -> TokenSpec:
        """How batches of this kind are tokenised at these lengths (ColBERT: ``colbert``'s markers and expansion,
        default ColBERTConfig(), with the lengths given here)."""
        if self.layout == "colbert":
            colbert = dataclasses.replace(colbert or ColBERTConfig(), query_maxlen=query_maxlen,
                                          doc_maxlen=doc_maxlen)
        return TokenSpec(self.layout, query_maxlen, doc_maxlen, pair_maxlen,
                         colbert if self.layout == "colbert" else None)

    def run_token_spec(self, data_cfg) -> TokenSpec:
        """:meth:`token_spec` at a run's lengths (``data.query_maxlen``, ``doc_maxlen``, ``pair_maxlen``)."""
        return self.token_spec(data_cfg.query_maxlen, data_cfg.doc_maxlen, data_cfg.pair_maxlen)


def colbert_config(model_cfg, data_cfg) -> ColBERTConfig:
    """The one place a run's :class:`ColBERTConfig` is built: projection size from the model config, lengths from
    the data config, markers and expansion at their ColBERT defaults."""
    return ColBERTConfig(dim=model_cfg.colbert_dim, query_maxlen=data_cfg.query_maxlen,
                         doc_maxlen=data_cfg.doc_maxlen)


KINDS: dict[str, Kind] = {
    "cross_encoder": Kind("cross_encoder", "pairs", cross_encoder_forward, serving="cross_encoder"),
    "colbert": Kind("colbert", "colbert", colbert_forward,
                    options=lambda m, d: {"colbert": colbert_config(m, d)}, token_vectors=True, index="tokens",
                    serving="pylate"),
    "splade": Kind("splade", "text", vector_forward, options=lambda m, d: {"chunk_size": m.splade_chunk_size,
                                         "argmax_head": m.splade_argmax_head},
                   nonnegative_scores=True, sparse=True, index="sparse", serving="sparse_encoder"),
    "dense": Kind("dense", "text", vector_forward,
                  options=lambda m, d: {"pooling": m.dense_pooling, "projection_dim": m.dense_projection_dim,
                                        "normalize": m.dense_normalize},
                  index="dense", serving="sentence_transformer"),
}


def get(name: str) -> Kind:
    """The kind called ``name``; an unknown name fails listing the known ones."""
    try:
        return KINDS[name]
    except KeyError:
        raise KeyError(f"unknown model kind {name!r}; known: {', '.join(sorted(KINDS))}") from None


def forward(kind: str, model, params, batch: dict[str, Any], rng: Array | None = None,
            in_batch: bool = False, capture: tuple[int, ...] = ()) -> Forward:
    """Runs the forward of model ``kind``; ``rng`` turns dropout on (training), None = deterministic."""
    return get(kind).forward(model, params, batch, rng=rng, in_batch=in_batch, capture=capture)


__all__ = ["Forward", "TokenSpec", "LAYOUTS", "Kind", "KINDS", "get", "forward", "apply", "colbert_config",
           "colbert_forward", "vector_forward", "cross_encoder_forward", "hidden_module"]
