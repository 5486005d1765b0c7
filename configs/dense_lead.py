"""LEAD layer-wise distillation (Sun et al. 2023, "LEAD: Liberal Feature-based Distillation for Dense
Retrieval", arXiv:2212.05225): a frozen 6-layer dense teacher, online, teaches a 2-layer dense student with two
signals: listwise KL on the teacher's scores of the batch's candidates, and, for chosen (student, teacher) layer
pairs, KL between the two models' [CLS]-to-token attention distributions (``softmax(h_CLS . h_j / sqrt(H))`` over
each text's tokens) of the queries and the passages (objective ``lead``). The distributions live on tokens, not
on hidden units, so the teacher's layers can be picked "liberally" and the widths may differ; the layers are
config (``loss.objectives[*].hp.layers``, Hugging Face numbering: 0 = embeddings, i = layer i).

The teacher is a distill-jax train work directory of a dense student (e.g. the SciFact job's dense_distilled) or
a sentence-transformers / Hugging Face directory with the student's tokenizer; the student starts from its first
two layers (``teacher.init_student``, ``model.init_layers=0,1``).

    distill-jax train configs/dense_lead.py --set data.dataset_dir=runs/scifact/scores \
        data.collection_dir=../shared/data/scifact teacher.model.checkpoint=runs/scifact/students/dense_distilled
    distill-jax train configs/dense_lead.py:tiny            # tiny random 4-layer teacher -> 2-layer student
"""

import dataclasses

from distill_jax.config import (LossConfig, ModelConfig, ObjectiveConfig, TeacherConfig, random_teacher,
                                student_recipe, tiny_variant)


def lead_terms(layers) -> tuple[ObjectiveConfig, ...]:
    """The ``lead`` objective on queries and passages for the (student, teacher) layer pairs ``layers``."""
    return tuple(ObjectiveConfig("lead", 1.0, group, {"layers": [list(p) for p in layers]}, label=f"lead_{group}")
                 for group in ("query", "docs"))


def get_config(variant=None):
    teacher = TeacherConfig(online=True, init_student=True, model=ModelConfig(
        kind="dense", dropout=0.0, checkpoint="runs/scifact/students/dense_distilled"))
    loss = LossConfig(name="kl", hp={"temperature": 0.05, "teacher_temperature": 0.05},
                      objectives=lead_terms(((1, 3), (2, 6))))
    cfg = student_recipe("dense_lead", "dense", loss, variant=None, teacher=teacher,
                         model=ModelConfig(kind="dense", init_layers=(0, 1)))
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, sampling="random", top_k=30))
    if variant == "tiny":  # a random 4-layer teacher (tiny_variant makes every model 2 layers); its random
        # scores are not cosines, so KL at T 1
        tiny = random_teacher(tiny_variant(cfg), num_layers=4)
        return dataclasses.replace(tiny, loss=dataclasses.replace(tiny.loss, hp={},
                                                                  objectives=lead_terms(((1, 2), (2, 4)))))
    if variant is not None:
        raise ValueError(f"unknown variant {variant!r} of dense_lead; known: tiny")
    return cfg
