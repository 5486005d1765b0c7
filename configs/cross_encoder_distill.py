"""Cross-encoder -> smaller cross-encoder (TinyBERT-style; Jiao et al. 2020, "TinyBERT: Distilling BERT for
Natural Language Understanding", arXiv:1909.10351): a frozen 6-layer cross-encoder teacher, online, scores each
batch's (query, passage) pairs; a 2-layer cross-encoder that starts from the teacher's first two layers (pooler
and classifier included) learns its logits (listwise KL over each query's candidates; or --set loss.name=mse for
pointwise logit MSE) and its hidden states: student hidden state 1 against the teacher's 3, 2 against 6
(TinyBERT's uniform layer map; 0 = embeddings; drop the term with --set loss.objectives=[]).

The teacher is a ``train-teacher`` work directory (its best checkpoint) or an exported / Hugging Face
cross-encoder directory; the data is any candidate dataset (its scores only sample the negatives). A reranker
three times cheaper per pair than its teacher.

    distill-jax train configs/cross_encoder_distill.py --set data.dataset_dir=runs/scifact/teacher/labels \
        data.collection_dir=../shared/data/scifact teacher.model.checkpoint=runs/scifact/teacher
    distill-jax train configs/cross_encoder_distill.py:tiny  # 4-layer random teacher -> 2-layer student, seconds
"""

import dataclasses

from distill_jax.config import (CheckpointConfig, DataConfig, LossConfig, ModelConfig, ObjectiveConfig,
                                TeacherConfig, random_teacher, student_recipe, tiny_variant)


def get_config(variant=None):
    teacher = TeacherConfig(online=True, init_student=True, model=ModelConfig(
        kind="cross_encoder", dropout=0.0, checkpoint="runs/scifact/teacher"))
    hidden = ObjectiveConfig("hidden_mse", 1.0, "pairs", {"layers": [[1, 3], [2, 6]]})
    loss = LossConfig(name="kl", objectives=(hidden,))
    cfg = student_recipe("cross_encoder_distill", "cross_encoder", loss, variant=None, teacher=teacher,
                         model=ModelConfig(kind="cross_encoder", init_layers=(0, 1)),
                         data=DataConfig(batch_size=16, n_candidates=8, pair_maxlen=256, sampling="random",
                                         top_k=30),
                         checkpoint=CheckpointConfig(every_steps=2000, keep=2, keep_best=1))
    if variant == "tiny":  # a random 4-layer teacher; its hidden states 2 and 4 (tiny_variant: 2-layer models)
        tiny = random_teacher(tiny_variant(cfg), num_layers=4)
        loss = dataclasses.replace(tiny.loss, objectives=(dataclasses.replace(
            tiny.loss.objectives[0], hp={"layers": [[1, 2], [2, 4]]}),))
        return dataclasses.replace(tiny, loss=loss)
    if variant is not None:
        raise ValueError(f"unknown variant {variant!r} of cross_encoder_distill; known: tiny")
    return cfg
