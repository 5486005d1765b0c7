"""``distill-jax run``: the embedded default collection is deterministic and well formed; the main job on a
miniature of the default (``configs/run_default.py:tiny``: 300 stdlib docstrings, random 2-layer models with the
MiniLM tokenizer, 4 steps each) runs to the end and prints the table; a job SIGKILLed inside a stage and re-run
finishes with the same table as an uninterrupted one."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from distill_jax.config import ConfigError
from distill_jax.data import builtin
from distill_jax.data.collections import load_collection
from distill_jax.jobs import run as job

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "run_default.py") + ":tiny"


# ---------------------------------------------------------------------------------------------------------------
# The embedded collection
# ---------------------------------------------------------------------------------------------------------------


def test_docstring_split_and_entries():
    assert builtin.split_docstring("Return the sum.\n\nLonger text\n  here.\n>>> f(1)\n2\n") == (
        "Return the sum.", "Longer text here. 2")
    source = ('"""Mod summary here.\n\nModule body has enough words to be kept as one document here."""\n'
              'def add(a, b):\n    """Add two numbers together.\n\n    The body explains what the function does '
              'with its two arguments in words."""\n'
              'def _private():\n    """Never kept.\n\n    Even with a long body of many many many words."""\n'
              'class K:\n    def meth(self):\n        """Short."""\n')
    cfg = builtin.BuiltinConfig(min_doc_words=5)
    entries = builtin.entries_of_source("m", source, cfg)
    assert [e.id for e in entries] == ["m", "m.add"]
    assert entries[1].query == "Add two numbers together." and entries[1].doc.startswith("The body explains")


def test_builtin_collection_is_deterministic_and_beir(tmp_path):
    cfg = builtin.BuiltinConfig(max_docs=300)
    meta = builtin.write_builtin(str(tmp_path / "a"), cfg)
    again = builtin.write_builtin(str(tmp_path / "b"), cfg)
    assert meta["sha256"] == again["sha256"] and meta["num_docs"] == 300
    for split in ("train", "test"):
        col = load_collection(str(tmp_path / "a"), split)
        assert len(col.queries) == meta["num_queries"][split] > 0
        assert all(list(col.qrels[q]) == [q] for q in col.queries)  # one relevant document: the same object
    col = load_collection(str(tmp_path / "a"), None)
    texts = [t for _, t in col.corpus.values()]
    assert len(set(texts)) == len(texts) and len(set(col.queries.values())) == len(col.queries)
    assert max(len(t.split()) for t in texts) <= cfg.max_doc_words
    # an existing folder is kept as is; one built with another config is refused
    assert builtin.write_builtin(str(tmp_path / "a"), cfg) == meta
    with pytest.raises(ValueError, match="another|built with"):
        builtin.write_builtin(str(tmp_path / "a"), dataclasses.replace(cfg, max_docs=200))


# ---------------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------------


