"""Train-step benchmark: steps/s, examples/s and model-FLOPs utilisation for ColBERT and SPLADE students.

    .venv/bin/python scripts/bench_train.py                      # both kinds, float32, MiniLM geometry
    .venv/bin/python scripts/bench_train.py --dtype bfloat16 --kinds colbert --steps 10
    .venv/bin/python scripts/bench_train.py --kinds splade --batch 16 --candidates 2 --steps 3 --splade-head plain

Setting of the issue: batch 16 queries x (1 + 7) candidates, query length 32, document length 180 (ColBERT) /
128 (SPLADE), all-MiniLM-L6-v2 geometry (6 layers, hidden 384, 12 heads, FFN 1536, vocab 30522) with random
weights, the real jitted train step over all local devices (Margin-MSE; SPLADE with FLOPS).

MFU = analytic model FLOPs per step / step time / measured peak, where the peak is the best throughput of a
large jnp matmul in the same dtype on the same devices (so "100%" means matmul-bound at the speed this machine
really reaches, not a datasheet number). Model FLOPs count the matmuls of the forward pass (projections, FFN,
attention scores and context, ColBERT projection, SPLADE MLM transform + vocabulary decoder, MaxSim / dot
scores) times 3 for forward + backward; SPLADE's vocabulary decoder is counted as the head really runs it
(``splade_head.head_flops``: the plain head 3x its forward, the argmax head forward + 4 N V H), and the line
prints both counts and the predicted share of the step's FLOPs the argmax head removes.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import jax
import jax.numpy as jnp

from distill_jax import distributed
from distill_jax.config import DataConfig, LossConfig, ModelConfig, OptimConfig, TrainConfig
from distill_jax.models.splade_head import head_flops
from distill_jax.train import state as state_lib
from distill_jax.train.step import compile_train_step
from distill_jax.data.synthetic import SyntheticBatches

MINILM = dict(vocab_size=30522, hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536,
              max_position_embeddings=512)


def encoder_flops(n_seq: int, length: int, h: int, inter: int, layers: int) -> float:
    """Forward matmul FLOPs of a BERT encoder over ``n_seq`` sequences of ``length`` tokens."""
    per_layer = 2 * length * (4 * h * h + 2 * h * inter) + 2 * 2 * length * length * h
    return float(n_seq * layers * per_layer)


def model_flops_per_step(kind: str, b: int, n: int, lq: int, ld: int, colbert_dim: int = 128,
                         splade_head: str = "argmax") -> float:
    """Analytic training FLOPs of one step: the forward's matmuls x 3, except SPLADE's vocabulary decoder, which
    counts as ``splade_head`` ("plain" or "argmax") runs it."""
    h, inter, layers, v = MINILM["hidden_size"], MINILM["intermediate_size"], MINILM["num_layers"], MINILM["vocab_size"]
    fwd = encoder_flops(b, lq, h, inter, layers) + encoder_flops(b * n, ld, h, inter, layers)
    tokens = b * lq + b * n * ld
    if kind == "colbert":
        fwd += 2 * tokens * h * colbert_dim + 2 * b * n * lq * ld * colbert_dim
    elif kind == "splade":
        fwd += 2 * tokens * h * h + 2 * b * n * v  # MLM transform, dot scores
        decoder = head_flops(b, lq, h, v)[splade_head] + head_flops(b * n, ld, h, v)[splade_head]
        return 3.0 * fwd + decoder
    return 3.0 * fwd


def matmul_peak(dtype, size: int = 2048, reps: int = 5) -> float:
    """Best measured FLOP/s of a [size, size] @ [size, size] matmul per device, times the device count."""
    x = jnp.ones((size, size), dtype)
    f = jax.jit(lambda a: a @ a)
    f(x).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f(x).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best * len(jax.devices())


def bench(kind: str, args) -> dict:
    ld = args.doc_len or (180 if kind == "colbert" else 128)
    loss = (LossConfig(name="margin_mse") if kind == "colbert" else
            LossConfig(name="margin_mse", regularizer_q="flops", regularizer_d="flops", lambda_q=0.1, lambda_d=0.08,
                       reg_warmup_steps=100))
    cfg = TrainConfig(
        name=f"bench_{kind}", steps=1000,
        model=ModelConfig(kind=kind, dtype=args.dtype, remat=args.remat, splade_chunk_size=args.splade_chunk,
                          splade_argmax_head=args.splade_head == "argmax", **MINILM),
        loss=loss, optim=OptimConfig(learning_rate=1e-5, warmup_steps=10),
        data=DataConfig(source="synthetic", batch_size=args.batch, n_candidates=args.candidates,
                        query_maxlen=args.query_len, doc_maxlen=ld))
    mesh = distributed.make_mesh()
    distributed.check_batch_divisibility(cfg.data.batch_size, mesh)
    model, _, _ = state_lib.make_model(cfg)
    tx = state_lib.make_optimizer(cfg.optim, cfg.steps)
    state, shardings = state_lib.create_state(model, tx, mesh, 0)
    step = compile_train_step(model, cfg, tx, mesh, shardings)
    data = SyntheticBatches(cfg.data, kind, MINILM["vocab_size"])
    batches = [distributed.global_batch({k: v for k, v in next(data).items() if k != "index"}, mesh)
               for _ in range(2)]
    t = time.perf_counter()
    state, m = step(state, batches[0])
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t
    for i in range(args.warmup):
        state, m = step(state, batches[i % 2])
    jax.block_until_ready(m)
    t = time.perf_counter()
    for i in range(args.steps):
        state, m = step(state, batches[i % 2])
    jax.block_until_ready(m)
    dt = (time.perf_counter() - t) / args.steps
    flops = model_flops_per_step(kind, args.batch, args.candidates, args.query_len, ld, splade_head=args.splade_head)
    extra = {}
    if kind == "splade":
        plain, argmax = (model_flops_per_step(kind, args.batch, args.candidates, args.query_len, ld, splade_head=x)
                         for x in ("plain", "argmax"))
        extra = {"splade_head": args.splade_head, "model_tflops_plain_head": round(plain / 1e12, 4),
                 "model_tflops_argmax_head": round(argmax / 1e12, 4),
                 "predicted_flops_fall": round(1 - argmax / plain, 4)}
    return {"kind": kind, "dtype": args.dtype, "devices": len(jax.devices()),
            "platform": jax.devices()[0].platform, "batch": f"{args.batch}x{args.candidates}",
            "query_len": args.query_len, "doc_len": ld, "compile_s": round(compile_s, 1),
            "step_s": round(dt, 4), "steps_per_s": round(1 / dt, 3), "examples_per_s": round(args.batch / dt, 2),
            "model_tflops_per_step": round(flops / 1e12, 4), "loss": float(m["loss"]), "compiles": step._cache_size(),
            "remat": args.remat, "splade_chunk": args.splade_chunk,
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2), **extra}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kinds", nargs="+", default=["colbert", "splade"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--query-len", type=int, default=32)
    p.add_argument("--doc-len", type=int, default=0, help="0: 180 for ColBERT, 128 for SPLADE")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--remat", action="store_true", help="rematerialise encoder layers (less memory)")
    p.add_argument("--splade-chunk", type=int, default=0,
                   help="SPLADE vocabulary projection over chunks of this many positions (0: the head's default: "
                        "16 for the argmax head, at once for the plain one)")
    p.add_argument("--splade-head", default="argmax", choices=["argmax", "plain"],
                   help="argmax: the custom-VJP head (sparse backward); plain: autodiff of the formula")
    args = p.parse_args(argv)
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    peak = matmul_peak(dtype)
    print(json.dumps({"matmul_peak_tflops": round(peak / 1e12, 4), "dtype": args.dtype,
                      "device": str(jax.devices()[0].device_kind), "devices": len(jax.devices())}), flush=True)
    for kind in args.kinds:
        r = bench(kind, args)
        r["mfu"] = round(r["model_tflops_per_step"] * 1e12 / r["step_s"] / peak, 4)
        print(json.dumps(r), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
