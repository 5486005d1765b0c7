"""SPLADE student, pointwise MSE on teacher scores + FLOPS on queries and documents, quadratic warm-up of lambda.

Lambdas of naver/splade's SPLADE++ EnsembleDistil (0.1 queries, 0.08 documents), reached after 20% of training.

    distill-jax train configs/splade_mse_flops.py --set data.dataset_dir=DATA data.collection_dir=BEIR
    distill-jax train configs/splade_mse_flops.py:tiny
"""

import dataclasses

from distill_jax.config import LossConfig, student_recipe


def get_config(variant=None):
    cfg = student_recipe(
        "splade_mse_flops", "splade",
        LossConfig(name="mse", regularizer_q="flops", regularizer_d="flops", lambda_q=0.1, lambda_d=0.08,
                   reg_warmup_steps=20_000), variant)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, doc_maxlen=min(cfg.data.doc_maxlen, 128)))
