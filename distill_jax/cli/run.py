"""``distill-jax run [CONFIG[:VARIANT]] [--data DIR] [--workdir W] [--set KEY=VALUE ...]``: the main job (see
:mod:`distill_jax.jobs.run`). Re-run the same command to continue an interrupted job."""

from __future__ import annotations

import argparse
import logging


def main(argv: list[str]) -> int:
    from distill_jax.jobs import run as job

    p = argparse.ArgumentParser(prog="distill-jax run", description=job.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", default=None,
                   help="a job config (configs/run_default.py[:tiny]); default: the embedded default job")
    p.add_argument("--data", default=None, help="a BEIR folder with train and test qrels (default: the embedded "
                   "stdlib-docstring collection, built in the work directory)")
    p.add_argument("--workdir", default=None, help="the job's work directory (default: the config's workdir)")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override job config fields, e.g. --set training.steps=50 eval.max_queries=100")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars inside stages (stage lines stay)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("distill_jax").setLevel(logging.INFO)  # the stages' own lines (resumed from ..., shards)
    overrides = list(a.overrides)
    if a.data is not None:
        overrides.append(f"data={a.data}")
    if a.workdir is not None:
        overrides.append(f"workdir={a.workdir}")
    if a.no_progress:
        overrides.append("progress=false")
    cfg = job.load_run_config(a.config, overrides)
    from distill_jax import distributed

    distributed.initialize_if_multihost()
    job.run(cfg)
    return 0
