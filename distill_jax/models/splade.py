"""SPLADE student: encoder + MLM head -> ``log(1 + relu(logits))`` masked, max-pooled -> one |V| vector.

MLM head in the HF ``BertForMaskedLM`` layout: transform (dense + activation + LayerNorm), decoder tied to the
word embeddings (called through the embedding's ``attend``, so no parameter is shared between modules), plus a
vocabulary bias.

A checkpoint without an MLM head (e.g. the sentence-transformers all-MiniLM-L6-v2) gets :func:`lexical_mlm_head`
instead of a random one: a random head activates nearly the whole vocabulary with dot products ~1e4.

The pooled head runs through :func:`distill_jax.models.splade_head.splade_max_pool` (a custom VJP whose backward
touches one position per term and sequence); ``Splade(argmax_head=False)`` keeps the plain autodiffed
formulation as the reference.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from distill_jax.models import splade_head
from distill_jax.models.encoder import ACTIVATIONS, Encoder, EncoderConfig, dense, layer_norm, zeros_init


def splade_pool(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """``max_i log(1 + relu(logits[i])) * mask[i]``.

    Args:
      logits: [B, L, V] MLM logits.
      mask: [B, L] 1 for real tokens.

    Returns:
      [B, V] non-negative term weights (float32; float64 for float64 logits).
    """
    acc = jnp.promote_types(logits.dtype, jnp.float32)
    w = jnp.log1p(jax.nn.relu(logits.astype(acc)))
    return jnp.max(w * mask[..., None].astype(acc), axis=-2)


# The fresh head (see lexical_mlm_head). FRESH_HEAD_Z: a term fires at a position only if its logit is more than
# this many "standard deviations" (the norm of its embedding row) above zero. FRESH_HEAD_SCALE: the LayerNorm scale,
# which multiplies every logit (the bias is scaled with it, so the set of active terms does not change) and so
# sets the size of the term weights and dot products. Measured with all-MiniLM-L6-v2 on scifact (16-token queries,
# 64-token documents): z 3 -> ~900 / ~3 500 active terms, z 3.5 -> 260 / 1 150, z 4 -> 85 / 390; at z 3 a scale
# of 1 gives dot products ~110 (+-40), 0.2 gives ~10 (+-3), the range of a cross-encoder's logits, so pointwise
# MSE does not have to shrink (and thereby sparsify) the vectors: see docs/training.md.
FRESH_HEAD_Z = 3.0
FRESH_HEAD_SCALE = 0.2


def lexical_mlm_head(word_embeddings: np.ndarray, z: float = FRESH_HEAD_Z,
                     scale: float = FRESH_HEAD_SCALE) -> dict[str, np.ndarray]:
    """An MLM head for an encoder that has none, so that SPLADE starts lexical, with a chosen share of active
    terms and dot products on the scale of teacher scores.

    The transform is the identity (``t = scale * LayerNorm(act(h))``), so the tied decoder scores each vocabulary
    term by its embedding's agreement with the token's final hidden state: a text's own words and their
    neighbours come first. LayerNorm makes the components of ``t / scale`` zero-mean with unit variance, so for a
    term unrelated to the position ``t . e_v / scale`` has a spread of about ``|e_v|``; the bias
    ``-z * scale * |e_v|`` lets such a term fire only ``z`` standard deviations out (a share ``1 - Phi(z)`` of
    (position, term) pairs), independent of the embedding's norm.

    Args:
      word_embeddings: [V, H] the encoder's (tied) word embeddings.
      z: the firing threshold in units of each row's norm.
      scale: LayerNorm scale; every logit, hence every term weight ``log(1 + relu(logit))``, shrinks with it.

    Returns:
      ``transform_dense`` {kernel [H, H], bias [H]}, ``transform_LayerNorm`` {scale, bias} [H], ``bias`` [V]
      (float32), in the params layout of :class:`Splade`.
    """
    e = np.asarray(word_embeddings, np.float32)
    h = e.shape[1]
    return {
        "transform_dense": {"kernel": np.eye(h, dtype=np.float32), "bias": np.zeros(h, np.float32)},
        "transform_LayerNorm": {"scale": np.full(h, scale, np.float32), "bias": np.zeros(h, np.float32)},
        "bias": (-z * scale * np.linalg.norm(e, axis=1)).astype(np.float32),
    }


class Splade(nn.Module):
    """SPLADE encoder.

    Attributes:
      cfg, dtype, remat: as :class:`Encoder`.
      chunk_size: pool the vocabulary projection over blocks of this many token positions so [B, L, V] logits
        never exist at once; 0 = the argmax head's default (``splade_head.DEFAULT_CHUNK``), the plain head at
        once.
      argmax_head: True (default) = :func:`splade_head.splade_max_pool` (custom VJP, sparse backward);
        False = the plain formulation under autodiff (rematerialised scan when chunked), the reference.
      head_backward: the argmax head's backward ("auto", "loop", "batched"; see ``splade_max_pool``).
    """

    cfg: EncoderConfig
    dtype: Any = jnp.float32
    remat: bool = False
    chunk_size: int = 0
    argmax_head: bool = True
    head_backward: str = "auto"

    def setup(self):
        c = self.cfg
        self.encoder = Encoder(c, self.dtype, self.remat)
        self.transform_dense = dense(c.hidden_size, ("embed", "embed_out"), self.dtype, "transform_dense")
        self.transform_LayerNorm = layer_norm(c, self.dtype, "transform_LayerNorm")
        self.bias = self.param("bias", zeros_init(("vocab",)), (c.vocab_size,), jnp.float32)

    def transform(self, h: jax.Array) -> jax.Array:
        """[..., H] hidden states -> [..., H] the MLM transform (dense, activation, LayerNorm)."""
        return self.transform_LayerNorm(ACTIVATIONS[self.cfg.hidden_act](self.transform_dense(h)))

    def mlm_logits(self, h: jax.Array) -> jax.Array:
        """[..., H] hidden states -> [..., V] MLM logits (float32; float64 in a float64 model)."""
        logits = self.encoder.attend(self.transform(h))
        return logits.astype(jnp.promote_types(logits.dtype, jnp.float32)) + self.bias

    def __call__(self, batch: dict[str, jax.Array], deterministic: bool = True) -> jax.Array:
        """Encodes texts.

        Args:
          batch: ``input_ids`` and ``attention_mask`` [..., L] (any leading shape).

        Returns:
          [..., V] SPLADE vectors (float32, non-negative).
        """
        ids = batch["input_ids"]
        lead, length = ids.shape[:-1], ids.shape[-1]
        mask = batch["attention_mask"].reshape(-1, length)
        h = self.encoder(ids.reshape(-1, length), mask, None, deterministic)
        if self.argmax_head:
            emb = self.encoder.embeddings.word_embeddings.embedding  # [V, H]: the tied decoder
            out = splade_head.splade_max_pool(self.transform(h), emb, self.bias, mask,
                                              self.chunk_size or splade_head.DEFAULT_CHUNK, self.head_backward)
        elif not self.chunk_size or self.chunk_size >= length:
            out = splade_pool(self.mlm_logits(h), mask)
        else:
            if length % self.chunk_size:
                raise ValueError(f"sequence length {length} is not a multiple of chunk_size {self.chunk_size}")
            n = length // self.chunk_size
            hc = h.reshape(h.shape[0], n, self.chunk_size, -1).swapaxes(0, 1)  # [n, B, c, H]
            mc = mask.reshape(mask.shape[0], n, self.chunk_size).swapaxes(0, 1)

            def body(mdl, carry, xs):
                return jnp.maximum(carry, splade_pool(mdl.mlm_logits(xs[0]), xs[1])), None

            scan = nn.scan(nn.remat(body), variable_broadcast="params", split_rngs={"params": False})
            init = jnp.zeros((h.shape[0], self.cfg.vocab_size), jnp.promote_types(h.dtype, jnp.float32))
            out, _ = scan(self, init, (hc, mc))
        return out.reshape(*lead, self.cfg.vocab_size)
