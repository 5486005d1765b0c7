"""``distill-jax mine``: BM25 hard negatives for a BEIR split, or fusion of candidate files.

    distill-jax mine --collection ../shared/data/scifact --split train --k 100 --out scifact-bm25.jsonl
    distill-jax mine --collection ../shared/data/scifact --split test --k 1000 --out bm25.jsonl --trec bm25.trec
    distill-jax mine --merge bm25.jsonl student.jsonl --fusion rrf --k 64 --out merged.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import os


def main(argv: list[str]) -> int:
    from distill_jax.data.negatives import BM25Config

    parser = argparse.ArgumentParser(prog="distill-jax mine", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collection", help="BEIR folder to mine with BM25")
    parser.add_argument("--split", default="train", help="qrels split whose queries are mined")
    parser.add_argument("--merge", nargs="+", metavar="JSONL", help="fuse these candidate files instead of mining")
    parser.add_argument("--fusion", default="rrf", choices=["rrf", "round_robin"])
    parser.add_argument("--k", type=int, default=100, help="retrieval depth and negatives kept per query")
    parser.add_argument("--out", required=True, help="output candidate JSONL")
    parser.add_argument("--trec", default=None, help="also write the BM25 ranking as a TREC run file")
    parser.add_argument("--k1", type=float, default=BM25Config.k1)
    parser.add_argument("--b", type=float, default=BM25Config.b)
    parser.add_argument("--method", default=BM25Config.method)
    parser.add_argument("--stopwords", default=BM25Config.stopwords, help="bm25s stopword list ('none' for none)")
    parser.add_argument("--stemmer", default=None, help="PyStemmer algorithm, e.g. english (needs PyStemmer)")
    parser.add_argument("--threads", type=int, default=0, help="bm25s retrieval threads (0: one)")
    parser.add_argument("--empty-docs", default="raise", choices=["raise", "skip", "keep"],
                        help="documents with no title and no text (Cranfield has two)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from distill_jax.data import candidates as cd
    from distill_jax.data.negatives import fuse

    check_output(args.out, "candidates")  # before any work: a bad --out fails in a second, not after mining
    if args.trec:
        check_output(args.trec, "trec")

    if args.merge:
        runs = [cd.candidates_to_run(cd.read_candidates(p)) for p in args.merge]
        pos = {}
        for p in args.merge:
            for c in cd.read_candidates(p):
                pos.setdefault(c["qid"], dict.fromkeys(c["pos"]))
        fused = fuse(runs, args.fusion, None)
        cands = [{"qid": q, "pos": list(pos[q]), "neg": [d for d, _ in r if d not in pos[q]][:args.k]}
                 for q, r in fused.items()]
        cd.write_candidates(args.out, cands)
        print(f"fused {len(args.merge)} files ({args.fusion}): {len(cands)} queries -> {args.out}")
        return 0
    if not args.collection:
        parser.error("give --collection (mine) or --merge (fuse)")

    from distill_jax.data.collections import load_collection
    from distill_jax.data.negatives import bm25_search
    from distill_jax.eval.metrics import evaluate_run

    collection = load_collection(args.collection, args.split, on_empty=args.empty_docs)
    config = BM25Config(k1=args.k1, b=args.b, method=args.method,
                        stopwords=None if args.stopwords in (None, "none") else args.stopwords,
                        stemmer=args.stemmer)
    doc_ids, texts = collection.passages()
    run = bm25_search(doc_ids, texts, collection.queries, args.k, config, args.threads)
    cands = cd.candidates_from_run(run, collection.qrels, args.k)
    cd.write_candidates(args.out, cands)
    print(f"BM25 top-{args.k} for {len(collection.queries)} {args.split} queries of {args.collection} "
          f"-> {args.out} ({len(cands)} candidate lists)")
    if args.trec:
        cd.write_trec_run(args.trec, run, tag="bm25")
        print(f"BM25 run -> {args.trec}")
    if collection.qrels:
        metrics = evaluate_run(collection.qrels, cd.as_scores(run), (f"R@{args.k}",))
        for name, value in metrics.items():
            print(f"recall of the positives {name} (ir-measures): {value:.4f}")
    return 0


def check_output(path: str, kind: str) -> None:
    """Refuses an output path that is a directory, or an existing file this command did not write (the first
    line is not a candidate list / TREC run row): ``mine`` overwrites only its own kind of file.

    Raises:
      IsADirectoryError, DataError: naming the path and the fix.
    """
    from distill_jax.data.collections import DataError, open_text

    if os.path.isdir(path):
        flag, example = ("--out", "candidates.jsonl") if kind == "candidates" else ("--trec", "run.trec")
        raise IsADirectoryError(f"{flag} {path} is a directory; pass a file name "
                                f"(e.g. {os.path.join(path, example)})")
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return
    with open_text(path) as f:
        first = next((line for line in f if line.strip()), "")
    if kind == "candidates":
        try:
            obj = json.loads(first)
            ours = isinstance(obj, dict) and {"qid", "pos", "neg"} <= set(obj)
        except json.JSONDecodeError:
            ours = False
    else:
        cols = first.split()
        ours = len(cols) == 6 and cols[1] == "Q0"
    if not ours:
        raise DataError(f"{path} exists and is not a {kind} file written by `distill-jax mine`; choose another "
                        "output path (or remove the file yourself)")
