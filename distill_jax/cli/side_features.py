"""``distill-jax side-features --model ENCODER --collection BEIR --out DIR``: side information for a teacher.

Encodes every passage and every query of a collection with a dense encoder (a sentence-transformers / Hugging
Face directory or a dense ``distill-jax train`` work directory) and writes a side-feature directory
(:mod:`distill_jax.teacher.side`): the stand-in, on a text collection, for per-passage image embeddings and a
text tower that maps queries into their space. ``distill-jax score --teacher CROSS_ENCODER --teacher side:DIR``
then scores each pair with both, and a student trained with ``data.teacher_combine=zmean`` learns the fused
teacher from text alone."""

from __future__ import annotations

import argparse
import logging


def main(argv: list[str]) -> int:
    """``argv``: the arguments after ``side-features``. Returns the exit code."""
    p = argparse.ArgumentParser(prog="distill-jax side-features", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="dense encoder: model directory, hub id or work directory")
    p.add_argument("--collection", required=True, help="BEIR folder (every passage and query is encoded)")
    p.add_argument("--out", required=True, help="new side-feature directory")
    p.add_argument("--query-maxlen", type=int, default=None)
    p.add_argument("--doc-maxlen", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--pooling", choices=["cls", "mean"], default=None, help="pooling of a plain HF directory")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="L2-normalise (cosine scores); default: as the directory's serving layout says")
    p.add_argument("--empty-docs", choices=["raise", "skip", "keep"], default="raise",
                   help="collection documents with no text (Cranfield: skip)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from distill_jax.data.collections import load_collection
    from distill_jax.eval import retrieve as rt
    from distill_jax.teacher.side import write_side_features

    options = {k: v for k, v in (("pooling", a.pooling), ("normalize", a.normalize)) if v is not None}
    rm = rt.load_model(a.model, "dense", None, a.query_maxlen, a.doc_maxlen, **options)
    collection = load_collection(a.collection, None, on_empty=a.empty_docs)
    doc_ids, texts = collection.passages()
    passages = rt.encode_corpus(rm, texts, a.batch_size).vectors
    query_ids = list(collection.queries)
    queries = rt.encode_queries(rm, [collection.queries[q] for q in query_ids], a.batch_size, desc="encode queries")
    meta = {"source": rm.source, "kind": "dense", "query_maxlen": rm.query_maxlen, "doc_maxlen": rm.doc_maxlen,
            "collection": a.collection}
    write_side_features(a.out, query_ids, queries, doc_ids, passages, meta)
    print(f"side features of {len(doc_ids)} passages and {len(query_ids)} queries (dim {passages.shape[1]}, "
          f"{rm.source}) -> {a.out}; score with --teacher side:{a.out}")
    return 0
