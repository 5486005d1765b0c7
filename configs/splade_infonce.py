"""No-distillation baseline: splade student trained with InfoNCE on hard labels (positive in column 0) against
its own candidates and every candidate of the global batch (in-batch negatives). Teacher scores are ignored.
Same FLOPS regularisation as splade_margin_mse, so only the objective differs.

    distill-jax train configs/splade_infonce.py --set data.dataset_dir=DATA data.collection_dir=BEIR
    distill-jax train configs/splade_infonce.py:tiny
"""

from distill_jax.config import LossConfig, student_recipe


def get_config(variant=None):
    return student_recipe("splade_infonce", "splade",
                          LossConfig(name="infonce", hp={"temperature": 1.0}, in_batch=True, regularizer_q="flops",
                                     regularizer_d="flops", lambda_q=0.1, lambda_d=0.08, reg_warmup_steps=20_000),
                          variant)
