"""Teacher-score datasets: TFDS builder and shard writer round trips, importers of the two public formats,
fault injection under both policies."""

import gzip
import json
import os
import pickle

import numpy as np
import pytest

from distill_jax.cli import main as cli_main
from distill_jax.data import scores as ts
from distill_jax.data.collections import DataError, TextTable


def _records(n=20, m=6, t=2, seed=0):
    rng = np.random.default_rng(seed)
    return [ts.make_record(f"q{i}", [f"p{(i * 3 + j) % 50}" for j in range(m)], [1] + [0] * (m - 1),
                           rng.normal(size=(m, t))) for i in range(n)]


def _same(ds, recs):
    assert len(ds) == len(recs)
    for i, r in enumerate(recs):
        got = ds.record(i)
        assert got["qid"] == r["qid"] and got["pids"] == r["pids"]
        np.testing.assert_array_equal(got["labels"], r["labels"])
        np.testing.assert_array_equal(got["scores"], r["scores"])  # float32 stored bit-exactly
        assert got["scores"].dtype == np.float32 and got["labels"].dtype == np.int32


def test_builder_round_trip(tmp_path):
    recs = _records()
    out = ts.build_teacher_scores(lambda: iter(recs), str(tmp_path), ["ce-a", "ce-b"], ts.RecordChecker("mem"))
    assert out == str(tmp_path / "teacher_scores" / "1.0.0")
    ds = ts.load_teacher_scores(str(tmp_path))  # finds the version directory
    assert ds.teacher_names == ("ce-a", "ce-b")
    _same(ds, recs)
    import tensorflow_datasets as tfds  # readable by plain TFDS, no TensorFlow, no distill-jax class

    raw = tfds.builder_from_directory(out).as_data_source("train")[3]
    assert raw["qid"] == b"q3"


def test_shard_writer_resumable_and_fingerprint(tmp_path):
    recs = _records(23)
    out = str(tmp_path / "ds")
    parts = [recs[0:8], recs[8:16], recs[16:]]
    for i in (2, 0):  # shards in any order; nothing readable until the last one
        ts.write_teacher_scores(parts[i], out, i, 3, ["t1", "t2"])
    assert ts.shard_done(out, 0, 3) and not ts.shard_done(out, 1, 3)
    with pytest.raises(DataError, match="no dataset_info.json"):
        ts.load_teacher_scores(out)
    # a crash mid-shard leaves no shard file (tmp + rename) and the shard is not done
    def boom():
        yield recs[8]
        raise RuntimeError("preempted")
    with pytest.raises(RuntimeError):
        ts.write_teacher_scores(boom(), out, 1, 3, ["t1", "t2"])
    assert not ts.shard_done(out, 1, 3) and not os.path.exists(ts.shard_path(out, 1, 3))
    assert not [f for f in os.listdir(out) if ".tmp" in f]
    summary = ts.write_teacher_scores(parts[1], out, 1, 3, ["t1", "t2"])
    assert summary["num_records"] == 8
    ds = ts.load_teacher_scores(out)
    _same(ds, recs)
    # the same data written again has the same fingerprint; different data a different one
    out2 = str(tmp_path / "ds2")
    for i in range(3):
        ts.write_teacher_scores(parts[i], out2, i, 3, ["t1", "t2"])
    assert ts.load_teacher_scores(out2).fingerprint == ds.fingerprint
    out3 = str(tmp_path / "ds3")
    ts.write_teacher_scores(recs[:-1], out3, 0, 1, ["t1", "t2"])
    assert ts.load_teacher_scores(out3).fingerprint != ds.fingerprint
    with pytest.raises(ValueError, match="3 teacher names but records have 2"):
        ts.write_teacher_scores(recs, str(tmp_path / "x"), 0, 1, ["a", "b", "c"],
                                checker=ts.RecordChecker("x", num_teachers=2))


def _bad_records():
    good = _records(2000, m=4, t=1)
    bad = {
        10: ("nonfinite_score", lambda r: r["scores"].__setitem__((2, 0), np.nan)),
        20: ("nonfinite_score", lambda r: r["scores"].__setitem__((1, 0), -np.inf)),
        30: ("missing_pid", lambda r: r["pids"].__setitem__(3, "nowhere")),
        40: ("duplicate_pid", lambda r: r["pids"].__setitem__(2, r["pids"][1])),
        50: ("no_positive", lambda r: r["labels"].__setitem__(0, 0)),
    }
    for i, (_, f) in bad.items():
        f(good[i])
    good[60] = dict(good[60], scores=np.zeros((3, 1), np.float32))  # wrong shape
    return good, {i: k for i, (k, _) in bad.items()} | {60: "shape"}


