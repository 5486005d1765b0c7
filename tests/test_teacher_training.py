"""train-teacher data preparation: the BEIR view (symlinks, fit/holdout split) and the BM25 label dataset."""

import os
import subprocess
import sys

import numpy as np
import pytest

from distill_jax.data.collections import load_collection, read_qrels
from distill_jax.data.scores import load_teacher_scores
from distill_jax.jobs.train_teacher import make_view, write_label_dataset


def test_view_splits_train_into_disjoint_fit_and_holdout(tmp_path, shared_data):
    src = shared_data / "scifact"
    parts = make_view(str(src), str(tmp_path / "view"), "train", holdout=100, seed=0)
    train = read_qrels(str(src / "qrels" / "train.tsv"))
    assert len(parts["holdout"]) == 100 and len(parts["fit"]) == len(train) - 100
    assert set(parts["fit"]).isdisjoint(parts["holdout"]) and set(parts["fit"]) | set(parts["holdout"]) == set(train)
    # corpus/queries are links to the shared files, never copies; the cut qrels keep every judgement
    assert os.path.islink(tmp_path / "view" / "corpus.jsonl")
    assert os.path.realpath(tmp_path / "view" / "corpus.jsonl") == os.path.realpath(src / "corpus.jsonl")
    hold = read_qrels(str(tmp_path / "view" / "qrels" / "holdout.tsv"))
    assert hold == {q: train[q] for q in parts["holdout"]}
    # deterministic in the seed, different for another seed
    again = make_view(str(src), str(tmp_path / "view2"), "train", holdout=100, seed=0)
    other = make_view(str(src), str(tmp_path / "view3"), "train", holdout=100, seed=1)
    assert again == parts and other["holdout"] != parts["holdout"]
    with pytest.raises(ValueError, match="holdout=809"):
        make_view(str(src), str(tmp_path / "view4"), "train", holdout=809, seed=0)


def test_label_dataset_has_positives_first_and_bm25_negatives(tmp_path, shared_data):
    view = tmp_path / "view"
    parts = make_view(str(shared_data / "scifact"), str(view), "train", holdout=100, seed=0)
    metrics = write_label_dataset(str(view), str(tmp_path / "labels"), k=20)
    assert 0.7 < metrics["R@20"] < 1.0
    ds = load_teacher_scores(str(tmp_path / "labels"))
    assert len(ds) == len(parts["fit"]) and ds.teacher_names == ("bm25",)
    col = load_collection(str(view), "fit")
    rec = ds.record(0)
    qrels = col.qrels[rec["qid"]]
    n_pos = sum(g > 0 for g in qrels.values())
    assert rec["labels"][:n_pos].tolist() == [qrels[p] for p in rec["pids"][:n_pos]]
    assert (rec["labels"][n_pos:] == 0).all() and not set(rec["pids"][n_pos:]) & set(qrels)
    # negatives are BM25's ranking: scores non-increasing after the positives, at most k of them
    neg_scores = rec["scores"][n_pos:, 0]
    assert len(neg_scores) <= 20 and (np.diff(neg_scores) <= 1e-6).all()


@pytest.mark.slow
def test_train_teacher_tiny_end_to_end(tmp_path):
    """The whole command on the real MiniLM (4 steps): trains, exports a loadable teacher, evaluates it."""
    out = subprocess.run([sys.executable, "-m", "distill_jax.cli", "train-teacher", "configs/teacher_scifact.py:tiny",
                          "--set", f"workdir={tmp_path}/run", f"data.dataset_dir={tmp_path}/run/labels",
                          "--test-depth", "10"], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert '"best_step": 4' in out.stdout
    assert os.path.isfile(tmp_path / "run" / "teacher" / "model.safetensors")
