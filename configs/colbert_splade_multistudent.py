"""ColBERT and SPLADE students trained in ONE step from the same batch and teacher scores: one data pass, two
parameter sets and optimiser states, checkpointed together (``params/colbert``, ``params/splade``).

ColBERT: Margin-MSE. SPLADE: Margin-MSE + FLOPS on queries and documents (SPLADE++ lambdas, quadratic warm-up).
The step equals the two single-student steps run separately on the same batch; what is saved is the second
pass over the data (and, with the token cache, the second tokenisation).

    distill-jax train configs/colbert_splade_multistudent.py --set data.dataset_dir=DATA data.collection_dir=BEIR
    distill-jax train configs/colbert_splade_multistudent.py:tiny
"""

import dataclasses

from distill_jax.config import LossConfig, StudentConfig, student_recipe, tiny_variant


def get_config(variant=None):
    colbert = student_recipe("colbert", "colbert", LossConfig(name="margin_mse"))
    splade = student_recipe("splade", "splade", LossConfig(
        name="margin_mse", regularizer_q="flops", regularizer_d="flops", lambda_q=0.1, lambda_d=0.08,
        reg_warmup_steps=20_000))
    students = tuple(StudentConfig(c.name, c.model, c.loss, c.optim) for c in (colbert, splade))
    cfg = student_recipe("colbert_splade_multistudent", "colbert", colbert.loss, variant=None, students=students)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, doc_maxlen=128))
    if variant == "tiny":
        return tiny_variant(cfg)
    if variant is not None:
        raise ValueError(f"unknown variant {variant!r} of colbert_splade_multistudent; known: tiny")
    return cfg
