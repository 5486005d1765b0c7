"""``distill-jax score``: the answer key (see :mod:`distill_jax.teacher.answer_key`)."""

from __future__ import annotations

import argparse
import logging


def answer_key_doc() -> str:
    from distill_jax.teacher import answer_key

    return answer_key.__doc__


def main(argv: list[str]) -> int:
    from distill_jax.teacher.answer_key import ScoreConfig, run_score

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="distill-jax score", description=answer_key_doc(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", action="append", required=True, help="cross-encoder checkpoint (repeatable)")
    p.add_argument("--collection", required=True, help="BEIR folder")
    p.add_argument("--candidates", required=True, help="candidate JSONL from `distill-jax mine`")
    p.add_argument("--out", required=True, help="teacher-score dataset directory")
    p.add_argument("--split", default="train")
    p.add_argument("--num-shards", type=int, default=16)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--buckets", default="", help="comma-separated padded lengths (default 64,128,192,MAX)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--max-candidates", type=int, default=0)
    a = p.parse_args(argv)
    buckets = (tuple(int(x) for x in a.buckets.split(",")) if a.buckets else
               tuple(b for b in (64, 128, 192) if b < a.max_length) + (a.max_length,))
    cfg = ScoreConfig(tuple(a.teacher), a.collection, a.candidates, a.out, a.split, a.num_shards, a.max_length,
                      buckets, a.batch_size, a.dtype, a.max_candidates)
    from distill_jax import distributed

    distributed.initialize_if_multihost()  # host h of P scores shards h, h+P, ... (same variables as train)
    stats = run_score(cfg)
    print(f"score: {stats['shards_scored']} shard(s) scored, {stats['shards_skipped']} already done; "
          f"{stats['pairs']} pairs at {stats['pairs_per_s']:.1f} pairs/s; padding {stats['padding_fraction']:.1%}")
    return 0
