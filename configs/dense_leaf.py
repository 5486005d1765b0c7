"""LEAF embedding alignment (Vujanic and Rueckstiess 2025, "LEAF: Knowledge Distillation of Text Embedding
Models with Teacher-Aligned Representations", arXiv:2509.12539): a small dense student learns to put each query
and each passage where a frozen dense teacher puts it (1 - cosine of the two vectors of the same text), with no
relevance judgments, no scores and no negatives in the loss. Because the student lives in the teacher's vector
space, it can serve asymmetrically: queries encoded by the cheap student, the corpus indexed once by the teacher
(``distill-jax retrieve --doc-model TEACHER``).

The teacher is all-MiniLM-L6-v2 as shipped (mean pooling, unit vectors, as its sentence-transformers modules; any dense directory works: an exported
distill-jax dense student, a sentence-transformers directory); the student starts from its first two layers
(``teacher.init_student``, ``model.init_layers=0,1``). The texts are the queries and candidates of any candidate
dataset (the BM25 label dataset ``train-teacher`` writes, or an answer key): its labels and scores only decide
which passages come along.

    distill-jax train configs/dense_leaf.py --set data.dataset_dir=runs/scifact/teacher/labels \
        data.collection_dir=../shared/data/scifact
    distill-jax train configs/dense_leaf.py:tiny            # tiny random 4-layer teacher -> 2-layer student
"""

import dataclasses

from distill_jax.config import (LossConfig, ModelConfig, ObjectiveConfig, TeacherConfig, random_teacher,
                                student_recipe, tiny_variant)

ALIGN = (ObjectiveConfig("embedding_alignment", 1.0, "query", {"metric": "cosine"}, label="align_query"),
         ObjectiveConfig("embedding_alignment", 1.0, "docs", {"metric": "cosine"}, label="align_docs"))


def get_config(variant=None):
    teacher = TeacherConfig(online=True, init_student=True, model=ModelConfig(
        kind="dense", dropout=0.0, checkpoint="sentence-transformers/all-MiniLM-L6-v2", dense_normalize=True))
    cfg = student_recipe("dense_leaf", "dense", LossConfig(name="", objectives=ALIGN), variant=None,
                         teacher=teacher, model=ModelConfig(kind="dense", init_layers=(0, 1), dense_normalize=True))
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, sampling="random", top_k=30))
    if variant == "tiny":  # a random 4-layer teacher (tiny_variant makes every model 2 layers)
        return random_teacher(tiny_variant(cfg), num_layers=4)
    if variant is not None:
        raise ValueError(f"unknown variant {variant!r} of dense_leaf; known: tiny")
    return cfg
