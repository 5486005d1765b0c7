"""No-distillation baseline: dense student trained with InfoNCE on hard labels (positive in column 0) against
its own candidates and every candidate of the global batch (in-batch negatives). Teacher scores are ignored.

    distill-jax train configs/dense_infonce.py --set data.dataset_dir=DATA data.collection_dir=BEIR
    distill-jax train configs/dense_infonce.py:tiny
"""

from distill_jax.config import LossConfig, student_recipe


def get_config(variant=None):
    return student_recipe("dense_infonce", "dense",
                          LossConfig(name="infonce", hp={"temperature": 0.05}, in_batch=True), variant)
