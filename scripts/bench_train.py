"""Train-step benchmark: steps/s, examples/s and model-FLOPs utilisation for ColBERT and SPLADE students.

    .venv/bin/python scripts/bench_train.py                      # both kinds, float32, MiniLM geometry
    .venv/bin/python scripts/bench_train.py --dtype bfloat16 --kinds colbert --steps 10
    .venv/bin/python scripts/bench_train.py --kinds splade --batch 16 --candidates 2 --steps 3 --splade-head plain
    .venv/bin/python scripts/bench_train.py --kernels --variants default eigen onednn   # matmul rates, jax vs torch
    .venv/bin/python scripts/bench_train.py --profile --kinds colbert --batch 4         # the step's time split
    .venv/bin/python scripts/bench_train.py --ab default eigen --kinds colbert --batch 4 --steps 2   # flags A/B

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

``--kernels``: the float32 matmuls of one MiniLM layer over 64 sequences x 180 tokens (forward and the two
backward products), the batched attention products, the GELU and softmax, timed with ``jax.jit`` under each XLA
flag set of ``--variants`` and with torch, each in its own process, interleaved over ``--rounds`` (best of 5
reps per process). Outputs are compared with the first variant (max relative difference). ``--profile``: the
jitted step under the jax profiler (``--xla_cpu_enable_xprof_traceme``), per-thunk times grouped by what they
compute (matmul, dropout bits, softmax, ...) with each group's share of the step. ``--ab``: whole train steps
under each flag set, interleaved processes, with the last loss of each (the same batches and seed, so equal up
to float rounding). Flag sets: ``XLA_VARIANTS`` (``default`` is XLA's own choice: YNNPACK fusions for dots in
jax 0.10.2).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

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
                         splade_head: str = "argmax", hidden_size: int = MINILM["hidden_size"],
                         intermediate_size: int = MINILM["intermediate_size"],
                         num_layers: int = MINILM["num_layers"]) -> float:
    """Analytic training FLOPs of one step: the forward's matmuls x 3, except SPLADE's vocabulary decoder, which
    counts as ``splade_head`` ("plain" or "argmax") runs it. The geometry defaults to MiniLM's."""
    h, inter, layers, v = hidden_size, intermediate_size, num_layers, MINILM["vocab_size"]
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


