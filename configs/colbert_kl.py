"""ColBERT student, listwise KL distillation over each query's candidates (ColBERTv2 / PyLate).

    distill-jax train configs/colbert_kl.py --set data.dataset_dir=DATA data.collection_dir=BEIR
    distill-jax train configs/colbert_kl.py:tiny
"""

from distill_jax.config import LossConfig, student_recipe


def get_config(variant=None):
    return student_recipe("colbert_kl", "colbert", LossConfig(name="kl", hp={"temperature": 1.0}), variant)
