"""SPLADE student, Margin-MSE + FLOPS (the SPLADE++ EnsembleDistil objective of naver/splade).

    distill-jax train configs/splade_margin_mse.py --set data.dataset_dir=DATA data.collection_dir=BEIR
    distill-jax train configs/splade_margin_mse.py:tiny
"""

import dataclasses

from distill_jax.config import LossConfig, student_recipe


def get_config(variant=None):
    cfg = student_recipe(
        "splade_margin_mse", "splade",
        LossConfig(name="margin_mse", regularizer_q="flops", regularizer_d="flops", lambda_q=0.1, lambda_d=0.08,
                   reg_warmup_steps=20_000), variant)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, doc_maxlen=min(cfg.data.doc_maxlen, 128)))
