"""Tiny configs for tests and smoke runs: a 2-layer, hidden-32 random encoder on synthetic batches.

    distill-jax train configs/tiny.py --set workdir=/tmp/tiny steps=50
    distill-jax train configs/tiny.py:splade                      # variants: colbert (default), splade, dense,
                                                                  # cross_encoder
"""

from distill_jax.config import LossConfig, tiny_variant, TrainConfig, ModelConfig

LOSSES = {
    "colbert": LossConfig(name="margin_mse"),
    "splade": LossConfig(name="mse", regularizer_q="flops", regularizer_d="flops", lambda_q=1e-3, lambda_d=1e-3,
                         reg_warmup_steps=10),
    "dense": LossConfig(name="infonce", hp={"temperature": 0.1}, in_batch=True),
    "cross_encoder": LossConfig(name="kl"),
}


def get_config(variant=None):
    kind = variant or "colbert"
    if kind not in LOSSES:
        raise ValueError(f"unknown variant {kind!r}; known: {', '.join(LOSSES)}")
    cfg = TrainConfig(name=f"tiny_{kind}", workdir=f"runs/tiny_{kind}", model=ModelConfig(kind=kind),
                      loss=LOSSES[kind])
    return tiny_variant(cfg, name=f"tiny_{kind}", workdir=f"runs/tiny_{kind}")
