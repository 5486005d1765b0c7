"""Joint retriever-reranker training (RocketQAv2; Ren et al. 2021, "RocketQAv2: A Joint Training Method for Dense
Passage Retrieval and Passage Re-ranking", arXiv:2110.07367): a dense retriever and a cross-encoder re-ranker
updated together in ONE step, two parameter sets and one optimiser state each, checkpointed together
(``params/reranker``, ``params/retriever``).

Dynamic listwise distillation: both score the same candidate list of each query (the positive first); the
re-ranker learns from the labels (listwise cross-entropy, ``infonce`` at T 1: the paper's L_sup) and the retriever
from the re-ranker's distribution of THIS step, ``KL(p_retriever || p_reranker)`` (``kl`` with ``reverse``: the
paper's L_KL), with no stop-gradient: the KL's gradient reaches both models, so the re-ranker also moves toward
what the retriever can represent. ``students.retriever.peer=reranker`` makes the coupling; the loss is
L_sup + L_KL. The re-ranker starts from a trained cross-encoder (a ``train-teacher`` work directory), the
retriever from all-MiniLM-L6-v2 (mean pooling, L2-normalised: cosine scores at T 0.05). The data is any candidate
dataset (its scores only sample the negatives).

    distill-jax train configs/rocketqav2.py --set data.dataset_dir=runs/scifact/teacher/labels \
        data.collection_dir=../shared/data/scifact students.reranker.model.checkpoint=runs/scifact/teacher
    distill-jax train configs/rocketqav2.py:tiny
"""

import dataclasses

from distill_jax.config import DataConfig, LossConfig, ModelConfig, StudentConfig, student_recipe, tiny_variant


def get_config(variant=None):
    reranker = student_recipe("reranker", "cross_encoder", LossConfig(name="infonce"),
                              model=ModelConfig(kind="cross_encoder", checkpoint="runs/scifact/teacher"))
    kl = LossConfig(name="kl", hp={"temperature": 0.05, "teacher_temperature": 1.0, "reverse": True})
    retriever = student_recipe("retriever", "dense", kl)
    retriever = dataclasses.replace(retriever, model=dataclasses.replace(retriever.model, dense_normalize=True))
    students = (StudentConfig("reranker", reranker.model, reranker.loss, reranker.optim),
                StudentConfig("retriever", retriever.model, retriever.loss, retriever.optim, peer="reranker"))
    cfg = student_recipe("rocketqav2", "cross_encoder", reranker.loss, variant=None, students=students,
                         model=reranker.model,
                         data=DataConfig(batch_size=16, n_candidates=8, query_maxlen=32, doc_maxlen=180,
                                         pair_maxlen=256, sampling="random", top_k=30))
    if variant == "tiny":
        return tiny_variant(cfg)
    if variant is not None:
        raise ValueError(f"unknown variant {variant!r} of rocketqav2; known: tiny")
    return cfg
