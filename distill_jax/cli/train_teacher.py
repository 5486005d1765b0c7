"""``distill-jax train-teacher CONFIG``: fine-tune a cross-encoder teacher (see :mod:`distill_jax.jobs.train_teacher`)."""

from __future__ import annotations

import argparse
import json
import logging


def main(argv: list[str]) -> int:
    from distill_jax import kinds
    from distill_jax.config import ConfigError, load_config
    from distill_jax.jobs import train_teacher as job

    p = argparse.ArgumentParser(prog="distill-jax train-teacher", description=job.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="a cross_encoder recipe, e.g. configs/teacher_scifact.py")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config fields")
    p.add_argument("--holdout", type=int, default=100, help="training queries held out for model selection")
    p.add_argument("--k", type=int, default=100, help="BM25 candidates per query")
    p.add_argument("--eval-split", default="test")
    p.add_argument("--test-depth", type=int, default=100, help="rerank the BM25 top-N of the evaluation split")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = load_config(a.config, a.set)
    if not kinds.get(cfg.model.kind).scores_pairs:  # a teacher scores (query, passage) pairs
        raise ConfigError(f"train-teacher needs a cross_encoder config; {a.config} trains a {cfg.model.kind}")
    from distill_jax import distributed

    distributed.initialize_if_multihost()  # the variables `train` reads; process 0 prepares the data
    summary = job.train_teacher(cfg, a.holdout, a.k, a.eval_split, a.test_depth)
    print(json.dumps(summary, indent=1))
    return 0
