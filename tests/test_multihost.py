"""Several processes through ``jax.distributed`` on localhost (2 processes x 4 CPU devices) against one process
x 8 devices: ``train`` (within 1e-5, and a run whose worker is SIGKILLed exits non-zero, then resumes) and
``train-teacher`` (same checkpoint choice, teacher weights within 1e-5, one writer of the shared files).

Each run is a set of fresh processes (``XLA_FLAGS`` before jax is imported); the checks are those of
``scripts/reliability.py`` R8, called with small sizes. Slow: every process pays jax's start-up and a compile.
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script():
    spec = importlib.util.spec_from_file_location("reliability", os.path.join(ROOT, "scripts", "reliability.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rel = _script()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_train_two_processes_equal_one_and_resume_after_a_killed_worker(tmp_path):
    out = rel.r8_killed_worker(str(tmp_path), steps=16, every=4, kill_after=6, uninterrupted=False,
                               three_process=True, log=lambda m: None)
    # process 1 killed: process 0 stops with an error within the heartbeat bound, never hangs
    assert not out["survivor_hung"] and out["survivor_exit_code"] not in (0, None), out
    assert out["detection_latency_s"] <= out["detection_bound_s"], out
    # both restarted: the run finishes and equals 1 process x 8 devices
    assert out["resumed"], out
    vs = out["resumed_vs_one_x8"]
    assert vs["same_param_names"] and vs["steps"] == 16, vs
    assert vs["max_abs_loss_diff"] <= 1e-5 and vs["max_rel_loss_diff"] <= 1e-5, vs
    assert vs["max_abs_param_diff"] <= 1e-5, vs
    assert out["data_states_per_checkpoint"] == {"process_count": 2, "states": 2}
    # 3 processes onto a 2-process checkpoint: every one stops with one line naming both counts
    three = out["three_process_restart"]
    assert three["exit_codes"] == [2, 2, 2], three
    assert "written by 2 hosts, this job has 3" in three["error"], three


def _teacher_collection(root, n_docs=40, n_queries=12, seed=0):
    rng = np.random.default_rng(seed)
    text = lambda n: " ".join(rng.choice(rel.WORDS, size=n))  # noqa: E731
    os.makedirs(root / "qrels")
    with open(root / "corpus.jsonl", "w") as f:
        for i in range(n_docs):
            f.write(json.dumps({"_id": f"d{i}", "title": text(2), "text": text(int(rng.integers(5, 20)))}) + "\n")
    with open(root / "queries.jsonl", "w") as f:
        for i in range(n_queries):
            f.write(json.dumps({"_id": f"q{i}", "text": text(3)}) + "\n")
    for split in ("train", "test"):
        with open(root / "qrels" / f"{split}.tsv", "w") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for i in range(n_queries):
                f.write(f"q{i}\td{(3 * i + (split == 'test')) % n_docs}\t1\n")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_train_teacher_two_processes_equal_one(tmp_path):
    """2 x 4 devices: process 0 alone writes the view, the label dataset, the teacher and results.json; the
    validation ranks the same checkpoint, and the teacher's weights equal 1 x 8's within 1e-5."""
    from safetensors.numpy import load_file

    col = tmp_path / "col"
    _teacher_collection(col)

    def cmd(work):
        return [sys.executable, "-m", "distill_jax.cli", "train-teacher", "configs/tiny.py:cross_encoder", "--set",
                f"workdir={work}", f"data.dataset_dir={work}/labels", "data.source=dataset",
                f"data.collection_dir={col}", f"data.tokenizer={rel.minilm_tokenizer_dir()}",
                "model.vocab_size=30522", "model.num_layers=1", "steps=6", "checkpoint.every_steps=3",
                "checkpoint.keep=2", "checkpoint.keep_best=1", "checkpoint.best_metric=nDCG@10",
                "eval.every_steps=3", "eval.depth=5", "eval.batch_size=16", "data.n_candidates=4",
                "data.pair_maxlen=32", "--holdout", "4", "--k", "8", "--test-depth", "5"]

    one, two = tmp_path / "one", tmp_path / "two"
    rel.run_checked(cmd(one), rel.child_env(8))
    procs = rel.launch_multihost(cmd(two), 2, 4)
    errs = rel.wait_all(procs, 1200)
    assert [p.returncode for p in procs] == [0, 0], errs
    a, b = (json.loads((w / "results.json").read_text()) for w in (one, two))
    assert a["best_step"] == b["best_step"]
    for key in ("holdout_validation", "test_reranking", "bm25_recall_fit"):
        if a[key] is None or b[key] is None:  # bm25 recall: process 0's figure in both results.json
            assert a[key] == b[key], key
            continue
        np.testing.assert_allclose(list(_numbers(a[key])), list(_numbers(b[key])), atol=1e-5, err_msg=key)
    wa, wb = (load_file(str(w / "teacher" / "model.safetensors")) for w in (one, two))
    assert wa.keys() == wb.keys()
    # The listwise loss is shift-invariant in the cross-encoder's logits, so its classifier bias has gradient 0:
    # what it gets is float32 rounding of a sum that is 0, which Adam scales up to steps of up to the learning
    # rate, in a direction that depends on the reduction order (here: 2 x 4 vs 1 x 8 devices). Bounded instead.
    lr = json.loads((one / "config.json").read_text())["optim"]["learning_rate"]
    for w in (wa, wb):
        assert np.abs(w.pop("classifier.bias")).max() <= 2 * 6 * lr
    for k in wa:
        np.testing.assert_allclose(wa[k], wb[k], atol=1e-5, rtol=0, err_msg=k)
    # the shared files were written once, by process 0: the label datasets are byte-identical
    la, lb = one / "labels", two / "labels"
    assert sorted(os.listdir(la)) == sorted(os.listdir(lb))
    for name in os.listdir(la):
        if os.path.isfile(la / name):
            assert (la / name).read_bytes() == (lb / name).read_bytes(), name


def _numbers(tree):
    """The numbers of a nested dict, in key order."""
    if isinstance(tree, dict):
        for k in sorted(tree):
            yield from _numbers(tree[k])
    elif isinstance(tree, (int, float)):
        yield float(tree)


def test_multihost_env_names_the_variables_train_reads():
    env = rel.multihost_env(1234, 2, 1, 4)
    assert env["JAX_COORDINATOR_ADDRESS"] == "localhost:1234" and env["JAX_NUM_PROCESSES"] == "2"
    assert env["JAX_PROCESS_ID"] == "1" and "device_count=4" in env["XLA_FLAGS"]
