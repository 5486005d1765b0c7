"""Teacher cross-encoder: ``[CLS] query [SEP] passage [SEP]`` -> one relevance logit.

Layout of HF ``BertForSequenceClassification`` with ``num_labels=1`` (the public ms-marco cross-encoders):
encoder -> pooler (dense + tanh on [CLS]) -> dropout -> classifier (dense H -> 1).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from distill_jax.models.encoder import Dropout, Encoder, EncoderConfig, dense


class CrossEncoder(nn.Module):
    """Attributes: cfg (geometry), dtype (compute dtype), remat (per-layer rematerialisation)."""

    cfg: EncoderConfig
    dtype: Any = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, batch: dict[str, jax.Array], deterministic: bool = True) -> jax.Array:
        """Scores pairs.

        Args:
          batch: ``input_ids``, ``attention_mask``, ``token_type_ids``, each [..., L] (any leading shape, e.g.
            [B, N, L] for N candidates per query).

        Returns:
          [...] float32 logits, one per pair.
        """
        ids = batch["input_ids"]
        lead, length = ids.shape[:-1], ids.shape[-1]
        flat = lambda x: x.reshape(-1, length)  # noqa: E731
        types = batch.get("token_type_ids")
        h = Encoder(self.cfg, self.dtype, self.remat, name="encoder")(
            flat(ids), flat(batch["attention_mask"]), None if types is None else flat(types), deterministic
        )
        pooled = jnp.tanh(dense(self.cfg.hidden_size, ("embed", "embed_out"), self.dtype, "pooler")(h[:, 0]))
        pooled = Dropout(self.cfg.hidden_dropout)(pooled, deterministic=deterministic)
        logit = dense(1, ("embed", None), self.dtype, "classifier")(pooled)
        return logit[:, 0].astype(jnp.float32).reshape(lead)
