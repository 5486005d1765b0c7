"""The four model kinds over one encoder, built by name, initialised or loaded from Hugging Face checkpoints.

    model = build_model("colbert", EncoderConfig.from_pretrained_dir(path))
    params = load_pretrained("colbert", path)[1]
    vectors = model.apply({"params": params}, batch)           # pure function of (params, batch)
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from distill_jax.models.colbert import ColBERT, ColBERTConfig
from distill_jax.models.cross_encoder import CrossEncoder
from distill_jax.models.dense import DenseEncoder
from distill_jax.models.encoder import Encoder, EncoderConfig, check_token_ids
from distill_jax.models.hf import (import_params, merge_options, read_state_dict, resolve_checkpoint_dir,
                                   serving_options, transformer_dir)
from distill_jax.models.splade import Splade
from distill_jax.registry import models as MODELS

log = logging.getLogger(__name__)

__all__ = [
    "ColBERT", "ColBERTConfig", "CrossEncoder", "DenseEncoder", "Encoder", "EncoderConfig", "Splade",
    "build_model", "init_params", "load_pretrained", "check_token_ids", "select_layers", "MODEL_KINDS",
]

MODELS.register("cross_encoder", CrossEncoder)
MODELS.register("colbert", ColBERT)
MODELS.register("splade", Splade)
MODELS.register("dense", DenseEncoder)
MODEL_KINDS = ("cross_encoder", "colbert", "splade", "dense")


def build_model(kind: str, cfg: EncoderConfig, dtype: Any = jnp.float32, remat: bool = False,
                **options) -> nn.Module:
    """Builds a model kind by its registered name.

    ``options``: ``colbert=ColBERTConfig(...)`` for ColBERT; ``chunk_size`` for SPLADE; ``pooling``,
    ``projection_dim``, ``normalize`` for the dense student.
    """
    return MODELS.get(kind)(cfg, dtype=dtype, remat=remat, **options)


def dummy_batch(length: int = 8, batch: int = 1) -> dict[str, jax.Array]:
    """A shape-only batch for initialisation."""
    ids = jnp.zeros((batch, length), jnp.int32)
    return {"input_ids": ids, "attention_mask": jnp.ones_like(ids), "token_type_ids": ids}


def init_params(model: nn.Module, rng: jax.Array, length: int = 8) -> dict[str, Any]:
    """Fresh parameters (a plain nested dict of float32 arrays, logical-axis boxes removed)."""
    return nn.unbox(model.init(rng, dummy_batch(length))["params"])


def load_pretrained(kind: str, name_or_path: str, dtype: Any = jnp.float32, remat: bool = False,
                    seed: int = 0, allow_pickle: bool = False, fresh_head: tuple[float, float] | None = None,
                    **options) -> tuple[nn.Module, dict[str, Any]]:
    """Loads a checkpoint (local directory or hub id) as a model kind.

    Accepts plain Hugging Face directories and the serving layouts ``distill-jax export`` writes (and the public
    models in them): a PyLate ColBERT, a sentence-transformers SparseEncoder, CrossEncoder or SentenceTransformer
    (Transformer at the root or in the subfolder ``modules.json`` names, Pooling / Dense / Normalize modules).
    Build ``options`` the caller leaves out are taken from the directory (:func:`hf.serving_options`: ColBERT's
    lengths, markers and projection size; the dense student's pooling, projection and normalisation); options the
    caller passes win, with a warning where the directory says otherwise.

    Heads the checkpoint lacks (the classifier of a plain ``BertModel``, SPLADE's MLM transform,
    ColBERT's projection) are freshly initialised from ``seed`` and a warning says so; SPLADE's missing MLM head
    is the lexical head of ``fresh_head = (z, scale)`` (default ``splade.FRESH_HEAD_Z``, ``FRESH_HEAD_SCALE``).

    Returns:
      (model, params): ``model.apply({'params': params}, batch)`` runs it.
    """
    path = resolve_checkpoint_dir(name_or_path)
    cfg = EncoderConfig.from_pretrained_dir(transformer_dir(path))
    options = merge_options(serving_options(kind, path), options, source=path)
    model = build_model(kind, cfg, dtype=dtype, remat=remat, **options)
    fresh = init_params(model, jax.random.key(seed))
    params = import_params(kind, cfg, read_state_dict(path, allow_pickle, kind=kind), fresh, source=path,
                           projection=bool(options.get("projection_dim")), fresh_head=fresh_head)
    return model, jax.tree.map(jnp.asarray, params)


def select_layers(cfg: EncoderConfig, params: dict[str, Any], layers: Sequence[int]
                  ) -> tuple[EncoderConfig, dict[str, Any]]:
    """A shallower encoder made of some layers of ``params``: its layer i is layer ``layers[i]`` of the source
    (``(0, 1)``: the first two, as self-distilled and TinyBERT-style students start; ``(0, 2, 4)``: every other
    one, as DistilBERT). Embeddings and heads are kept; arrays are shared, not copied.

    Args:
      cfg: the source geometry; params: the source model's parameters (``params["encoder"]["layer_<i>"]``).
      layers: source layer numbers, 0-based.

    Returns:
      (the geometry with ``num_layers=len(layers)``, the parameters of that model).

    Raises:
      ValueError: a layer the source does not have (the message gives its depth).
    """
    layers = tuple(int(i) for i in layers)
    bad = [i for i in layers if not 0 <= i < cfg.num_layers]
    if bad or not layers:
        raise ValueError(f"init_layers {layers}: the starting weights have {cfg.num_layers} encoder layers "
                         f"(0..{cfg.num_layers - 1}); choose at least one of those")
    encoder = {k: v for k, v in params["encoder"].items() if not k.startswith("layer_")}
    encoder.update({f"layer_{new}": params["encoder"][f"layer_{old}"] for new, old in enumerate(layers)})
    return dataclasses.replace(cfg, num_layers=len(layers)), {**params, "encoder": encoder}