def test_fault_injection_policies(tmp_path):
    recs, faults = _bad_records()
    corpus = TextTable([f"p{i}" for i in range(50)], ["x"] * 50)
    messages = {
        10: "record 10 (qid 'q10'): nonfinite_score: field 'scores' of candidate 'p32' (teacher column 0) is nan",
        20: "record 20 (qid 'q20'): nonfinite_score: field 'scores' of candidate 'p11' (teacher column 0) is -inf",
        30: "record 30 (qid 'q30'): missing_pid: field 'pids': candidate 'nowhere' is not in the corpus",
        40: "record 40 (qid 'q40'): duplicate_pid: field 'pids' lists candidate 'p21' more than once",
        50: "record 50 (qid 'q50'): no_positive",
        60: "record 60 (qid 'q60'): shape: field 'scores' has shape (3, 1)",
    }
    for i in sorted(faults):
        # strict: each fault alone raises, naming the source, record, qid and field
        only = [r for j, r in enumerate(recs) if j == i or j not in faults]
        index = only.index(recs[i])
        checker = ts.RecordChecker("in.tsv", ts.BadInputPolicy("raise"), 1, corpus)
        with pytest.raises(DataError) as e:
            ts.write_teacher_scores(only, str(tmp_path / f"s{i}"), 0, 1, ["t"], checker=checker)
        assert messages[i].replace(f"record {i}", f"record {index}") in str(e.value), str(e.value)
        assert "in.tsv" in str(e.value)
        assert not os.path.exists(ts.shard_path(str(tmp_path / f"s{i}"), 0, 1))
    # permissive: counted per type; 6 bad of 2000 is over a 0.1% threshold, under 0.5%
    checker = ts.RecordChecker("in.tsv", ts.BadInputPolicy("skip", max_skip_fraction=0.001), 1, corpus)
    with pytest.raises(DataError, match=r"6 of 2000 records are bad .*more than max_skip_fraction=0.001"):
        ts.write_teacher_scores(recs, str(tmp_path / "skip1"), 0, 1, ["t"], checker=checker)
    checker = ts.RecordChecker("in.tsv", ts.BadInputPolicy("skip", max_skip_fraction=0.005), 1, corpus)
    summary = ts.write_teacher_scores(recs, str(tmp_path / "skip2"), 0, 1, ["t"], checker=checker)
    assert summary["skipped"] == {"nonfinite_score": 2, "missing_pid": 1, "duplicate_pid": 1, "no_positive": 1,
                                  "shape": 1}
    assert checker.bad_indices == sorted(faults)
    ds = ts.load_teacher_scores(str(tmp_path / "skip2"))
    assert len(ds) == 1994 and "q10" not in {ds.record(i)["qid"] for i in range(0, 20)}


HOF = [  # score_pos score_neg qid pos neg: q1 has two positives, one negative seen twice
    (10.5, 1.25, "q1", "p1", "n1"), (10.5, -2.0, "q1", "p1", "n2"), (9.0, 3.5, "q1", "p2", "n1"),
    (7.75, 0.5, "q2", "p3", "n3"),
]


def test_hofstaetter_import_round_trip(tmp_path, capsys):
    path = tmp_path / "teacher.tsv"
    path.write_text("".join("\t".join(map(str, row)) + "\n" for row in HOF))
    recs = list(ts.read_hofstaetter_tsv(str(path)))
    assert [r["qid"] for r in recs] == ["q1", "q2"]
    assert recs[0]["pids"] == ["p1", "p2", "n1", "n2"]
    np.testing.assert_array_equal(recs[0]["labels"], [1, 1, 0, 0])
    np.testing.assert_allclose(recs[0]["scores"][:, 0], [10.5, 9.0, (1.25 + 3.5) / 2, -2.0])
    assert recs[1]["pids"] == ["p3", "n3"] and recs[1]["scores"][:, 0].tolist() == [7.75, 0.5]
    # through the command, into a TFDS dataset, and back
    assert cli_main(["import-scores", "--format", "hofstaetter", "--input", str(path),
                        "--out", str(tmp_path / "out")]) == 0
    assert "wrote 2 queries" in capsys.readouterr().out
    ds = ts.load_teacher_scores(str(tmp_path / "out"))
    assert ds.teacher_names == ("hofstaetter-margin-mse",)
    _same(ds, recs)
    # not grouped by query -> the fix is named
    path.write_text("".join("\t".join(map(str, row)) + "\n" for row in HOF + [HOF[0]]))
    with pytest.raises(DataError, match=r"teacher.tsv:5: query 'q1' appears again.*sort -t"):
        list(ts.read_hofstaetter_tsv(str(path)))
    path.write_text("1.0\t2.0\tq1\tp1\n")
    with pytest.raises(DataError, match=r"teacher.tsv:1: expected 5 tab-separated columns"):
        list(ts.read_hofstaetter_tsv(str(path)))


