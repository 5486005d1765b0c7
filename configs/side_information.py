"""A teacher with side information (issue #16 item 10; the seed's multi-modal direction): the teacher scores each
(query, passage) pair with the cross-encoder, BM25 AND extra per-passage features (here all-MiniLM-L6-v2 vectors
of every passage and query, standing in for image embeddings), one answer-key column each; the student reads text
only and learns the z-score mean of the three columns. The student is the SciFact job's ``dense_distilled_t4``
(``:colbert``: ``colbert_distilled_t4``), its settings exactly (``configs/scifact.py``: InfoNCE with in-batch
negatives + listwise KL, teacher T 0.75, the student's side at 4x its InfoNCE temperature; 8 queries x 4
candidates, 32 / 128 tokens, AdamW 1e-4), at 300 steps; the answer key is the only change.

    S=../shared/data/scifact D=runs/scifact      # the job: distill-jax run configs/scifact.py ...
    distill-jax side-features --model sentence-transformers/all-MiniLM-L6-v2 --collection $S --out runs/side
    distill-jax score --teacher $D/teacher/teacher --teacher bm25 --teacher side:runs/side --collection $S \\
        --candidates $D/mine/train.jsonl --out runs/scores_side --max-candidates 7 --num-shards 8
    distill-jax train configs/side_information.py                # dense, -> runs/side_dense
    distill-jax train configs/side_information.py:colbert        # ColBERT, -> runs/side_colbert
    distill-jax train configs/side_information.py --set workdir=runs/twin_dense data.dataset_dir=$D/scores
                                                                 # the same student from the two-column key
    distill-jax train configs/side_information.py:tiny           # tiny random encoder, synthetic data, seconds

docs/recipes.md has the full commands (score options, retrieval) and the SciFact figures.
"""

import dataclasses
import os

from distill_jax.config import tiny_variant
from distill_jax.jobs.run import load_run_config, student_train_config

JOB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scifact.py")
STUDENT = {"dense": "dense_distilled_t4", "colbert": "colbert_distilled_t4"}


def get_config(variant=None):
    kind = "colbert" if variant == "colbert" else "dense"
    if variant not in (None, "", "colbert", "tiny"):
        raise ValueError(f"unknown variant {variant!r} of side_information; known: colbert, tiny")
    job = load_run_config(JOB)
    spec = next(s for s in job.students if s.name == STUDENT[kind])
    cfg = student_train_config(job, spec)
    cfg = dataclasses.replace(cfg, workdir=f"runs/side_{kind}", steps=300,
                              data=dataclasses.replace(cfg.data, dataset_dir="runs/scores_side"))
    return tiny_variant(cfg) if variant == "tiny" else cfg