def build_step(kind: str, args):
    """The config, model, fresh state, jitted step and two synthetic batches of one benchmark line."""
    ld = args.doc_len or (180 if kind == "colbert" else 128)
    loss = (LossConfig(name="margin_mse") if kind == "colbert" else
            LossConfig(name="margin_mse", regularizer_q="flops", regularizer_d="flops", lambda_q=0.1, lambda_d=0.08,
                       reg_warmup_steps=100))
    cfg = TrainConfig(
        name=f"bench_{kind}", steps=1000,
        model=ModelConfig(kind=kind, dtype=args.dtype, remat=args.remat, splade_chunk_size=args.splade_chunk,
                          splade_argmax_head=args.splade_head == "argmax", dropout=args.dropout, **MINILM),
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
    return cfg, model, state, step, batches


def bench(kind: str, args) -> dict:
    ld = args.doc_len or (180 if kind == "colbert" else 128)
    cfg, model, state, step, batches = build_step(kind, args)
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


# ---------------------------------------------------------------------------------------------------------------
# Kernels, flag A/B and the step's time split (CPU speed investigation, docs/bench.md)
# ---------------------------------------------------------------------------------------------------------------

# XLA:CPU flag sets (jax 0.10.2). "default": YNNPACK fusions (dot + elementwise + reduce) as XLA picks them.
XLA_VARIANTS = {
    "default": "",
    "ynn-dot": "--xla_cpu_experimental_ynn_fusion_type=dot",  # YNNPACK for dots only, XLA's loops for the rest
    "eigen": "--xla_cpu_experimental_ynn_fusion_type=",  # no library fusions: Eigen dots
    "onednn": "--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_use_onednn=true "
              "--xla_cpu_experimental_onednn_fusion_type=dot",
    "fastmath": "--xla_cpu_enable_fast_math=true",
    "onednn-fastmath": "--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_use_onednn=true "
                       "--xla_cpu_experimental_onednn_fusion_type=dot --xla_cpu_enable_fast_math=true",
}


def kernel_cases(seqs: int = 64, length: int = 180, h: int = 384, inter: int = 1536, heads: int = 12):
    """(name, einsum spec or elementwise op, operand shapes, FLOPs) of one MiniLM layer over ``seqs`` x ``length``
    tokens: the projections, FFN, their backward products (dW = x^T dy, dx = dy W^T) and the attention products
    in the encoder's own layouts ([B, L, heads, hd])."""
    m, hd = seqs * length, h // heads
    att = 2.0 * seqs * heads * length * length * hd
    return [
        ("square 2048", "mk,kn->mn", [(2048, 2048), (2048, 2048)], 2.0 * 2048**3),
        (f"QKV/out proj [{m},{h}]x[{h},{h}]", "mk,kn->mn", [(m, h), (h, h)], 2.0 * m * h * h),
        (f"FFN in [{m},{h}]x[{h},{inter}]", "mk,kn->mn", [(m, h), (h, inter)], 2.0 * m * h * inter),
        (f"FFN out [{m},{inter}]x[{inter},{h}]", "mk,kn->mn", [(m, inter), (inter, h)], 2.0 * m * h * inter),
        (f"FFN in dW [{m},{h}]^T x [{m},{inter}]", "mk,mn->kn", [(m, h), (m, inter)], 2.0 * m * h * inter),
        (f"FFN in dx [{m},{inter}] x [{h},{inter}]^T", "mn,kn->mk", [(m, inter), (h, inter)], 2.0 * m * h * inter),
        (f"attn scores bqhd,bkhd->bhqk ({seqs}x{heads} heads, L {length})", "bqhd,bkhd->bhqk",
         [(seqs, length, heads, hd)] * 2, att),
        (f"attn context bhqk,bkhd->bqhd ({seqs}x{heads} heads)", "bhqk,bkhd->bqhd",
         [(seqs, heads, length, length), (seqs, length, heads, hd)], att),
        (f"GELU (erf) over [{m},{inter}]", "gelu", [(m, inter)], 0.0),
        (f"softmax over [{seqs},{heads},{length},{length}]", "softmax", [(seqs, heads, length, length)], 0.0),
    ]


def _best_time(fn, reps: int = 5, min_rep_s: float = 0.2) -> float:
    fn()
    t = time.perf_counter()
    fn()
    inner = max(1, int(min_rep_s / max(time.perf_counter() - t, 1e-6)))
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - t) / inner)
    return best


