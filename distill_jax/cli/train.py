"""``distill-jax train CONFIG[:VARIANT] [--set key=value ...]``: train (or resume) a student."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def main(argv: list[str]) -> int:
    from distill_jax.config import load_config, to_dict
    from distill_jax.train import trainer

    parser = argparse.ArgumentParser(prog="distill-jax train", description=trainer.__doc__.split("\n")[0])
    parser.add_argument("config", help="a config file, e.g. configs/colbert_margin_mse.py (or ...py:tiny)")
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config fields, e.g. --set optim.learning_rate=1e-5 steps=100")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every file it renames at INFO
    try:
        cfg = load_config(args.config, args.overrides)
    except (KeyError, ValueError, FileNotFoundError, TypeError, AttributeError) as e:
        print(f"distill-jax train: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(to_dict(cfg), indent=1))
        return 0
    from distill_jax import distributed

    distributed.initialize_if_multihost()
    from distill_jax.eval.rerank import validator

    result = trainer.train(cfg, validator=validator)
    if result["last_metrics"]:
        print(json.dumps({"step": cfg.steps, **result["last_metrics"]}))
        import jax

        if jax.process_index() == 0:
            print_start_end(cfg.workdir)
    return 0


def print_start_end(workdir: str) -> None:
    """Prints what the run's logged quantities did from its first window to its last (``metrics.jsonl``)."""
    import os

    from distill_jax.train.metrics import format_start_end, read_jsonl, start_end

    path = os.path.join(workdir, "metrics.jsonl")
    print(f"start -> end ({path}; window means):")
    for line in format_start_end(start_end(read_jsonl(path))):
        print("  " + line)
