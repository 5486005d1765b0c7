"""ColBERT student, online distillation: the cross-encoder teacher scores each batch's (query, passage) pairs
inside the train step (frozen, under stop_gradient), Margin-MSE on those scores. No answer key is written: new
queries or a new teacher cost nothing offline.

The data is any candidate dataset (e.g. the BM25 label dataset ``train-teacher`` writes beside its checkpoints,
or ``import-scores`` of a run): its score column only orders and samples the negatives. The teacher is a
``train-teacher`` work directory (its best checkpoint) or an exported cross-encoder directory, sharing the
student's tokenizer; ``teacher.model.dtype=bfloat16`` halves its cost.

    distill-jax train configs/colbert_online.py --set data.dataset_dir=runs/scifact/teacher/labels \
        data.collection_dir=../shared/data/scifact teacher.model.checkpoint=runs/scifact/teacher
    distill-jax train configs/colbert_online.py:tiny --set teacher.model.checkpoint=WORKDIR_OF_A_TINY_TEACHER
"""

import dataclasses

from distill_jax.config import LossConfig, ModelConfig, TeacherConfig, student_recipe, tiny_variant


def get_config(variant=None):
    # tiny: a tiny random teacher unless --set teacher.model.checkpoint=... (tiny_variant keeps the setting)
    teacher = TeacherConfig(online=True, model=ModelConfig(kind="cross_encoder", dropout=0.0,
                                                           checkpoint="runs/scifact/teacher"))
    cfg = student_recipe("colbert_online", "colbert", LossConfig(name="margin_mse"), variant=None,
                         teacher=teacher)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, sampling="random", top_k=30))
    if variant == "tiny":
        return tiny_variant(cfg)
    if variant is not None:
        raise ValueError(f"unknown variant {variant!r} of colbert_online; known: tiny")
    return cfg