def kernels_child(side: str, sample_dir: str) -> dict:
    """Times every kernel case in this process (``side``: "jax" under the inherited XLA_FLAGS, or "torch"), and
    saves a strided sample of each output for the cross-variant comparison."""
    import numpy as np

    rng = np.random.default_rng(0)
    out = {}
    for i, (name, op, shapes, flops) in enumerate(kernel_cases()):
        xs = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
        if side == "torch":
            import torch

            ts = [torch.from_numpy(x) for x in xs]
            f = {"gelu": lambda a: torch.nn.functional.gelu(a), "softmax": lambda a: torch.softmax(a, -1)}.get(
                op, lambda *a, op=op: torch.einsum(op, *a))
            with torch.inference_mode():
                res = f(*ts).contiguous().numpy()
                dt = _best_time(lambda: f(*ts))
        else:
            g = {"gelu": lambda a: jax.nn.gelu(a, approximate=False), "softmax": lambda a: jax.nn.softmax(a, -1)}.get(
                op, lambda *a, op=op: jnp.einsum(op, *a))
            f = jax.jit(g)
            js = [jnp.asarray(x) for x in xs]
            res = np.asarray(f(*js))
            dt = _best_time(lambda: f(*js).block_until_ready())
        np.save(os.path.join(sample_dir, f"{i}.npy"), res.reshape(-1)[:: max(1, res.size // 200_000)])
        out[name] = {"ms": dt * 1e3, "gflops": flops / dt / 1e9 if flops else None}
    return out


def run_self(args: list[str], env_flags: str | None, timeout: float = 1800) -> dict:
    """This script as a child process (its last JSON line), with ``XLA_FLAGS`` = ``env_flags`` (None: inherit)."""
    env = dict(os.environ)
    if env_flags is not None:
        env["XLA_FLAGS"] = env_flags
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *args], capture_output=True, text=True,
                          env=env, timeout=timeout)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode or not lines:
        return {"error": (proc.stderr or "")[-1500:]}
    return json.loads(lines[-1])


def flags_to_options(flags: str) -> dict:
    """``--xla_a=1 --xla_b=`` -> compiler_options for ``jit(...).lower(...).compile(compiler_options=...)``."""
    enums = {"dot": "LIBRARY_FUSION_TYPE_DOT", "eltwise": "LIBRARY_FUSION_TYPE_ELTWISE",
             "reduce": "LIBRARY_FUSION_TYPE_REDUCE"}
    out = {}
    for f in flags.split():
        k, _, v = f.removeprefix("--").partition("=")
        out[k] = {"true": True, "false": False}.get(v, ",".join(enums.get(x, x) for x in v.split(",")) if v else "")
    return out


def kernels_inproc(variants: list[str], reps: int, names: list[str] | None = None) -> dict:
    """In one process: each kernel compiled once per flag set (``compiler_options``), then the variants called
    in turn, ``reps`` times (A B C A B C ...), so load swings hit all of them; median and min per variant and
    the median of the per-turn ratios to the first variant (robust on a loaded machine)."""
    import numpy as np

    rng = np.random.default_rng(0)
    out = {}
    for name, op, shapes, flops in kernel_cases():
        if names and not any(n in name for n in names):
            continue
        xs = [jnp.asarray(rng.standard_normal(s, dtype=np.float32)) for s in shapes]
        g = {"gelu": lambda a: jax.nn.gelu(a, approximate=False), "softmax": lambda a: jax.nn.softmax(a, -1)}.get(
            op, lambda *a, op=op: jnp.einsum(op, *a))
        fns = {v: jax.jit(g).lower(*xs).compile(compiler_options=flags_to_options(XLA_VARIANTS[v]))
               for v in variants}
        ref = np.asarray(fns[variants[0]](*xs))
        times = defaultdict(list)
        for v in variants:
            fns[v](*xs).block_until_ready()
        for _ in range(reps):
            for v in variants:
                t = time.perf_counter()
                fns[v](*xs).block_until_ready()
                times[v].append(time.perf_counter() - t)
        out[name] = {v: {"ms_median": 1e3 * statistics.median(times[v]), "ms_min": 1e3 * min(times[v]),
                         "gflops_best": flops / min(times[v]) / 1e9 if flops else None,
                         "speedup_vs_first_median": statistics.median(
                             a / b for a, b in zip(times[variants[0]], times[v])),
                         "max_rel_diff": float(np.abs(np.asarray(fns[v](*xs)) - ref).max() / np.abs(ref).max())}
                     for v in variants}
        print(name + ": " + ", ".join(f"{v} {x['ms_median']:.0f} ms (x{x['speedup_vs_first_median']:.2f})"
                                      for v, x in out[name].items()), file=sys.stderr, flush=True)
    return {"inproc": out, "variants": {v: XLA_VARIANTS[v] for v in variants}, "reps": reps,
            "load_avg_1m_end": os.getloadavg()[0]}


def kernels_main(variants: list[str], rounds: int, with_torch: bool) -> dict:
    """Interleaved rounds: every variant (and torch) once per round, a fresh process each; best per kernel over
    the rounds; outputs compared with the first variant's."""
    import numpy as np

    sides = [("jax", v) for v in variants] + ([("torch", "torch")] if with_torch else [])
    best: dict = defaultdict(dict)
    loads, diffs = [], defaultdict(dict)
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(rounds):
            for side, v in sides:
                d = os.path.join(tmp, v)
                os.makedirs(d, exist_ok=True)
                r = run_self(["--kernels-child", side, d], XLA_VARIANTS.get(v, ""))
                loads.append(os.getloadavg()[0])
                if "error" in r:
                    print(f"{v}: failed: {r['error']}", file=sys.stderr)
                    continue
                for name, x in r.items():
                    if name not in best[v] or x["ms"] < best[v][name]["ms"]:
                        best[v][name] = x
                print(f"round {rnd + 1} {v}: " + ", ".join(f"{x['ms']:.1f}" for x in r.values()) + " ms",
                      file=sys.stderr, flush=True)
        ref = variants[0]
        for _, v in sides[1:]:
            for i, (name, *_rest) in enumerate(kernel_cases()):
                a = np.load(os.path.join(tmp, ref, f"{i}.npy")).astype(np.float64)
                b = np.load(os.path.join(tmp, v, f"{i}.npy")).astype(np.float64)
                diffs[v][name] = float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30))
    return {"kernels": best, "max_rel_diff_vs_" + ref: diffs, "load_avg_1m": loads,
            "flags": {v: XLA_VARIANTS.get(v, "") for v in variants}, "rounds": rounds}


