"""Dense single-vector student: encoder -> CLS or mean pooling -> optional projection (TCT/LEAF-style)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from distill_jax.models.encoder import Encoder, EncoderConfig, dense


def pool(h: jax.Array, mask: jax.Array, pooling: str) -> jax.Array:
    """[B, L, H] hidden states and [B, L] mask -> [B, H] float32 by ``cls`` or masked ``mean`` pooling."""
    h = h.astype(jnp.float32)
    if pooling == "cls":
        return h[:, 0]
    if pooling == "mean":
        m = mask[..., None].astype(jnp.float32)
        return jnp.sum(h * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
    raise ValueError(f"unknown pooling {pooling!r}; use 'cls' or 'mean'")


class DenseEncoder(nn.Module):
    """Attributes: cfg, pooling ('cls' | 'mean'), projection_dim (0 = none), normalize (L2), dtype, remat."""

    cfg: EncoderConfig
    pooling: str = "mean"
    projection_dim: int = 0
    normalize: bool = False
    dtype: Any = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, batch: dict[str, jax.Array], deterministic: bool = True) -> jax.Array:
        """``input_ids``/``attention_mask`` [..., L] -> [..., E] float32 embeddings."""
        ids = batch["input_ids"]
        lead, length = ids.shape[:-1], ids.shape[-1]
        mask = batch["attention_mask"].reshape(-1, length)
        h = Encoder(self.cfg, self.dtype, self.remat, name="encoder")(ids.reshape(-1, length), mask, None,
                                                                      deterministic)
        e = pool(h, mask, self.pooling)
        if self.projection_dim:
            e = dense(self.projection_dim, ("embed", None), self.dtype, "projection", use_bias=False)(e)
            e = e.astype(jnp.float32)
        if self.normalize:
            e = e * jax.lax.rsqrt(jnp.maximum(jnp.sum(e * e, -1, keepdims=True), 1e-24))
        return e.reshape(*lead, e.shape[-1])
