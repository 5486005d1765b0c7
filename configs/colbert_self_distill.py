"""ColBERT self-distillation: a 6-layer ColBERT teacher (frozen, online) teaches a 2-layer ColBERT student that
starts from the teacher's first two layers (embeddings and projection included), on the teacher's MaxSim scores
(Margin-MSE; or --set loss.name=kl) plus the MSE between the student's and the teacher's token vectors of the
documents and queries (drop it with --set loss.objectives=[]).

Self-distillation here means a larger model of the SAME kind teaching a smaller one, as DistilBERT (Sanh et al.
2019) and TinyBERT (Jiao et al. 2020) shrink BERT: the student keeps the teacher's vocabulary, width and
tokenisation, so its token vectors can be compared one by one. The teacher is a distill-jax train work directory
of a ColBERT (its best, else latest, checkpoint) or an exported PyLate / Hugging Face ColBERT directory; the data
is any candidate dataset (its scores only sample the negatives).

    distill-jax train configs/colbert_self_distill.py --set data.dataset_dir=runs/scifact/teacher/labels \
        data.collection_dir=../shared/data/scifact teacher.model.checkpoint=runs/scifact/students/colbert_distilled
    distill-jax train configs/colbert_self_distill.py:tiny   # 4-layer random teacher -> 2-layer student, seconds
"""

import dataclasses

from distill_jax.config import (LossConfig, ModelConfig, ObjectiveConfig, TeacherConfig, random_teacher, student_recipe,
                                tiny_variant)

TOKEN_MSE = (ObjectiveConfig("token_mse", 1.0, "docs", label="token_mse_docs"),
             ObjectiveConfig("token_mse", 1.0, "query", label="token_mse_query"))


def get_config(variant=None):
    teacher = TeacherConfig(online=True, init_student=True, model=ModelConfig(
        kind="colbert", dropout=0.0, checkpoint="runs/scifact/students/colbert_distilled"))
    cfg = student_recipe("colbert_self_distill", "colbert", LossConfig(name="margin_mse", objectives=TOKEN_MSE),
                         variant=None, teacher=teacher, model=ModelConfig(kind="colbert", init_layers=(0, 1)))
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, sampling="random", top_k=30))
    if variant == "tiny":  # a random 4-layer teacher (tiny_variant makes every model 2 layers)
        return random_teacher(tiny_variant(cfg), num_layers=4)
    if variant is not None:
        raise ValueError(f"unknown variant {variant!r} of colbert_self_distill; known: tiny")
    return cfg
