"""Throughput of chunked corpus scoring: MaxSim top-k (ColBERT) and dot-product top-k (SPLADE/dense).

The default geometry is the evaluation one: 100k documents x 180 tokens x 128 dims in bfloat16
(4.3 GiB), 32 queries x 32 tokens, which fits a 24 GiB accelerator. Values are random (speed does not
depend on them).

    python scripts/bench_scoring.py                                    # accelerator, full size
    python scripts/bench_scoring.py --docs 10000 --dtype float32      # a CPU-sized run

Prints one line per kernel: seconds per call (after a compile call), documents/s, query-document pairs/s
and the similarity matmul rate (2 * B * C * Lq * Ld * D flops for MaxSim, 2 * B * C * E for dot).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from distill_jax import scoring


def _time(fn, repeat: int) -> tuple[float, float]:
    """(compile + first call seconds, best of ``repeat`` steady-state seconds)."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return first, best


def _peak_bytes() -> str:
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return f"{peak / 2**30:.2f} GiB" if peak else "n/a (no allocator statistics on this backend)"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--docs", type=int, default=100_000, help="corpus size C")
    p.add_argument("--doc-len", type=int, default=180, help="tokens per document Ld")
    p.add_argument("--dim", type=int, default=128, help="ColBERT token dimension D")
    p.add_argument("--queries", type=int, default=32, help="queries per call B")
    p.add_argument("--query-len", type=int, default=32, help="tokens per query Lq")
    p.add_argument("--chunk-size", type=int, default=1000, help="documents per scan step")
    p.add_argument("--k", type=int, default=100, help="top-k kept per query")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--vector-dim", type=int, default=768,
                   help="E of the dot-product benchmark (0: skip it)")
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args(argv)

    dtype = jnp.dtype(a.dtype)
    keys = jax.random.split(jax.random.key(0), 4)
    corpus = jax.random.normal(keys[0], (a.docs, a.doc_len, a.dim), dtype)
    # Ragged documents: lengths uniform in [Ld/4, Ld] (real passages are mostly shorter than doc_maxlen).
    lengths = jax.random.randint(keys[1], (a.docs, 1), a.doc_len // 4, a.doc_len + 1)
    corpus_mask = jnp.arange(a.doc_len)[None] < lengths
    q = jax.random.normal(keys[2], (a.queries, a.query_len, a.dim), dtype)
    q_mask = jnp.ones((a.queries, a.query_len), bool)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    print(f"corpus: {a.docs} docs x {a.doc_len} tokens x {a.dim} dims {a.dtype} "
          f"= {corpus.nbytes / 2**30:.2f} GiB; queries {a.queries} x {a.query_len}; "
          f"chunk {a.chunk_size}; k {a.k}")

    first, best = _time(lambda: scoring.maxsim_corpus(q, q_mask, corpus, corpus_mask,
                                                      chunk_size=a.chunk_size, k=a.k), a.repeat)
    flops = 2 * a.queries * a.docs * a.query_len * a.doc_len * a.dim
    print(f"maxsim_corpus: {best:.3f} s/call (first call {first:.1f} s), {a.docs / best:,.0f} docs/s, "
          f"{a.queries * a.docs / best:,.0f} query-doc pairs/s, {flops / best / 1e12:.2f} TFLOP/s")

    if a.vector_dim:
        del corpus
        vectors = jax.random.normal(keys[3], (a.docs, a.vector_dim), dtype)
        vq = vectors[: a.queries]
        first, best = _time(lambda: scoring.dot_corpus(vq, vectors, chunk_size=a.chunk_size * 10, k=a.k),
                            a.repeat)
        flops = 2 * a.queries * a.docs * a.vector_dim
        print(f"dot_corpus (E={a.vector_dim}): {best * 1e3:.1f} ms/call (first call {first:.1f} s), "
              f"{a.queries * a.docs / best:,.0f} query-doc pairs/s, {flops / best / 1e12:.3f} TFLOP/s")
    print(f"peak device memory: {_peak_bytes()}")


if __name__ == "__main__":
    main()
