"""BERT-family Transformer encoder in Flax (Linen), pure-functional: ``Encoder(cfg).apply({'params': p}, ...)``.

Parameter names follow the Hugging Face BERT layout (``embeddings/word_embeddings``, ``layer_0/attention/...``) so
that the one mapping table in :mod:`distill_jax.models.hf` stays short. Every parameter carries logical axis names
("vocab", "embed", "mlp", "heads", ...); :mod:`distill_jax.distributed` maps them to mesh axes. Layers never name
mesh axes.

Why Linen and not NNX: the models here must be plain ``apply(params, batch)`` functions over a nested-dict pytree
(what orbax saves, what the HF table maps, what ``jax.jit`` shards). Linen gives exactly that with no split/merge.
The whole code base uses Linen.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

Array = jax.Array

# Hugging Face activation names -> functions. "gelu" in HF BERT is the exact (erf) GELU.
ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}

SUPPORTED_MODEL_TYPES = ("bert",)

# What the backward pass of a rematerialised encoder layer keeps instead of recomputing (ModelConfig.remat_policy).
# Dense matmul outputs are the expensive values (~93% of a layer's FLOPs); softmax, GELU, LayerNorm and the
# dropout selects are cheap to recompute, the attention probabilities [B, heads, L, L] are the big ones to keep.
_cp = jax.checkpoint_policies
REMAT_POLICIES = {
    "full": _cp.nothing_saveable,  # keep only each layer's input: least memory, the whole forward again
    "dots": _cp.dots_with_no_batch_dims_saveable,  # keep the dense matmul outputs; redo attention and the
    # elementwise ops, the dropout keep-masks drawn again from their keys
    "dots_masks": _cp.save_from_both_policies(  # as "dots", plus the dropout keep-masks (1 byte an element),
        _cp.dots_with_no_batch_dims_saveable, _cp.save_only_these_names("dropout_mask")),  # so no bits again
}


def remat_mode(remat: bool | str) -> str:
    """A model's ``remat`` attribute as a policy name: False/"" = no remat, True = "full"."""
    mode = "full" if remat is True else (remat or "")
    if mode and mode not in REMAT_POLICIES:
        raise ValueError(f"remat policy {mode!r}; use one of {sorted(REMAT_POLICIES)}")
    return mode


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Geometry of a BERT-family encoder, read from a Hugging Face ``config.json``.

    Attributes:
      vocab_size: rows of the word-embedding matrix.
      hidden_size: model width H.
      num_layers: number of Transformer layers.
      num_heads: attention heads (H must divide by it).
      intermediate_size: width of the feed-forward layer.
      hidden_act: activation name as in HF (``gelu`` = exact erf GELU).
      max_position_embeddings: longest sequence the position table covers.
      type_vocab_size: number of token-type (segment) ids.
      layer_norm_eps: LayerNorm epsilon.
      hidden_dropout: dropout on embeddings and residual branches (training only).
      attention_dropout: dropout on attention probabilities (training only).
      pad_token_id: id of the padding token.
    """

    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    pad_token_id: int = 0

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"activation {self.hidden_act!r} is not supported; use one of {sorted(ACTIVATIONS)}"
            )

    @classmethod
    def from_hf_dict(cls, cfg: dict[str, Any], source: str = "config.json") -> "EncoderConfig":
        """Builds the config from a Hugging Face ``config.json`` dictionary.

        Raises:
          ValueError: the config is not a BERT-family encoder, naming ``source`` and the model type.
        """
        model_type = cfg.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"{source}: model_type {model_type!r} is not a BERT-family encoder distill-jax can load; "
                f"supported model types: {', '.join(SUPPORTED_MODEL_TYPES)} (e.g. bert-base-uncased, "
                "all-MiniLM-L6-v2, cross-encoder/ms-marco-MiniLM-L-6-v2)"
            )
        missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
                   if k not in cfg]
        if missing:
            raise ValueError(f"{source}: missing required fields {missing}; is this a BERT config.json?")
        return cls(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=cfg["num_attention_heads"],
            intermediate_size=cfg.get("intermediate_size", 4 * cfg["hidden_size"]),
            hidden_act=cfg.get("hidden_act", "gelu"),
            max_position_embeddings=cfg.get("max_position_embeddings", 512),
            type_vocab_size=cfg.get("type_vocab_size", 2),
            layer_norm_eps=cfg.get("layer_norm_eps", 1e-12),
            hidden_dropout=cfg.get("hidden_dropout_prob", 0.1),
            attention_dropout=cfg.get("attention_probs_dropout_prob", 0.1),
            pad_token_id=cfg.get("pad_token_id", 0) or 0,
        )

    @classmethod
    def from_pretrained_dir(cls, path: str) -> "EncoderConfig":
        """Reads ``path/config.json``; raises a clear error when the directory is not a checkpoint."""
        cfg_path = os.path.join(path, "config.json")
        if not os.path.isfile(cfg_path):
            raise FileNotFoundError(
                f"{path!r} has no config.json: it is not a Hugging Face checkpoint directory "
                "(expected config.json plus model.safetensors)"
            )
        with open(cfg_path) as f:
            return cls.from_hf_dict(json.load(f), source=cfg_path)

    def to_hf_dict(self) -> dict[str, Any]:
        """The inverse of :meth:`from_hf_dict` (used by exports)."""
        return {
            "model_type": "bert",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "intermediate_size": self.intermediate_size,
            "hidden_act": self.hidden_act,
            "max_position_embeddings": self.max_position_embeddings,
            "type_vocab_size": self.type_vocab_size,
            "layer_norm_eps": self.layer_norm_eps,
            "hidden_dropout_prob": self.hidden_dropout,
            "attention_probs_dropout_prob": self.attention_dropout,
            "pad_token_id": self.pad_token_id,
        }


def _init(axes: tuple[str | None, ...], std: float = 0.02):
    return nn.with_logical_partitioning(nn.initializers.normal(stddev=std), axes)


def zeros_init(axes):
    """A zeros initialiser carrying logical axis names (for heads built outside this module)."""
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def _ones(axes):
    return nn.with_logical_partitioning(nn.initializers.ones_init(), axes)


def layer_norm(cfg: EncoderConfig, dtype, name: str) -> nn.LayerNorm:
    """LayerNorm in the HF layout (``scale``/``bias`` over the hidden axis), statistics in float32."""
    return nn.LayerNorm(
        epsilon=cfg.layer_norm_eps, dtype=dtype, param_dtype=jnp.float32, name=name,
        scale_init=_ones(("embed",)), bias_init=zeros_init(("embed",)),
    )


def dense(features: int, axes: tuple[str | None, str | None], dtype, name: str, use_bias: bool = True):
    """A Dense layer whose kernel [in, out] and bias [out] carry logical axis names."""
    return nn.Dense(
        features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, name=name,
        kernel_init=_init(axes), bias_init=zeros_init((axes[1],)),
    )


class Dropout(nn.Module):
    """``flax.linen.Dropout`` with its keep-mask named ``"dropout_mask"`` for remat policies.

    Same class name, so the same submodule names, the same ``make_rng("dropout")`` stream and bitwise the same
    mask as ``nn.Dropout``; the name lets the "dots_masks" remat policy keep the mask instead of drawing its
    random bits a second time in the backward pass.
    """

    rate: float

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        if self.rate == 0.0 or deterministic:
            return x
        if self.rate == 1.0:
            return jnp.zeros_like(x)
        keep_prob = 1.0 - self.rate
        keep = jax.random.bernoulli(self.make_rng("dropout"), p=keep_prob, shape=x.shape)
        keep = checkpoint_name(keep, "dropout_mask")
        return jax.lax.select(keep, x / keep_prob, jnp.zeros_like(x))


class Embeddings(nn.Module):
    cfg: EncoderConfig
    dtype: Any = jnp.float32

    def setup(self):
        c = self.cfg
        self.word_embeddings = nn.Embed(c.vocab_size, c.hidden_size, dtype=self.dtype,
                                        param_dtype=jnp.float32, embedding_init=_init(("vocab", "embed")))
        self.position_embeddings = nn.Embed(c.max_position_embeddings, c.hidden_size, dtype=self.dtype,
                                            param_dtype=jnp.float32,
                                            embedding_init=_init((None, "embed")))
        self.token_type_embeddings = nn.Embed(c.type_vocab_size, c.hidden_size, dtype=self.dtype,
                                              param_dtype=jnp.float32,
                                              embedding_init=_init((None, "embed")))
        self.LayerNorm = layer_norm(c, self.dtype, "LayerNorm")
        self.dropout = Dropout(c.hidden_dropout)

    def __call__(self, input_ids, token_type_ids, deterministic: bool):
        positions = jnp.arange(input_ids.shape[-1])[None, :]
        x = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
             + self.token_type_embeddings(token_type_ids))
        return self.dropout(self.LayerNorm(x), deterministic=deterministic)

    def attend(self, x: Array) -> Array:
        """Tied decoder: ``x [..., H] @ word_embeddings.T -> [..., V]`` (SPLADE's MLM logits)."""
        return self.word_embeddings.attend(x)


def explicit_attention(q: Array, k: Array, v: Array, bias: Array, dropout=lambda p: p) -> Array:
    """Softmax attention with the probabilities in hand (for dropout), HF BERT's order of operations.

    Args:
      q, k, v: [B, L, heads, head_dim] in the compute dtype.
      bias: [B, 1, 1, L] additive mask (float32).
      dropout: applied to the [B, heads, L, L] probabilities.

    Returns:
      [B, L, heads, head_dim] context.
    """
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / np.sqrt(q.shape[-1]) + bias
    probs = dropout(jax.nn.softmax(logits, axis=-1).astype(q.dtype))
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


class SelfAttention(nn.Module):
    cfg: EncoderConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, bias, deterministic: bool):
        """x: [B, L, H]; bias: [B, 1, 1, L] additive mask (0 or a large negative)."""
        c = self.cfg
        head_dim = c.hidden_size // c.num_heads

        def heads(name):
            y = dense(c.hidden_size, ("embed", "heads"), self.dtype, name)(x)
            return y.reshape(*y.shape[:-1], c.num_heads, head_dim)  # [B, L, nh, hd]

        q, k, v = heads("query"), heads("key"), heads("value")
        if deterministic:
            # Same math (bit-identical hidden states on XLA:CPU in float32); measured 10-15% faster forward on
            # this CPU (encoder at [32, 180] and [64, 180]); on GPU the place a fused kernel can go.
            ctx = jax.nn.dot_product_attention(q, k, v, bias=bias)
        else:
            # Training: dropout acts on the probabilities, which dot_product_attention never exposes.
            dropout = Dropout(c.attention_dropout)
            ctx = explicit_attention(q, k, v, bias, lambda p: dropout(p, deterministic=False))
        ctx = ctx.reshape(x.shape)
        out = dense(c.hidden_size, ("heads", "embed"), self.dtype, "output_dense")(ctx)
        out = Dropout(c.hidden_dropout)(out, deterministic=deterministic)
        return layer_norm(c, self.dtype, "output_LayerNorm")(out + x)


