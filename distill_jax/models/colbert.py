"""ColBERT student: encoder -> linear projection (no bias) -> L2-normalised token vectors.

Query/document markers, [MASK] query expansion and the punctuation mask are applied at tokenisation
(:mod:`distill_jax.data.tokenize`); the model sees ids, an attention mask and a scoring mask.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from distill_jax.models.encoder import Encoder, EncoderConfig, dense


@dataclasses.dataclass(frozen=True)
class ColBERTConfig:
    """ColBERT head and tokenisation settings (defaults of ColBERTv2 / PyLate).

    Attributes:
      dim: projection size D of each token vector.
      query_maxlen: queries are padded with [MASK] to exactly this many tokens (query expansion).
      doc_maxlen: documents are truncated at this many tokens.
      query_marker: token inserted after [CLS] in queries ([unused0] as Stanford ColBERT).
      doc_marker: token inserted after [CLS] in documents ([unused1]).
      attend_to_expansion_tokens: whether the [MASK] expansion tokens are attended to (False as ColBERT).
      mask_punctuation: drop punctuation tokens from documents at scoring time.
    """

    dim: int = 128
    query_maxlen: int = 32
    doc_maxlen: int = 180
    query_marker: str = "[unused0]"
    doc_marker: str = "[unused1]"
    attend_to_expansion_tokens: bool = False
    mask_punctuation: bool = True


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Normalises the last axis to unit length (float32 statistics)."""
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt(jnp.maximum(jnp.sum(x32 * x32, -1, keepdims=True), eps * eps))).astype(x.dtype)


class ColBERT(nn.Module):
    cfg: EncoderConfig
    colbert: ColBERTConfig = ColBERTConfig()
    dtype: Any = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, batch: dict[str, jax.Array], deterministic: bool = True) -> jax.Array:
        """Encodes queries or documents.

        Args:
          batch: ``input_ids`` and ``attention_mask`` [..., L] (any leading shape).

        Returns:
          [..., L, D] unit-length token vectors in float32 (padding positions are not zeroed: scoring masks them).
        """
        ids = batch["input_ids"]
        lead, length = ids.shape[:-1], ids.shape[-1]
        h = Encoder(self.cfg, self.dtype, self.remat, name="encoder")(
            ids.reshape(-1, length), batch["attention_mask"].reshape(-1, length), None, deterministic
        )
        v = dense(self.colbert.dim, ("embed", None), self.dtype, "linear", use_bias=False)(h)
        return l2_normalize(v.astype(jnp.float32)).reshape(*lead, length, self.colbert.dim)
