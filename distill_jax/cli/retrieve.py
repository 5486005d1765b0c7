"""``distill-jax retrieve``: a student's top-``depth`` documents for a BEIR split, written as a TREC run.

    distill-jax retrieve --model runs/colbert --collection ../shared/data/scifact --split test --out colbert.trec
    distill-jax retrieve --model sentence-transformers/all-MiniLM-L6-v2 --kind dense \\
        --collection ../shared/data/scifact --split test --out minilm.trec
    distill-jax retrieve --model runs/teacher --collection ../shared/data/scifact --split test \\
        --rerank bm25.trec --depth 100 --out teacher.trec

--model is a training work directory (its best, else latest, checkpoint; --step picks one) or a model
directory (Hugging Face, sentence-transformers, exported). ColBERT searches a float16 (or --store int8) token
store exhaustively, or --ivf candidates from faiss then exact MaxSim; SPLADE a scipy.sparse index; dense a
matrix. --rerank reranks a given run (TREC) or candidate JSONL with any kind, the cross-encoder included.
Prints corpus docs/s, query latency, the token store's bytes/token, SPLADE non-zeros and FLOPS.
"""

from __future__ import annotations

import argparse
import json
import logging


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distill-jax retrieve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="work directory, model directory or hub id")
    p.add_argument("--doc-model", default=None, metavar="MODEL",
                   help="asymmetric retrieval: encode the corpus with this model (same kind and vector space, e.g. "
                        "the teacher of a LEAF student) and the queries with --model")
    p.add_argument("--collection", required=True, help="BEIR folder")
    p.add_argument("--split", default="test", help="qrels split whose queries are searched (default: test)")
    p.add_argument("--out", required=True, metavar="RUN.trec", help="output TREC run")
    p.add_argument("--depth", type=int, default=1000, help="documents per query (reranking: the top DEPTH)")
    p.add_argument("--kind", choices=["colbert", "splade", "dense", "cross_encoder"], default=None,
                   help="model kind of a directory whose layout does not say it")
    p.add_argument("--step", type=int, default=None, help="checkpoint of a work directory (default: best, else "
                   "latest)")
    p.add_argument("--student", default=None, help="the student of a work directory of several, by name")
    p.add_argument("--rerank", default=None, metavar="CANDIDATES",
                   help="rerank this run (TREC) or candidate JSONL instead of searching the corpus")
    p.add_argument("--query-maxlen", type=int, default=None)
    p.add_argument("--doc-maxlen", type=int, default=None)
    p.add_argument("--pair-maxlen", type=int, default=None, help="cross-encoder (query, passage) length")
    p.add_argument("--batch-size", type=int, default=32, help="texts per encoder call (split over devices)")
    p.add_argument("--store", choices=["float16", "int8"], default="float16", help="ColBERT token precision")
    p.add_argument("--splade-top-k", type=int, default=0, help="keep each document's top K SPLADE weights")
    p.add_argument("--query-top-k", type=int, default=0, help="keep each query's top K SPLADE weights")
    p.add_argument("--ivf", action="store_true", help="ColBERT: faiss IVF candidates, then exact MaxSim")
    p.add_argument("--ivf-candidates", type=int, default=1000, help="documents per query scored exactly")
    p.add_argument("--ivf-k-tokens", type=int, default=32, help="stored tokens fetched per query token")
    p.add_argument("--ivf-nprobe", type=int, default=8)
    p.add_argument("--ivf-lists", type=int, default=None, help="IVF clusters (default ~4 sqrt(tokens))")
    p.add_argument("--pooling", choices=["cls", "mean"], default=None,
                   help="dense directory without a sentence-transformers Pooling module")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="dense: L2-normalise embeddings (default: as the directory's modules say)")
    p.add_argument("--colbert-dim", type=int, default=None, help="ColBERT projection size of a directory "
                   "without one (a fresh projection)")
    p.add_argument("--index", default=None, metavar="DIR", help="read the corpus index from DIR if it was built "
                   "from this model, corpus and settings (ColBERT: memory-mapped); else build it and save it there")
    p.add_argument("--latency-queries", type=int, default=10, help="queries timed one at a time (0: skip)")
    p.add_argument("--report", default=None, metavar="REPORT.json", help="write the cost figures as JSON")
    p.add_argument("--tag", default=None, help="the TREC run's tag column (default: the model kind)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="read a model directory holding only pytorch_model.bin (a pickle: trust its source)")
    return p


def _options(args) -> dict:
    out = {"allow_pickle": True} if args.allow_pickle else {}
    if args.pooling:
        out["pooling"] = args.pooling
    if args.normalize is not None:
        out["normalize"] = args.normalize
    if args.colbert_dim:
        from distill_jax.models import ColBERTConfig

        out["colbert"] = ColBERTConfig(dim=args.colbert_dim)
    return out


def _candidates(path: str, depth: int) -> dict[str, list[str]]:
    """{qid: top-``depth`` doc ids} from a TREC run or a candidate JSONL (positives and negatives)."""
    from distill_jax.data import candidates as cd

    if path.endswith((".jsonl", ".jsonl.gz")):
        logging.getLogger(__name__).warning(
            "%s is a candidate list: its judged positives are in every pool, so reranking it measures an upper "
            "bound, not a first-stage pipeline; rerank a TREC run for that", path)
        return {c["qid"]: list(dict.fromkeys(c["pos"] + c["neg"]))[:depth] for c in cd.read_candidates(path)}
    return {q: [d for d, _ in ranked[:depth]] for q, ranked in cd.read_trec_run(path).items()}


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from distill_jax.data.candidates import write_trec_run
    from distill_jax.data.collections import load_collection
    from distill_jax.eval import retrieve as rt
    from distill_jax.eval.encoding import Timer

    collection = load_collection(args.collection, args.split)
    rm = rt.load_model(args.model, args.kind, args.step, args.query_maxlen, args.doc_maxlen, args.pair_maxlen,
                       student=args.student, **_options(args))
    tag = args.tag or rm.kind
    if args.rerank:
        cands = _candidates(args.rerank, args.depth)
        passages = {d: collection.passage(d) for q in cands if q in collection.queries for d in cands[q]
                    if d in collection.corpus}
        with Timer() as t:
            run = rt.rerank(rm, collection.queries, passages, cands, args.batch_size, args.store)
        n_pairs = sum(len(r) for r in run.values())
        write_trec_run(args.out, run, tag)
        print(f"{rm.kind} from {rm.source}: reranked {n_pairs} candidates of {len(run)} queries "
              f"(top {args.depth} of {args.rerank}) in {t.seconds:.1f} s = {1000 * t.seconds / max(len(run), 1):.1f}"
              f" ms/query -> {args.out}")
        return 0
    ivf = None
    if args.ivf:
        ivf = {"n_candidates": args.ivf_candidates, "k_tokens": args.ivf_k_tokens, "nprobe": args.ivf_nprobe}
        if args.ivf_lists:
            ivf["n_lists"] = args.ivf_lists
    doc_ids, texts = collection.passages()
    doc_rm = None
    if args.doc_model:
        doc_rm = rt.load_model(args.doc_model, args.kind or rm.kind, None, args.query_maxlen, args.doc_maxlen,
                               args.pair_maxlen, **_options(args))
    run, report = rt.retrieve(rm, doc_ids, texts, collection.queries, args.depth, args.batch_size, args.store,
                              args.splade_top_k, args.query_top_k, ivf, args.latency_queries, args.index,
                              doc_model=doc_rm)
    write_trec_run(args.out, run, tag)
    print(report.describe())
    print(f"top {args.depth} of {len(run)} {args.split} queries -> {args.out}")
    if args.report:
        with open(args.report, "w") as f:
            json.dump(report.as_dict(), f, indent=2)
    return 0