def kernels_table(r: dict) -> str:
    cols = list(r["kernels"])
    lines = ["| kernel | " + " | ".join(cols) + " |", "| --- |" + " --- |" * len(cols)]
    for name, *_ in kernel_cases():
        cells = []
        for c in cols:
            x = r["kernels"][c].get(name)
            cells.append("-" if x is None else (f"{x['gflops']:.0f} GFLOP/s ({x['ms']:.1f} ms)" if x["gflops"]
                                                 else f"{x['ms']:.1f} ms"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def categorize(op_name: str, hlo_name: str) -> str:
    """What a thunk computes, from its HLO name and the jax op_name in its metadata."""
    s = (op_name + " " + hlo_name).lower()
    if "random_bits" in s or "threefry" in s or "bernoulli" in s or "rng" in s or "random_" in s:
        return "dropout bits (PRNG)"
    library = hlo_name.startswith(("ynn_fusion", "onednn_fusion", "xnn_fusion"))  # a dot (+ fused ops)
    projection = any(p in op_name for p in ("/query/", "/key/", "/value/", "/output_dense/"))
    if "dot_general" in s or hlo_name.startswith("dot") or library:
        if ("bqhd,bkhd" in s or "bhqk,bkhd" in s or "dot_product_attention" in s
                or library and "/attention/" in op_name and not projection):  # scores fused with the softmax max
            return "attention matmuls (batched, head dim 32)"
        return "dense matmuls (projections, FFN, ColBERT head)"
    if "softmax" in s or "reduce_max" in s or "reduce_sum" in s and "attention" in s or "exp" in s.split("/")[-1]:
        return "softmax"
    if "erf" in s or "gelu" in s:
        return "GELU"
    if "layer_norm" in s or "layernorm" in s or "rsqrt" in s:
        return "LayerNorm"
    if "adam" in s or "optax" in s or "clip" in s:
        return "optimizer"
    if "transpose" in s or "copy" in s:
        return "transposes / copies"
    if "gather" in s or "scatter" in s or "embed" in s:
        return "embedding gather / scatter"
    return "other elementwise / reductions"


# Runtime events of the profiler that are not thunks (python, PjRt, the thread pool).
SKIP_EVENTS = ("end: ", "ThreadpoolListener", "ThunkExecutor", "PjitFunction", "$", "Common", "Parse", "Python",
               "Tfrt", "PjRt", "Execute", "Handle", "Transfer", "Buffer")


def profile_main(kind: str, args) -> dict:
    """The jitted step under the jax profiler; thunk durations grouped by ``categorize``. Needs
    ``--xla_cpu_enable_xprof_traceme=true`` in XLA_FLAGS (main() re-runs itself with it)."""
    from jax.profiler import ProfileData

    cfg, model, state, step, batches = build_step(kind, args)
    compiled = step.lower(state, batches[0]).compile()
    meta = {}
    for line in compiled.as_text().splitlines():
        m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = .*?op_name=\"([^\"]*)\"", line)
        if m:
            meta[m.group(1)] = m.group(2)
    for i in range(1 + args.warmup):
        state, m = compiled(state, batches[i % 2])
    jax.block_until_ready(m)
    tmp = tempfile.mkdtemp(prefix="bench-profile-")
    jax.profiler.start_trace(tmp)
    t = time.perf_counter()
    for i in range(args.steps):
        state, m = compiled(state, batches[i % 2])
    jax.block_until_ready(m)
    wall = (time.perf_counter() - t) / args.steps
    jax.profiler.stop_trace()
    pd = ProfileData.from_file(sorted(glob.glob(os.path.join(tmp, "**", "*.xplane.pb"), recursive=True))[-1])
    per_cat, per_op, threads = defaultdict(float), defaultdict(float), set()
    for plane in pd.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            for e in line.events:
                name = e.name
                if name not in meta and (name.startswith(SKIP_EVENTS) or not re.fullmatch(r"[\w.\-]+", name)):
                    continue
                threads.add(line.name)
                op = meta.get(name, "")
                per_cat[categorize(op, name)] += e.duration_ns / 1e9 / args.steps
                per_op[(re.sub(r"\.\d+$", "", name), re.sub(r"\d+", "#", op)[-90:])] += e.duration_ns / 1e9 / args.steps
    total = sum(per_cat.values())
    top = sorted(per_op.items(), key=lambda kv: -kv[1])[:25]
    return {"kind": kind, "batch": f"{args.batch}x{args.candidates}", "doc_len": args.doc_len or 180,
            "step_s_wall": round(wall, 3), "thunk_s_sum": round(total, 3), "threads_with_thunks": len(threads),
            "split": {k: {"s": round(v, 3), "share": round(v / total, 4)} for k, v in
                      sorted(per_cat.items(), key=lambda kv: -kv[1])},
            "top_ops": [{"hlo": k[0], "op": k[1], "s": round(v, 4)} for k, v in top],
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "load_avg_1m": os.getloadavg()[0]}


def ab_main(variants: list[str], rounds: int, passthrough: list[str]) -> dict:
    """Whole train steps under each flag set: interleaved fresh processes (A B A B), median step time per
    variant over the rounds, and the last loss of each process (same batches, same seed)."""
    runs: dict = defaultdict(list)
    for rnd in range(rounds):
        for v in variants:
            r = run_self(passthrough, XLA_VARIANTS.get(v, ""))
            r["load_avg_1m"] = os.getloadavg()[0]
            runs[v].append(r)
            print(f"round {rnd + 1} {v}: {r.get('step_s', r.get('error', '')[-300:])} s/step, loss "
                  f"{r.get('loss')}, load {r['load_avg_1m']:.1f}", file=sys.stderr, flush=True)
    out = {"flags": {v: XLA_VARIANTS.get(v, "") for v in variants}, "args": passthrough, "variants": {}}
    base = None
    for v in variants:
        ok = [r for r in runs[v] if "step_s" in r]
        if not ok:
            out["variants"][v] = {"error": runs[v][0].get("error", "")[-500:]}
            continue
        med = statistics.median(r["step_s"] for r in ok)
        base = base or med
        out["variants"][v] = {"step_s_median": med, "step_s_all": [r["step_s"] for r in ok],
                              "speedup_vs_first": base / med, "loss": [r["loss"] for r in ok],
                              "compile_s": [r["compile_s"] for r in ok], "peak_rss_gb": max(r["peak_rss_gb"] for r in ok),
                              "load_avg_1m": [r["load_avg_1m"] for r in ok]}
    return out


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
    p.add_argument("--dropout", type=float, default=0.1, help="hidden and attention dropout of the encoder")
    p.add_argument("--kernels", action="store_true", help="the MiniLM-layer kernel table (see the docstring)")
    p.add_argument("--variants", nargs="+", default=["default", "eigen", "onednn"], choices=sorted(XLA_VARIANTS),
                   help="XLA flag sets for --kernels")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds of --kernels / --ab")
    p.add_argument("--no-torch", action="store_true", help="--kernels without the torch column")
    p.add_argument("--inproc", type=int, default=0, metavar="REPS",
                   help="--kernels in one process: compiler_options per variant, calls interleaved REPS times")
    p.add_argument("--only-kernels", nargs="+", default=None, help="substrings of the kernel names (--inproc)")
    p.add_argument("--profile", action="store_true", help="the step's time split under the jax profiler")
    p.add_argument("--ab", nargs="+", default=[], choices=sorted(XLA_VARIANTS), metavar="VARIANT",
                   help="whole steps under these XLA flag sets, interleaved processes")
    p.add_argument("--out", default="", help="also write the JSON result here (--kernels, --profile, --ab)")
    p.add_argument("--kernels-child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    def emit(r: dict) -> int:
        print(json.dumps(r), flush=True)
        if args.out:
            json.dump(r, open(args.out, "w"), indent=1)
        return 0

    if args.kernels_child:
        return emit(kernels_child(*args.kernels_child))
    if args.kernels and args.inproc:
        return emit(kernels_inproc(args.variants, args.inproc, args.only_kernels))
    if args.kernels:
        r = kernels_main(args.variants, args.rounds, not args.no_torch)
        print(kernels_table(r), file=sys.stderr)
        return emit(r)
    if args.ab:
        rest = [a for a in (argv if argv is not None else sys.argv[1:])]
        i = rest.index("--ab")
        j = i + 1
        while j < len(rest) and not rest[j].startswith("--"):
            j += 1
        rest = rest[:i] + rest[j:]
        if "--out" in rest:
            k = rest.index("--out")
            rest = rest[:k] + rest[k + 2:]
        return emit(ab_main(args.ab, args.rounds, rest))
    if args.profile:
        flag = "--xla_cpu_enable_xprof_traceme=true"
        if flag not in os.environ.get("XLA_FLAGS", ""):
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
            os.execv(sys.executable, [sys.executable, os.path.abspath(__file__),
                                      *(argv if argv is not None else sys.argv[1:])])
        return emit(profile_main(args.kinds[0], args))
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
