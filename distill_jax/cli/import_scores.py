"""``distill-jax import-scores``: a public teacher-score file (Hofstätter's TSV, sentence-transformers'
hard-negative JSONL with cross-encoder scores) -> a teacher-score dataset."""

from __future__ import annotations

import argparse
import logging
import os


def main(argv: list[str]) -> int:
    from distill_jax.data.scores import (BadInputPolicy, RecordChecker, build_teacher_scores, load_teacher_scores,
                                         read_ce_scores, read_hofstaetter_tsv, read_st_hard_negatives)
    from distill_jax.data.scores.schema import file_identity

    parser = argparse.ArgumentParser(
        prog="distill-jax import-scores",
        description="Convert a public teacher-score file to a teacher-score dataset (TFDS ArrayRecord).")
    parser.add_argument("--format", required=True, choices=["hofstaetter", "st-hard-negatives"])
    parser.add_argument("--input", required=True, help="the TSV (hofstaetter) or JSONL[.gz] (st-hard-negatives)")
    parser.add_argument("--ce-scores", help="st-hard-negatives: {qid: {pid: score}} as .json[.gz] or .pkl[.gz]")
    parser.add_argument("--allow-pickle", action="store_true", help="trust and unpickle --ce-scores")
    parser.add_argument("--systems", nargs="+", help="st-hard-negatives: only these mining systems")
    parser.add_argument("--negs-per-system", type=int)
    parser.add_argument("--teacher-name", default=None, help="name of the score column")
    parser.add_argument("--corpus", help="BEIR folder: check that every candidate id is in its corpus")
    parser.add_argument("--policy", default="raise", choices=["raise", "skip"])
    parser.add_argument("--max-skip-fraction", type=float, default=0.001)
    parser.add_argument("--empty-docs", default="raise", choices=["raise", "skip", "keep"],
                        help="--corpus documents with no title and no text (Cranfield has two)")
    parser.add_argument("--out", required=True, help="TFDS data dir (dataset lands in OUT/teacher_scores/1.0.0)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a dataset in OUT written from other inputs (only its own files are removed)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    corpus = None
    if args.corpus:
        from distill_jax.data.collections import read_corpus

        corpus = set(read_corpus(os.path.join(args.corpus, "corpus.jsonl"), on_empty=args.empty_docs))
    checker = RecordChecker(args.input, BadInputPolicy(args.policy, args.max_skip_fraction), 1, corpus,
                            hint="`distill-jax import-scores --policy skip`")
    if args.format == "hofstaetter":
        name = args.teacher_name or "hofstaetter-margin-mse"
        records = lambda: read_hofstaetter_tsv(args.input)  # noqa: E731
    else:
        name = args.teacher_name or "cross-encoder/ms-marco-MiniLM-L-6-v2"
        ce = read_ce_scores(args.ce_scores, args.allow_pickle) if args.ce_scores else None
        records = lambda: read_st_hard_negatives(args.input, ce, systems=args.systems,  # noqa: E731
                                                 negs_per_system=args.negs_per_system, checker=checker)
    # what the dataset is a function of: a rerun into the same --out with any of these changed is refused
    inputs = {"format": args.format, "input": file_identity(args.input), "ce_scores": file_identity(args.ce_scores),
              "systems": args.systems, "negs_per_system": args.negs_per_system, "teacher_name": name,
              "corpus": file_identity(os.path.join(args.corpus, "corpus.jsonl")) if args.corpus else None,
              "empty_docs": args.empty_docs if args.corpus else None, "policy": args.policy,
              "max_skip_fraction": args.max_skip_fraction}
    out = build_teacher_scores(records, args.out, [name], checker, inputs=inputs, overwrite=args.overwrite)
    ds = load_teacher_scores(out)
    skipped = {k: v for k, v in checker.counts.items() if v}
    print(f"wrote {len(ds)} queries ({name}) to {out}; skipped: {skipped or 'none'}")
    return 0
