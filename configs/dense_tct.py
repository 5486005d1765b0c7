"""TCT-ColBERT (Lin, Yang and Lin 2021, "In-Batch Negatives for Knowledge Distillation with Tightly-Coupled
Teachers for Dense Retrieval"): a frozen ColBERT teacher, online, scores every (query, document) pair of the
batch by MaxSim, the query's own candidates AND every other query's ([B, N + B*N]), and a dense single-vector
student learns that distribution by listwise KL (``loss.hp.teacher_in_batch``): the cheap late-interaction
teacher makes in-batch distillation affordable, which a cross-encoder (one forward per pair, B x B*N pairs)
would not be.

The teacher is a distill-jax train work directory of a ColBERT (its best, else latest, checkpoint) or an exported
PyLate / Hugging Face ColBERT directory, with the student's tokenizer; it tokenises with its own markers, the
student reads plain text. The student is all-MiniLM-L6-v2 with mean pooling.

    distill-jax train configs/dense_tct.py --set data.dataset_dir=runs/scifact/teacher/labels \
        data.collection_dir=../shared/data/scifact teacher.model.checkpoint=runs/scifact/students/colbert_distilled
    distill-jax train configs/dense_tct.py:tiny              # tiny random ColBERT teacher, dense student, seconds
"""

import dataclasses

from distill_jax.config import LossConfig, ModelConfig, TeacherConfig, random_teacher, student_recipe, tiny_variant


def get_config(variant=None):
    teacher = TeacherConfig(online=True, model=ModelConfig(
        kind="colbert", dropout=0.0, checkpoint="runs/scifact/students/colbert_distilled"))
    cfg = student_recipe("dense_tct", "dense", LossConfig(name="kl", hp={"teacher_in_batch": True}), variant=None,
                         teacher=teacher)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, sampling="random", top_k=30))
    if variant == "tiny":  # a random ColBERT teacher
        return random_teacher(tiny_variant(cfg))
    if variant is not None:
        raise ValueError(f"unknown variant {variant!r} of dense_tct; known: tiny")
    return cfg