def test_job_config_loads_without_jax_and_builds_student_configs(tmp_path):
    code = (f"import sys; from distill_jax.jobs.run import load_run_config; c = load_run_config({TINY!r}); "
            "print('jax' in sys.modules, c.model.random_tiny)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]
    cfg = job.load_run_config(None, [f"workdir={tmp_path}"])
    assert cfg == dataclasses.replace(job.RunConfig(), workdir=str(tmp_path))
    by_name = {s.name: job.student_train_config(cfg, s) for s in cfg.students}
    distilled, twin = by_name["colbert_margin_mse"], by_name["colbert_infonce"]
    assert (distilled.loss.name, twin.loss.name) == ("margin_mse", "infonce")
    # a distilled student and its twin differ only in the objective
    for field in ("model", "data", "optim", "steps", "seed"):
        assert getattr(distilled, field) == getattr(twin, field), field
    assert by_name["splade_mse_flops"].loss.hp["teacher_shift"] == 8.0
    with pytest.raises(ConfigError, match="twin_of"):
        job.validate_run_config(dataclasses.replace(cfg, students=(job.StudentSpec("a", "x.py", twin_of="b"),)))
    with pytest.raises(ConfigError, match="unknown config key"):
        job.load_run_config(None, ["training.stepz=3"])
    picked = job.load_run_config(None, ["students=splade_mse_flops, colbert_margin_mse", "training.steps=3"])
    assert [s.name for s in picked.students] == ["splade_mse_flops", "colbert_margin_mse"]
    assert picked.training.steps == 3
    with pytest.raises(ConfigError, match="defines colbert_margin_mse, colbert_infonce"):
        job.load_run_config(None, ["students=colbert"])
    with pytest.raises(ConfigError, match="twin_of"):  # a twin without the student it mirrors
        job.load_run_config(None, ["students=colbert_infonce"])


def test_scifact_job_twins_differ_from_their_students_only_by_the_teacher_term():
    cfg = job.load_run_config(os.path.join(ROOT, "configs", "scifact.py"))
    twins = [s for s in cfg.students if s.twin_of]
    assert {t.twin_of for t in twins} == {"colbert_distilled", "splade_distilled", "dense_distilled"}
    # every other student is a distilled one; the *_t4 variants are compared with their kind's twin
    pairs = [(s, job.twin_for(cfg, s)) for s in cfg.students if not s.twin_of]
    assert [(s.name, t.name) for s, t in pairs] == [
        ("colbert_distilled", "colbert_infonce"), ("colbert_distilled_t4", "colbert_infonce"),
        ("splade_distilled", "splade_infonce"), ("dense_distilled", "dense_infonce"),
        ("dense_distilled_t4", "dense_infonce")]
    for student, twin in pairs:
        d = job.student_train_config(cfg, student)
        t = job.student_train_config(cfg, twin)
        assert [o.name for o in d.loss.terms()] == ["infonce", "kl"] and [o.name for o in t.loss.terms()] == ["infonce"]
        kl = d.loss.terms()[1]
        # the student's side of the KL is at its InfoNCE temperature (x 4 for *_t4); the teacher's is the ensemble's
        scale = 4.0 if student.name.endswith("_t4") else 1.0
        assert kl.hp["temperature"] == scale * d.loss.hp["temperature"] and kl.hp["teacher_temperature"] == 0.75
        # the teacher is the cross-encoder + BM25 ensemble for both (its order picks the random negatives)
        assert d.data.teacher_combine == t.data.teacher_combine == "zmean" and cfg.score.lexical
        assert dataclasses.replace(d.loss, objectives=()) == t.loss
        for field in ("model", "data", "optim", "steps", "seed"):
            assert getattr(d, field) == getattr(t, field), (student.name, field)


def test_scifact_long_variant_changes_only_the_students_steps():
    base = job.load_run_config(os.path.join(ROOT, "configs", "scifact.py"))
    long = job.load_run_config(os.path.join(ROOT, "configs", "scifact.py:long"))
    assert (long.training.steps, long.training.checkpoint_every, long.workdir) == (300, 50, "runs/scifact_long")
    assert dataclasses.replace(long, name=base.name, workdir=base.workdir, training=base.training) == base
    assert dataclasses.replace(long.training, steps=100, checkpoint_every=25) == base.training


def test_workdir_refuses_another_config(tmp_path):
    cfg = job.load_run_config(None, [f"workdir={tmp_path}"])
    job.claim_workdir(cfg)
    job.claim_workdir(dataclasses.replace(cfg, progress=False))  # how, not what: accepted
    with pytest.raises(ConfigError, match="differs in: training"):
        job.claim_workdir(dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, steps=7)))


def test_rerank_on_top_keeps_first_stage_below():
    first = {"q": [("a", 3.0), ("b", 2.0), ("c", 1.0), ("d", 0.5)]}
    out = job.rerank_on_top(first, {"q": [("b", 0.9), ("a", 0.1)]}, depth=3)
    assert [d for d, _ in out["q"]] == ["b", "a", "c"]
    assert out["q"][2][1] < out["q"][1][1]


# ---------------------------------------------------------------------------------------------------------------
# The job, end to end (subprocesses: the command line a user runs)
# ---------------------------------------------------------------------------------------------------------------


def _command(workdir, cache):
    return [sys.executable, "-m", "distill_jax.cli", "run", TINY, "--workdir", str(workdir), "--no-progress",
            "--set", f"compilation_cache={cache}"]


