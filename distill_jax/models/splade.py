"""SPLADE student: encoder + MLM head -> ``log(1 + relu(logits))`` masked, max-pooled -> one |V| vector.

MLM head in the HF ``BertForMaskedLM`` layout: transform (dense + activation + LayerNorm), decoder tied to the
word embeddings (called through the embedding's ``attend``, so no parameter is shared between modules), plus a
vocabulary bias.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from distill_jax.models.encoder import ACTIVATIONS, Encoder, EncoderConfig, _zeros, dense, layer_norm


def splade_pool(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """``max_i log(1 + relu(logits[i])) * mask[i]``.

    Args:
      logits: [B, L, V] MLM logits.
      mask: [B, L] 1 for real tokens.

    Returns:
      [B, V] non-negative term weights (float32).
    """
    w = jnp.log1p(jax.nn.relu(logits.astype(jnp.float32)))
    return jnp.max(w * mask[..., None].astype(jnp.float32), axis=-2)


class Splade(nn.Module):
    """Attributes: cfg, dtype, remat; ``chunk_size`` pools the vocabulary projection over chunks of that many
    token positions (scanned and rematerialised) so [B, L, V] logits never exist at once; 0 = no chunking."""

    cfg: EncoderConfig
    dtype: Any = jnp.float32
    remat: bool = False
    chunk_size: int = 0

    def setup(self):
        c = self.cfg
        self.encoder = Encoder(c, self.dtype, self.remat)
        self.transform_dense = dense(c.hidden_size, ("embed", "embed_out"), self.dtype, "transform_dense")
        self.transform_LayerNorm = layer_norm(c, self.dtype, "transform_LayerNorm")
        self.bias = self.param("bias", _zeros(("vocab",)), (c.vocab_size,), jnp.float32)

    def mlm_logits(self, h: jax.Array) -> jax.Array:
        """[..., H] hidden states -> [..., V] MLM logits (float32)."""
        t = self.transform_LayerNorm(ACTIVATIONS[self.cfg.hidden_act](self.transform_dense(h)))
        return self.encoder.attend(t).astype(jnp.float32) + self.bias

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
        if not self.chunk_size or self.chunk_size >= length:
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
            init = jnp.zeros((h.shape[0], self.cfg.vocab_size), jnp.float32)
            out, _ = scan(self, init, (hc, mc))
        return out.reshape(*lead, self.cfg.vocab_size)