class Layer(nn.Module):
    cfg: EncoderConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, bias, deterministic: bool):
        c = self.cfg
        x = SelfAttention(c, self.dtype, name="attention")(x, bias, deterministic)
        h = dense(c.intermediate_size, ("embed", "mlp"), self.dtype, "intermediate")(x)
        h = ACTIVATIONS[c.hidden_act](h)
        h = dense(c.hidden_size, ("mlp", "embed"), self.dtype, "output_dense")(h)
        h = Dropout(c.hidden_dropout)(h, deterministic=deterministic)
        return layer_norm(c, self.dtype, "output_LayerNorm")(h + x)


class Encoder(nn.Module):
    """BERT encoder: token ids -> last hidden states.

    Attributes:
      cfg: geometry.
      dtype: compute dtype (``jnp.bfloat16`` computes in bf16 over float32 parameters; softmax and LayerNorm
        statistics stay in float32).
      remat: rematerialise each layer in the backward pass: a :data:`REMAT_POLICIES` name ("full", "dots",
        "dots_masks"), True (= "full") or False / "" (keep every activation).
    """

    cfg: EncoderConfig
    dtype: Any = jnp.float32
    remat: bool | str = False

    def setup(self):
        self.embeddings = Embeddings(self.cfg, self.dtype)
        mode = remat_mode(self.remat)
        layer_cls = nn.remat(Layer, static_argnums=(3,), policy=REMAT_POLICIES[mode]) if mode else Layer
        self.layers = [layer_cls(self.cfg, self.dtype, name=f"layer_{i}") for i in range(self.cfg.num_layers)]

    def __call__(self, input_ids: Array, attention_mask: Array, token_type_ids: Array | None = None,
                 deterministic: bool = True) -> Array:
        """Encodes a batch.

        Args:
          input_ids: [B, L] int token ids.
          attention_mask: [B, L] 1 for tokens to attend to, 0 for padding.
          token_type_ids: [B, L] segment ids, zeros when omitted.
          deterministic: False turns dropout on (needs ``rngs={'dropout': key}``).

        Returns:
          [B, L, H] last hidden states in the compute dtype.
        """
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids, deterministic)
        # Additive mask, as HF BERT: 0 where attended, the dtype's minimum where masked.
        bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)
        for layer in self.layers:
            x = layer(x, bias, deterministic)
        return x

    def attend(self, x: Array) -> Array:
        """Tied vocabulary projection ``[..., H] -> [..., V]`` through the word embeddings."""
        return self.embeddings.attend(x)


def check_token_ids(input_ids: np.ndarray, vocab_size: int, what: str = "input_ids") -> None:
    """Host-side check, before any jit step: ids must lie in ``[0, vocab_size)``.

    A jitted embedding lookup silently clamps out-of-range ids, which would train on the wrong tokens.
    """
    ids = np.asarray(input_ids)
    bad = (ids < 0) | (ids >= vocab_size)
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise ValueError(
            f"{what}[{row}, {col}] = {int(ids[row, col])} is outside the model's vocabulary of {vocab_size} "
            f"ids ({int(bad.sum())} such ids in the batch): the tokenizer does not match the checkpoint; "
            "load the tokenizer saved with the model"
        )