def _table(stdout: str) -> str:
    """The results table and the comparison lines (from the header row to the exports)."""
    start = stdout.index("\nrun ")
    return stdout[start:stdout.index("exports:", start)].strip()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One jax compilation cache for both runs: the second compiles nothing (same programs, same numbers)."""
    return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache):
    workdir = tmp_path_factory.mktemp("run") / "job"
    out = subprocess.run(_command(workdir, cache), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return workdir, out.stdout


def test_tiny_job_runs_to_the_end_and_prints_the_table(uninterrupted):
    workdir, stdout = uninterrupted
    for i, stage in enumerate(job.STAGES, 1):
        assert f"[{i}/{len(job.STAGES)}] {stage}: done in" in stdout
    table = _table(stdout)
    rows = [line.split("  ")[0].strip() for line in table.splitlines()[2:] if line and not line.startswith("-")]
    assert rows[:6] == ["BM25", "teacher (rerank BM25 top-10)", "colbert_margin_mse",
                        "colbert_infonce (no distillation)", "splade_mse_flops", "splade_infonce (no distillation)"]
    assert "vs colbert_infonce (no distillation)" in table
    results = json.loads((workdir / "results.json").read_text())
    assert set(results["runs"]) == set(rows[:6]) and results["measures"] == ["nDCG@10", "MRR@10", "R@100", "MAP"]
    assert 0 < results["runs"]["BM25"]["nDCG@10"] <= 1
    for name in ("teacher", "colbert_margin_mse", "splade_infonce"):
        marker = json.loads((workdir / "exports" / name / "distill_jax_export.json").read_text())
        assert marker["format"] == "native" and str(workdir / "exports" / name) in stdout
    # a finished job re-run does nothing but print the table again
    again = subprocess.run(_command(workdir, "jax_cache"), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("skipped") == len(job.STAGES) and _table(again.stdout) == table


def test_sigkill_in_a_stage_then_rerun_gives_the_same_table(uninterrupted, cache, tmp_path):
    workdir = tmp_path / "job"
    # kill inside the second student's training, once its first checkpoint (step 2 of 4) is on disk
    checkpoints = workdir / "students" / "colbert_infonce" / "checkpoints"
    proc = subprocess.Popen(_command(workdir, cache), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the job ended before the kill point: " + proc.stdout.read()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert job.read_marker(str(workdir), "score") is not None  # killed after the score stage ...
    assert job.read_marker(str(workdir), "student-colbert_infonce") is None  # ... inside a student's training
    resumed = subprocess.run(_command(workdir, cache), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-5000:]
    assert "[4/8] score: done earlier" in resumed.stdout
    assert "student-colbert_margin_mse: done earlier" in resumed.stdout
    assert "resumed from" in resumed.stderr and "colbert_infonce" in resumed.stderr
    assert _table(resumed.stdout) == _table(uninterrupted[1])


# ---------------------------------------------------------------------------------------------------------------
# Cross-fitting (teacher.folds): no answer-key row comes from a teacher that saw its query
# ---------------------------------------------------------------------------------------------------------------


def test_cross_fitted_teachers_score_only_the_queries_they_never_saw(tmp_path):
    import numpy as np

    from distill_jax.data.candidates import read_candidates
    from distill_jax.data.collections import read_qrels
    from distill_jax.data.scores import load_teacher_scores
    from distill_jax.teacher.scorer import load_teacher, pair_buckets, score_pairs

    cfg = job.load_run_config(TINY, [f"workdir={tmp_path}", "teacher.folds=2", "score.lexical=true",
                                     "progress=false", "compilation_cache="])
    p = job.Paths(cfg.workdir)
    job.stage_collection(cfg), job.stage_mine(cfg)
    marker = job.stage_teacher(cfg)
    folds = job.teacher_folds(cfg)
    train = set(read_qrels(os.path.join(job.collection_dir(cfg), "qrels", "train.tsv")))
    assert set(folds[0]).isdisjoint(folds[1]) and set(folds[0]) | set(folds[1]) == train
    assert abs(len(folds[0]) - len(folds[1])) <= 1
    assert job.teacher_dirs(cfg) == [str(tmp_path / "teacher" / "fold0"), str(tmp_path / "teacher" / "fold1")]
    assert [f["fold_queries"] for f in marker["folds"]] == [len(f) for f in folds]
    for i, work in enumerate(job.teacher_dirs(cfg)):  # teacher i saw (fitted or validated on) every query but fold i's
        seen = {q for part in ("fit", "holdout") for q in read_qrels(os.path.join(work, "collection", "qrels",
                                                                                   f"{part}.tsv"))}
        assert seen == train - set(folds[i])
    job.stage_score(cfg)
    key = load_teacher_scores(p.scores)
    assert key.teacher_names == ("teacher", "bm25")
    mined = [c["qid"] for c in read_candidates(p.candidates)]
    records = [key.record(i) for i in range(len(key))]
    assert [r["qid"] for r in records] == mined  # every mined query once, in the mined order
    col = load_collection(job.collection_dir(cfg), "train")
    buckets = pair_buckets(cfg.teacher.pair_maxlen)
    scorers = [load_teacher(job.teacher_model(cfg, i), "float32", 32, buckets) for i in range(2)]
    fold_of = {q: i for i, part in enumerate(folds) for q in part}
    for i in range(2):
        rows = [r for r in records if fold_of[r["qid"]] == i][:6]
        assert rows, f"no mined query in fold {i}"
        queries = [col.queries[r["qid"]] for r in rows for _ in r["pids"]]
        passages = [col.passage(d) for r in rows for d in r["pids"]]
        got = np.concatenate([r["scores"][:, 0] for r in rows])
        own, other = (score_pairs(*scorers[j], queries, passages, cfg.teacher.pair_maxlen) for j in (i, 1 - i))
        np.testing.assert_allclose(got, own, rtol=1e-5, atol=1e-5)  # its fold's teacher ...
        assert np.abs(got - other).max() > 1e-3  # ... and not the teacher that was fitted on it
    # a re-run (after a kill during the merge, say) rewrites the same dataset
    job.stage_score(cfg)
    assert load_teacher_scores(p.scores).fingerprint == key.fingerprint
    assert job.teacher_train_config(cfg, fold=1).workdir == str(tmp_path / "teacher" / "fold1")
    with pytest.raises(ConfigError, match="teacher.folds"):
        job.load_run_config(TINY, ["teacher.folds=0"])