def test_st_hard_negatives_import(tmp_path):
    lines = [  # the published layout: int ids, negatives per mining system
        {"qid": 1, "pos": [10], "neg": {"bm25": [11, 12, 10, 13], "msmarco-MiniLM-L-6-v3": [12, 14]}},
        {"qid": 2, "pos": [20, 21], "neg": {"bm25": [22]}},
    ]
    with gzip.open(tmp_path / "hn.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(x) + "\n" for x in lines))
    ce = {1: {10: 9.5, 11: 1.0, 12: 2.0, 13: -1.0, 14: 0.25}, 2: {20: 8.0, 21: 7.0, 22: 3.0}}
    with open(tmp_path / "ce.pkl", "wb") as f:
        pickle.dump(ce, f)
    with gzip.open(tmp_path / "ce.json.gz", "wt") as f:
        json.dump({str(q): {str(p): s for p, s in d.items()} for q, d in ce.items()}, f)
    with pytest.raises(DataError, match="pickle can execute code"):
        ts.read_ce_scores(str(tmp_path / "ce.pkl"))
    scores = ts.read_ce_scores(str(tmp_path / "ce.pkl"), allow_pickle=True)
    assert scores == ts.read_ce_scores(str(tmp_path / "ce.json.gz"))
    recs = list(ts.read_st_hard_negatives(str(tmp_path / "hn.jsonl.gz"), scores))
    assert recs[0]["pids"] == ["10", "11", "12", "13", "14"]  # positive first; 10 dropped from negatives
    np.testing.assert_array_equal(recs[0]["labels"], [1, 0, 0, 0, 0])
    np.testing.assert_array_equal(recs[0]["scores"][:, 0], np.float32([9.5, 1.0, 2.0, -1.0, 0.25]))
    assert recs[1]["pids"] == ["20", "21", "22"] and recs[1]["labels"].tolist() == [1, 1, 0]
    cut = list(ts.read_st_hard_negatives(str(tmp_path / "hn.jsonl.gz"), scores,
                                         systems=["msmarco-MiniLM-L-6-v3"], negs_per_system=1))
    assert cut[0]["pids"] == ["10", "12"]
    # a JSONL carrying its own scores, plain negative lists
    (tmp_path / "inline.jsonl").write_text(json.dumps(
        {"qid": "a", "pos": ["x"], "neg": ["y", "z"], "ce_scores": {"x": 1.0, "y": 0.5, "z": 0.0}}) + "\n")
    inline = list(ts.read_st_hard_negatives(str(tmp_path / "inline.jsonl")))
    assert inline[0]["pids"] == ["x", "y", "z"] and inline[0]["scores"][:, 0].tolist() == [1.0, 0.5, 0.0]
    # round trip through the command (pickle opted in)
    assert cli_main(["import-scores", "--format", "st-hard-negatives", "--input",
                        str(tmp_path / "hn.jsonl.gz"), "--ce-scores", str(tmp_path / "ce.pkl"), "--allow-pickle",
                        "--out", str(tmp_path / "out")]) == 0
    _same(ts.load_teacher_scores(str(tmp_path / "out")), recs)
    # a candidate without a score: raise names it; skip drops the record (and the threshold still applies)
    del scores["2"]["22"]
    with pytest.raises(DataError, match=r"record 1 \(qid '2'\): missing_score: no cross-encoder score for "
                                        r"candidate '22'"):
        list(ts.read_st_hard_negatives(str(tmp_path / "hn.jsonl.gz"), scores))
    checker = ts.RecordChecker("hn", ts.BadInputPolicy("skip", max_skip_fraction=0.5))
    kept = list(ts.validated(ts.read_st_hard_negatives(str(tmp_path / "hn.jsonl.gz"), scores, checker=checker),
                             checker))
    assert [r["qid"] for r in kept] == ["1"] and checker.counts["missing_score"] == 1
