"""The main job on the embedded default collection (Python stdlib docstrings), students from all-MiniLM-L6-v2:
mine -> train-teacher -> score -> ColBERT Margin-MSE and SPLADE MSE+FLOPS (+ their InfoNCE no-distillation
twins) -> retrieve -> evaluate -> export. Sized for about 15 minutes on 2 CPU cores (docs/run.md).

    distill-jax run                                              # = distill-jax run configs/run_default.py
    distill-jax run configs/run_default.py --workdir runs/run_default
    distill-jax run configs/run_default.py:tiny --workdir /tmp/run_tiny   # random 2-layer models, a miniature
"""

import dataclasses

from distill_jax.jobs.run import MineSpec, ModelSpec, RunConfig, ScoreSpec, TeacherSpec, TrainingSpec


def get_config(variant=None):
    cfg = RunConfig()  # the defaults are the default job (distill-jax run without a config)
    if variant in (None, ""):
        return cfg
    if variant == "tiny":
        return tiny(cfg)
    raise ValueError(f"unknown variant {variant!r} of run_default; known: tiny")


def tiny(cfg: RunConfig) -> RunConfig:
    """A miniature of ``cfg``: 300 documents, a random 2-layer encoder with the MiniLM tokenizer, a few steps."""
    return dataclasses.replace(
        cfg, name=cfg.name + "_tiny", workdir=cfg.workdir + "_tiny",
        builtin=dataclasses.replace(cfg.builtin, max_docs=300),
        model=ModelSpec(checkpoint=cfg.model.checkpoint, random_tiny=True),
        mine=MineSpec(k=8, max_queries=64),
        teacher=TeacherSpec(steps=4, batch_size=8, n_candidates=4, pair_maxlen=48, learning_rate=1e-3,
                            warmup_steps=1, k=8, top_k=8, holdout=8, eval_every=0, checkpoint_every=2),
        score=ScoreSpec(max_candidates=3, num_shards=2, batch_size=32),
        training=TrainingSpec(steps=4, batch_size=8, n_candidates=4, query_maxlen=16, doc_maxlen=32,
                              learning_rate=1e-3, warmup_steps=1, top_k=0, checkpoint_every=2),
        eval=dataclasses.replace(cfg.eval, rerank_depth=10, base_dense=False, batch_size=32),
    )
