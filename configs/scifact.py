"""The main job on SciFact (BEIR; 5,183 abstracts, 809 train / 300 test queries), students from all-MiniLM-L6-v2:
mine -> train-teacher -> score -> ColBERT, SPLADE and dense students distilled from the teacher, each beside its
no-distillation twin (InfoNCE on the qrels positives, the same negatives, steps and start) -> retrieve from the
whole corpus -> evaluate on test -> export. Sized for about three hours on 2 CPU cores (README, "SciFact").

    distill-jax run configs/scifact.py --data ../shared/data/scifact --workdir runs/scifact

Sizing (what a CPU allows; a GPU run would raise every length and step count):
- teacher: 200 steps x 8 queries x 6 candidates (1 positive + 5 BM25 negatives from the top 30), pairs of 128
  tokens (SciFact abstracts run ~300 tokens: the pair keeps the title and the first ~100 words), 100 train queries
  held out; the last checkpoint is used.
- answer key: every train query's positives + its 7 highest BM25 negatives.
- students: 100 steps x 8 queries x 4 candidates (~1 pass over the train queries), queries 32 / documents 128
  tokens, AdamW 1e-4. SPLADE distils with Margin-MSE (+ FLOPS), the SPLADE++ objective: its targets are the
  teacher's score differences, so no shift of the teacher's logits into SPLADE's >= 0 range has to be guessed
  before the teacher exists (the embedded default, with a known teacher, uses MSE + FLOPS).
- test: all 300 queries; the teacher reranks BM25's top 100; students retrieve their top 100 from all 5,183.
"""

import dataclasses
import os

from distill_jax.jobs.run import (EvalSpec, MineSpec, RunConfig, ScoreSpec, StudentSpec, TeacherSpec,
                                  TrainingSpec)

SCIFACT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                                        "scifact"))

STUDENTS = (
    StudentSpec("colbert_margin_mse", "colbert_margin_mse.py"),
    StudentSpec("colbert_infonce", "colbert_infonce.py", twin_of="colbert_margin_mse"),
    StudentSpec("splade_margin_mse", "splade_margin_mse.py", overrides=("loss.reg_warmup_steps=30",)),
    StudentSpec("splade_infonce", "splade_infonce.py", twin_of="splade_margin_mse",
                overrides=("loss.reg_warmup_steps=30",)),
    StudentSpec("dense_margin_mse", "dense_margin_mse.py"),
    StudentSpec("dense_infonce", "dense_infonce.py", twin_of="dense_margin_mse"),
)


def get_config(variant=None):
    cfg = RunConfig(
        name="scifact", workdir="runs/scifact", data=SCIFACT,
        mine=MineSpec(k=30, max_queries=0),
        teacher=TeacherSpec(steps=200, batch_size=8, n_candidates=6, pair_maxlen=128, learning_rate=1e-4,
                            warmup_steps=15, head_lr_multiplier=10.0, k=30, top_k=30, holdout=100, eval_every=0,
                            checkpoint_every=50),
        score=ScoreSpec(max_candidates=7, num_shards=8, batch_size=32),
        training=TrainingSpec(steps=100, batch_size=8, n_candidates=4, query_maxlen=32, doc_maxlen=128,
                              learning_rate=1e-4, warmup_steps=10, checkpoint_every=25),
        students=STUDENTS,
        eval=EvalSpec(depth=100, rerank_depth=100, batch_size=64),
    )
    if variant in (None, ""):
        return cfg
    if variant == "small":  # a 30-minute look at the same pipeline: 60 test queries, short runs
        return dataclasses.replace(
            cfg, name="scifact_small", workdir="runs/scifact_small",
            mine=dataclasses.replace(cfg.mine, max_queries=200),
            teacher=dataclasses.replace(cfg.teacher, steps=40, holdout=20),
            training=dataclasses.replace(cfg.training, steps=20),
            eval=dataclasses.replace(cfg.eval, max_queries=60, rerank_depth=30))
    raise ValueError(f"unknown variant {variant!r} of scifact; known: small")
