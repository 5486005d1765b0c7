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
    p.add_argument("--teacher", action="append", required=True, help="cross-encoder checkpoint (repeatable: one column each); 'bm25' = the lexical teacher (each pair's BM25 score); 'side:DIR' = side information (query . passage vectors of a side-feature directory, distill-jax side-features)")
    p.add_argument("--collection", required=True, help="BEIR folder")
    p.add_argument("--candidates", required=True, help="candidate JSONL from `distill-jax mine`")
    p.add_argument("--out", required=True, help="teacher-score dataset directory")
    p.add_argument("--split", default="train")
    p.add_argument("--num-shards", type=int, default=16)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--buckets", default="", help="comma-separated padded lengths (default 64,128,192,MAX)")
    p.add_argument("--batch-size", type=int, default=128,
                   help="pairs per step across every device of the job (all hosts)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--max-candidates", type=int, default=0)
    p.add_argument("--bad-records", default="raise", choices=("raise", "skip"),
                   help="a bad candidate list (unknown query or passage id, a passage listed twice, no judged "
                        "positive) or a non-finite score: stop naming it, or drop the query and count it")
    p.add_argument("--max-skip-fraction", type=float, default=0.001,
                   help="with --bad-records skip, still stop when more than this fraction of queries is bad")
    p.add_argument("--empty-docs", default="raise", choices=("raise", "skip", "keep"),
                   help="collection documents with no title and no text (Cranfield has two): stop, leave them "
                        "(and their judgements) out, or score them as empty passages")
    p.add_argument("--allow-pickle", action="store_true",
                   help="read a teacher directory holding only pytorch_model.bin (a pickle: trust its source)")
    a = p.parse_args(argv)
    buckets = (tuple(int(x) for x in a.buckets.split(",")) if a.buckets else
               tuple(b for b in (64, 128, 192) if b < a.max_length) + (a.max_length,))
    cfg = ScoreConfig(tuple(a.teacher), a.collection, a.candidates, a.out, a.split, a.num_shards, a.max_length,
                      buckets, a.batch_size, a.dtype, a.max_candidates, bad_records=a.bad_records,
                      max_skip_fraction=a.max_skip_fraction, empty_docs=a.empty_docs,
                      allow_pickle=a.allow_pickle)
    from distill_jax import distributed

    distributed.initialize_if_multihost()  # host h of P scores shards h, h+P, ... (same variables as train)
    stats = run_score(cfg)
    skipped = stats.get("records_skipped") or {}
    print(f"score: {stats['shards_scored']} shard(s) scored, {stats['shards_skipped']} already done; "
          f"{stats['pairs']} pairs at {stats['pairs_per_s']:.1f} pairs/s; padding {stats['padding_fraction']:.1%}"
          + (f"; skipped {skipped}" if skipped else ""))
    return 0
