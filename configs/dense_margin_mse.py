"""Dense single-vector student (mean pooling, dot product), Margin-MSE distillation.

    distill-jax train configs/dense_margin_mse.py --set data.dataset_dir=DATA data.collection_dir=BEIR
    distill-jax train configs/dense_margin_mse.py:tiny
"""

from distill_jax.config import LossConfig, student_recipe


def get_config(variant=None):
    return student_recipe("dense_margin_mse", "dense", LossConfig(name="margin_mse"), variant)
