"""Dropout mask cost per PRNG: the encoder's ``Dropout`` (bernoulli keep-mask + select, what the train step runs on
the attention probabilities) at the ColBERT step's attention shape, for each ``TrainConfig.dropout_prng``.

    .venv/bin/python scripts/bench_dropout.py                      # [128, 12, 180, 180] float32, rate 0.1
    .venv/bin/python scripts/bench_dropout.py --shape 16 12 32 32 --reps 20

Each implementation: one compiled call per new key (the step folds the step number into its key), median and
min of ``--reps`` calls after a warm-up, interleaved across implementations round by round.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from distill_jax.config import PRNG_IMPLS  # noqa: E402
from distill_jax.models.encoder import Dropout  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", type=int, nargs="+", default=[128, 12, 180, 180])
    p.add_argument("--rate", type=float, default=0.1)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    x = jnp.ones(tuple(args.shape), jnp.float32)
    drop = Dropout(args.rate)
    fns, keys, times = {}, {}, {impl: [] for impl in PRNG_IMPLS}
    for impl in PRNG_IMPLS:
        keys[impl] = jax.random.key(0, impl=impl)
        fns[impl] = jax.jit(lambda k, x: drop.apply({}, x, deterministic=False, rngs={"dropout": k}))
        fns[impl](keys[impl], x).block_until_ready()  # compile
    for rep in range(args.reps):
        for impl in PRNG_IMPLS:
            k = jax.random.fold_in(keys[impl], rep)
            t = time.perf_counter()
            out = fns[impl](k, x).block_until_ready()
            times[impl].append(time.perf_counter() - t)
    kept = float(jnp.mean(out != 0))
    print(f"dropout {args.rate} on {tuple(args.shape)} float32 ({x.size / 1e6:.1f}M elements), {jax.devices()[0]}, "
          f"load {os.getloadavg()[0]:.1f}; kept fraction of the last mask {kept:.4f}")
    base = statistics.median(times["threefry2x32"])
    for impl in PRNG_IMPLS:
        med = statistics.median(times[impl])
        print(f"  {impl:13s} median {med * 1e3:7.1f} ms, min {min(times[impl]) * 1e3:7.1f} ms "
              f"({base / med:.2f}x threefry)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
