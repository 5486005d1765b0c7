"""ColBERT student, Margin-MSE distillation from teacher scores (Hofstaetter et al. 2020).

    distill-jax train configs/colbert_margin_mse.py --set data.dataset_dir=DATA data.collection_dir=BEIR
    distill-jax train configs/colbert_margin_mse.py:tiny          # tiny random model, synthetic data, seconds
"""

from distill_jax.config import LossConfig, student_recipe


def get_config(variant=None):
    return student_recipe("colbert_margin_mse", "colbert", LossConfig(name="margin_mse"), variant)
