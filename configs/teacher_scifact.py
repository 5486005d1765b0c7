"""Teacher cross-encoder fine-tuned from all-MiniLM-L6-v2 on SciFact train (qrels + BM25 hard negatives).

Listwise softmax cross-entropy (1 positive vs 7 BM25 negatives drawn from the top 30), 100 training queries held
out for model selection (reranking nDCG@10 of their BM25 top-20), then reranking of the test split's BM25 top-100.
A cross-encoder grown from a bi-encoder checkpoint has an untrained [CLS]/pooler path: at one learning rate for
all parameters its loss sits at ln(N) for the first ~40 steps (at 3e-5 far longer), hence the high peak learning
rate, the cosine decay (still near the peak when the plateau ends) and the 10x learning rate of the new head.

    distill-jax train-teacher configs/teacher_scifact.py --set workdir=runs/teacher_scifact
    distill-jax train-teacher configs/teacher_scifact.py:tiny     # seconds: a smoke run of the whole path
"""

import dataclasses
import os

from distill_jax.config import (CheckpointConfig, DataConfig, EvalConfig, LossConfig, ModelConfig, OptimConfig,
                                TrainConfig)

SCIFACT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "scifact")


def get_config(variant=None):
    cfg = TrainConfig(
        name="teacher_scifact", workdir="runs/teacher_scifact", steps=300, log_every=10,
        model=ModelConfig(kind="cross_encoder", checkpoint="sentence-transformers/all-MiniLM-L6-v2"),
        loss=LossConfig(name="infonce", hp={"temperature": 1.0}),
        optim=OptimConfig(learning_rate=1e-4, warmup_steps=15, schedule="cosine", weight_decay=0.01,
                          lr_multipliers={"classifier": 10.0, "pooler": 10.0}),
        # train-teacher writes the label dataset (qrels + BM25 negatives of the non-held-out queries) here
        data=DataConfig(dataset_dir="runs/teacher_scifact/labels", collection_dir=os.path.normpath(SCIFACT),
                        split="train", batch_size=8, n_candidates=8,
                        pair_maxlen=160, sampling="random", top_k=30),
        checkpoint=CheckpointConfig(every_steps=100, keep=1, keep_best=1, best_metric="nDCG@10"),
        eval=EvalConfig(every_steps=100, depth=20, batch_size=160, metrics=("nDCG@10",)),
    )
    if variant == "tiny":
        cfg = dataclasses.replace(
            cfg, name="teacher_tiny", workdir="runs/teacher_tiny", steps=4, log_every=2,
            data=dataclasses.replace(cfg.data, dataset_dir="runs/teacher_tiny/labels", batch_size=8, n_candidates=2,
                                     pair_maxlen=32),
            checkpoint=dataclasses.replace(cfg.checkpoint, every_steps=2),
            eval=dataclasses.replace(cfg.eval, every_steps=2, depth=4, max_queries=8, batch_size=32))
    elif variant is not None:
        raise ValueError(f"unknown variant {variant!r}; known: tiny")
    return cfg
