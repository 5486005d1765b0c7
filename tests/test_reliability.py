"""Reliability under bad input and reruns (issue #17): one test per defect, each on tiny inputs.

Writers refuse to overwrite or delete what they did not write and continue only onto the same inputs; bad
records are named (file, line) or skipped by a policy reachable from every command; Cranfield's empty documents
are skipped by an explicit option; shards are checked on open and written byte-for-byte deterministically;
user errors are one line with exit code 2; metrics.jsonl has one row per step after a resume.
"""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from distill_jax.cli import main as cli_main
from distill_jax.data import scores as ts
from distill_jax.data.collections import DataError, load_collection

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("cell gene protein brain matter white tumour growth factor bone marrow blood vessel lung cancer "
         "immune response virus infection drug dose trial patient outcome risk").split()


@pytest.fixture(autouse=True, scope="module")
def fast_compiles():
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", False)


def _collection(root, n_docs=30, n_queries=8, seed=0):
    """A tiny BEIR folder with a candidate file ``cands.jsonl`` (1 positive + 6 negatives a query)."""
    rng = np.random.default_rng(seed)
    text = lambda n: " ".join(rng.choice(WORDS, size=n))  # noqa: E731
    os.makedirs(root / "qrels")
    with open(root / "corpus.jsonl", "w") as f:
        for i in range(n_docs):
            f.write(json.dumps({"_id": f"d{i}", "title": text(2), "text": text(int(rng.integers(5, 30)))}) + "\n")
    with open(root / "queries.jsonl", "w") as f:
        for i in range(n_queries):
            f.write(json.dumps({"_id": f"q{i}", "text": text(int(rng.integers(2, 6)))}) + "\n")
    cands = []
    with open(root / "qrels" / "train.tsv", "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for i in range(n_queries):
            docs = rng.choice(n_docs, size=7, replace=False)
            f.write(f"q{i}\td{docs[0]}\t1\n")
            cands.append({"qid": f"q{i}", "pos": [f"d{docs[0]}"], "neg": [f"d{j}" for j in docs[1:]]})
    _write_cands(root / "cands.jsonl", cands)
    return cands


def _write_cands(path, cands):
    with open(path, "w") as f:
        for c in cands:
            f.write(json.dumps(c) + "\n")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, minilm_dir):
    """A tiny random cross-encoder saved as a Hugging Face directory (MiniLM tokenizer)."""
    from safetensors.numpy import save_file

    from distill_jax.models import EncoderConfig, build_model, init_params
    from distill_jax.models.hf import export_state_dict

    root = tmp_path_factory.mktemp("teacher") / "tiny-ce"
    root.mkdir()
    cfg = EncoderConfig(vocab_size=30522, hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64,
                        max_position_embeddings=128)
    params = init_params(build_model("cross_encoder", cfg), jax.random.key(7))
    save_file(export_state_dict("cross_encoder", cfg, params), str(root / "model.safetensors"))
    hf = cfg.to_hf_dict() | {"architectures": ["BertForSequenceClassification"], "num_labels": 1}
    (root / "config.json").write_text(json.dumps(hf))
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(os.path.join(minilm_dir, name), root / name)
    return str(root)


def _score(teacher, collection, cands, out, *extra, shards=2):
    return cli_main(["score", "--teacher", teacher, "--collection", str(collection), "--candidates", str(cands),
                     "--out", str(out), "--num-shards", str(shards), "--max-length", "64", "--buckets", "32,64",
                     "--batch-size", "16", *extra])


def _one_line_error(capsys, *needles):
    """The CLI's stderr: one error line naming every needle (plus the --debug hint)."""
    err = capsys.readouterr().err.strip().splitlines()
    lines = [ln for ln in err if ln.startswith("distill-jax ")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not any("Traceback" in ln for ln in err)
    return lines[0]


def _records(out):
    ds = ts.load_teacher_scores(str(out))
    return {r["qid"]: r for r in (ds.record(i) for i in range(len(ds)))}


# ---------------------------------------------------------------------------------------------------------------
# 2. import-scores into an existing --out
# ---------------------------------------------------------------------------------------------------------------


def test_import_scores_refuses_other_inputs_and_never_deletes_foreign_files(tmp_path, capsys):
    def tsv(path, scale, nan=False):
        with open(path, "w") as f:
            for q in range(4):
                for n in range(3):
                    neg = "nan" if nan and q == 2 else f"{-scale * n:.1f}"
                    f.write(f"{scale * 5.0}\t{neg}\tq{q}\tp{q}\tn{q}_{n}\n")

    a, b, bad = tmp_path / "a.tsv", tmp_path / "b.tsv", tmp_path / "nan.tsv"
    tsv(a, 1.0), tsv(b, 2.0), tsv(bad, 1.0, nan=True)
    out = tmp_path / "out"
    cmd = lambda src, *x: cli_main(["import-scores", "--format", "hofstaetter", "--input", str(src),  # noqa: E731
                                    "--out", str(out), *x])
    assert cmd(a) == 0
    ds_dir = out / "teacher_scores" / "1.0.0"
    (ds_dir / "notes.txt").write_text("mine")  # foreign files, beside and inside the dataset
    (out / "other.txt").write_text("mine too")
    first = _records(out)
    assert cmd(a) == 0  # the same inputs: rewritten, identical
    assert {q: r["scores"].tolist() for q, r in _records(out).items()} == {q: r["scores"].tolist()
                                                                           for q, r in first.items()}
    capsys.readouterr()
    assert cmd(b) == 2  # other inputs: refused, old dataset intact
    _one_line_error(capsys, "other inputs", "inputs.input.", "--overwrite")
    assert _records(out)["q0"]["scores"][0, 0] == 5.0
    assert cmd(bad, "--overwrite") == 2  # a NaN file is refused before anything is removed
    _one_line_error(capsys, "nonfinite_score")
    assert _records(out)["q0"]["scores"][0, 0] == 5.0
    assert cmd(b, "--overwrite") == 0
    assert _records(out)["q0"]["scores"][0, 0] == 10.0
    assert (ds_dir / "notes.txt").read_text() == "mine" and (out / "other.txt").read_text() == "mine too"


def test_score_reads_a_pickle_only_teacher_only_when_allowed(tmp_path, teacher, capsys):
    """``pytorch_model.bin`` instead of safetensors: one-line refusal naming ``--allow-pickle`` (exit 2); with
    the flag, the same scores as the safetensors teacher."""
    import torch
    from safetensors.numpy import load_file

    col = tmp_path / "col"
    _collection(col)
    pickled = tmp_path / "pickled" / "tiny-ce"
    shutil.copytree(teacher, pickled)
    state = load_file(str(pickled / "model.safetensors"))
    os.remove(pickled / "model.safetensors")
    torch.save({k: torch.from_numpy(v.copy()) for k, v in state.items()}, str(pickled / "pytorch_model.bin"))
    capsys.readouterr()
    assert _score(str(pickled), col, col / "cands.jsonl", tmp_path / "refused") == 2
    _one_line_error(capsys, "pytorch_model.bin", "--allow-pickle")
    assert _score(str(pickled), col, col / "cands.jsonl", tmp_path / "a", "--allow-pickle") == 0
    assert _score(teacher, col, col / "cands.jsonl", tmp_path / "b") == 0
    a, b = _records(tmp_path / "a"), _records(tmp_path / "b")
    assert a.keys() == b.keys()
    for q in a:
        np.testing.assert_array_equal(np.asarray(a[q]["scores"]), np.asarray(b[q]["scores"]))


# ---------------------------------------------------------------------------------------------------------------
# 3. score resumes only onto the same inputs
# ---------------------------------------------------------------------------------------------------------------


def test_score_continues_only_onto_the_same_inputs(tmp_path, teacher, capsys):
    col = tmp_path / "col"
    cands = _collection(col)
    out = tmp_path / "scores"
    assert _score(teacher, col, col / "cands.jsonl", out) == 0
    capsys.readouterr()
    assert _score(teacher, col, col / "cands.jsonl", out) == 0  # same inputs: continues (nothing left)
    assert "2 already done" in capsys.readouterr().out
    before = {n: (out / n).read_bytes() for n in os.listdir(out)}

    fewer = tmp_path / "fewer.jsonl"
    _write_cands(fewer, [dict(c, neg=c["neg"][:-1]) for c in cands])
    other_teacher = tmp_path / "t2" / os.path.basename(teacher)  # same name, other weights
    shutil.copytree(teacher, other_teacher)
    cfg = json.loads((other_teacher / "config.json").read_text())
    (other_teacher / "config.json").write_text(json.dumps(cfg | {"layer_norm_eps": 1e-6}))
    col2 = tmp_path / "col2"
    shutil.copytree(col, col2)
    with open(col2 / "queries.jsonl", "a") as f:
        f.write(json.dumps({"_id": "q_new", "text": "gene"}) + "\n")
    changes = [((teacher, col, fewer, out), (), "candidates"),
               ((teacher, col, col / "cands.jsonl", out), ("--max-candidates", "3"), "max_candidates"),
               ((str(other_teacher), col, col / "cands.jsonl", out), (), "teachers"),
               ((teacher, col2, col2 / "cands.jsonl", out), (), "collection.queries"),
               ((teacher, col, col / "cands.jsonl", out), ("--num-shards", "3"), "num_shards")]
    for args, extra, field in changes:
        assert _score(*args, *extra) == 2, field
        _one_line_error(capsys, str(out), field, "new --out", "delete")
    assert {n: (out / n).read_bytes() for n in os.listdir(out)} == before  # nothing rewritten, no orphan shards
    # a dataset some other writer left in --out: refused too, nothing deleted
    ts.write_teacher_scores([ts.make_record("q0", ["d1", "d2"], [1, 0], [1.0, 0.0])], str(tmp_path / "x"), 0, 1,
                            ["t"])
    assert _score(teacher, col, col / "cands.jsonl", tmp_path / "x") == 2
    _one_line_error(capsys, "no score_manifest.json")


# ---------------------------------------------------------------------------------------------------------------
# 4. several hosts: each shard written once, the metadata by one writer, the result equals one host's
# ---------------------------------------------------------------------------------------------------------------


def test_score_hosts_write_their_shards_and_the_result_equals_one_host(tmp_path, teacher, monkeypatch):
    from distill_jax.teacher import answer_key as ak

    col = tmp_path / "col"
    _collection(col)
    cfg = lambda out: ak.ScoreConfig((teacher,), str(col), str(col / "cands.jsonl"), str(out),  # noqa: E731
                                     num_shards=3, max_length=64, buckets=(32, 64), batch_size=16)
    ak.run_score(cfg(tmp_path / "one"), 0, 1)
    finalised = []
    real = ts.finalize_teacher_scores
    monkeypatch.setattr(ts, "finalize_teacher_scores", lambda *a, **k: (finalised.append(a[0]), real(*a, **k)))
    s1 = ak.run_score(cfg(tmp_path / "two"), 1, 2)  # host 1 first: shard 1 only, no metadata yet
    assert s1["shards_scored"] == 1 and finalised == []
    assert not (tmp_path / "two" / "dataset_info.json").exists()
    s0 = ak.run_score(cfg(tmp_path / "two"), 0, 2)  # host 0: shards 0 and 2, then the metadata, once
    assert s0["shards_scored"] == 2 and len(finalised) == 1
    one, two = ts.load_teacher_scores(str(tmp_path / "one")), ts.load_teacher_scores(str(tmp_path / "two"))
    assert one.fingerprint == two.fingerprint  # same shard bytes, same records
    assert sorted(os.listdir(tmp_path / "one")) == sorted(os.listdir(tmp_path / "two"))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_processes_score_equals_one_process(tmp_path, teacher):
    """2 processes x 4 devices through jax.distributed (the variables `train` reads): each shard written once,
    the metadata by process 0 after a barrier, every file byte-identical to 1 process x 8 devices."""
    col = tmp_path / "col"
    _collection(col)
    def cmd(out):
        return [sys.executable, "-m", "distill_jax.cli", "score", "--teacher", teacher, "--collection", str(col),
                "--candidates", str(col / "cands.jsonl"), "--out", str(out), "--num-shards", "3", "--max-length",
                "64", "--buckets", "32,64", "--batch-size", "16"]

    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run(cmd(tmp_path / "one"), env=dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=8"),
                   check=True, capture_output=True, timeout=600)
    port = _free_port()
    procs = [subprocess.Popen(cmd(tmp_path / "two"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=4",
                                       JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                                       JAX_PROCESS_ID=str(i), JAX_INIT_TIMEOUT_S="600")) for i in range(2)]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    assert "2 shard(s) scored" in logs[0] and "1 shard(s) scored" in logs[1]
    one, two = sorted(os.listdir(tmp_path / "one")), sorted(os.listdir(tmp_path / "two"))
    assert one == two
    for name in one:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


# ---------------------------------------------------------------------------------------------------------------
# 5. the bad-record policy from `score` (and 7: unknown / duplicate passage ids named by their candidate line)
# ---------------------------------------------------------------------------------------------------------------


def test_score_names_bad_candidate_lines_and_skips_them_on_request(tmp_path, teacher, capsys):
    col = tmp_path / "col"
    cands = _collection(col)
    bad = [dict(c) for c in cands]
    bad[2] = dict(bad[2], neg=bad[2]["neg"] + ["no-such-doc"])  # line 3: unknown passage
    bad[5] = dict(bad[5], neg=bad[5]["neg"] + [bad[5]["neg"][0]])  # line 6: a negative twice
    path = tmp_path / "bad.jsonl"
    _write_cands(path, bad)
    out = tmp_path / "s"
    assert _score(teacher, col, path, out) == 2
    _one_line_error(capsys, f"{path}: line 3", "'no-such-doc'", "missing_pid", "--bad-records skip")
    assert not os.path.exists(out)  # stopped before scoring: nothing written, the fixed file may use --out s
    del bad[2]
    _write_cands(path, bad)
    assert _score(teacher, col, path, out) == 2
    _one_line_error(capsys, f"{path}: line 5", "duplicate_pid")
    _write_cands(path, [dict(c) for c in cands[:2]] + [dict(cands[2], neg=cands[2]["neg"] + ["nope"])] + cands[3:])
    assert _score(teacher, col, path, tmp_path / "s3", "--bad-records", "skip", "--max-skip-fraction", "0.2") == 0
    assert "skipped {'missing_pid': 1}" in capsys.readouterr().out
    assert sorted(_records(tmp_path / "s3")) == sorted(c["qid"] for c in cands if c["qid"] != "q2")
    # the threshold still stops a broken file
    assert _score(teacher, col, path, tmp_path / "s4", "--bad-records", "skip") == 2
    _one_line_error(capsys, "1 of 8 records are bad", "max_skip_fraction=0.001")


# ---------------------------------------------------------------------------------------------------------------
# 6. Cranfield (empty documents) scores, and 5+6 from `train --set`: the skip policy and empty docs in DataConfig
# ---------------------------------------------------------------------------------------------------------------


def _cranfield_candidates(shared_data, n_queries=4):
    col = load_collection(str(shared_data / "cranfield"), "test", on_empty="skip")
    ids = list(col.corpus)
    out = []
    for q in sorted(col.qrels)[:n_queries] + ["125"]:  # 125 judges the empty doc 995
        pos = [d for d, g in col.qrels[q].items() if g > 0][:2]
        out.append({"qid": q, "pos": pos, "neg": [d for d in ids[:8] if d not in pos][:6]})
    return out


def test_cranfield_scores_with_empty_docs_skipped(tmp_path, teacher, shared_data, capsys):
    cran = shared_data / "cranfield"
    cands = _cranfield_candidates(shared_data)
    path = tmp_path / "cran.jsonl"
    _write_cands(path, cands)
    assert _score(teacher, cran, path, tmp_path / "strict") == 2
    _one_line_error(capsys, "corpus.jsonl:471", "empty title and text", "--empty-docs")
    assert _score(teacher, cran, path, tmp_path / "s", "--split", "test", "--empty-docs", "skip") == 0
    got = _records(tmp_path / "s")
    assert sorted(got) == sorted(c["qid"] for c in cands)
    assert all("471" not in r["pids"] and "995" not in r["pids"] for r in got.values())


def test_train_skip_policy_and_empty_docs_from_config(tmp_path, shared_data, minilm_dir):
    from distill_jax.config import load_config
    from distill_jax.data.pipeline import loader_for
    from distill_jax.train.trainer import train

    cands = _cranfield_candidates(shared_data, n_queries=7)
    rng = np.random.default_rng(0)
    recs = [ts.make_record(c["qid"], c["pos"] + c["neg"], [1] * len(c["pos"]) + [0] * len(c["neg"]),
                           rng.normal(size=len(c["pos"]) + len(c["neg"]))) for c in cands]
    recs[3]["scores"][1, 0] = np.nan  # one bad record of 8
    data = tmp_path / "ds"
    ts.write_teacher_scores(recs, str(data), 0, 1, ["t"], validate=False)
    base = [f"workdir={tmp_path / 'run'}", "steps=2", "model.num_layers=1", "model.vocab_size=30522",
            f"data.tokenizer={minilm_dir}", "data.source=dataset", f"data.dataset_dir={data}",
            f"data.collection_dir={shared_data / 'cranfield'}", "data.batch_size=8", "checkpoint.every_steps=0",
            "log_every=1"]
    cfg = lambda *x: load_config("configs/tiny.py:dense", base + list(x))  # noqa: E731
    # the trainer's loader, as train() builds it (these fail before any model exists)
    with pytest.raises(DataError, match="corpus.jsonl:471: document '471' has an empty title"):
        loader_for(cfg(), 30522)
    with pytest.raises(DataError, match=r"record 3 \(qid .*nonfinite_score.*data.bad_records=skip"):
        loader_for(cfg("data.empty_docs=skip"), 30522)
    out = train(cfg("data.empty_docs=skip", "data.bad_records=skip", "data.max_skip_fraction=0.2"))
    assert int(out["state"].step) == 2 and np.isfinite(out["last_metrics"]["loss"])


# ---------------------------------------------------------------------------------------------------------------
# 7 / 8. shard integrity on open, deterministic shard bytes
# ---------------------------------------------------------------------------------------------------------------


def _tiny_records(n=20):
    return [ts.make_record(f"q{i}", [f"d{j}" for j in range(6)], [1, 0, 0, 0, 0, 0],
                           np.linspace(i, i + 1, 6, dtype=np.float32)) for i in range(n)]


def test_truncated_or_corrupted_shard_is_named_on_open(tmp_path, capsys, minilm_dir):
    shard = ts.shard_path(str(tmp_path / "d"), 0, 1)
    for damage in ("truncate", "flip"):
        out = str(tmp_path / "d")
        shutil.rmtree(out, ignore_errors=True)
        ts.write_teacher_scores(_tiny_records(), out, 0, 1, ["t"])
        ts.load_teacher_scores(out)  # verified once and cached by (path, size, mtime)
        data = bytearray(open(shard, "rb").read())
        if damage == "truncate":
            data = data[:-1024]
        else:
            data[200] ^= 0x01
        with open(shard, "wb") as f:
            f.write(data)
        os.utime(shard, ns=(1, 1))  # a new mtime even within the clock's resolution
        with pytest.raises(DataError, match="truncated" if damage == "truncate" else "corrupted") as e:
            ts.load_teacher_scores(out)
        assert shard in str(e.value)
    # through a command: one line naming the shard, exit code 2
    col = tmp_path / "col"
    _collection(col)
    assert cli_main(["train", "configs/tiny.py:dense", "--set", f"workdir={tmp_path / 'run'}", "data.source=dataset",
                     f"data.dataset_dir={out}", f"data.collection_dir={col}", f"data.tokenizer={minilm_dir}",
                     "model.vocab_size=30522"]) == 2
    _one_line_error(capsys, shard, "corrupted")


WRITE_ONE_SHARD = """
import sys, numpy as np
from distill_jax.data import scores as ts
recs = [ts.make_record(f"q{i}", [f"d{j}" for j in range(6)], [1, 0, 0, 0, 0, 0],
                       np.linspace(i, i + 1, 6, dtype=np.float32)) for i in range(20)]
ts.write_teacher_scores(recs, sys.argv[1], 0, 1, ["t"])
"""


def test_identical_input_writes_identical_shard_bytes(tmp_path):
    """TFDS left the Example's feature-map order to protobuf, which changes per process: 3 processes wrote 3
    different files for the same records. Each write is a fresh process here."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    digests = set()
    for i in range(3):
        out = str(tmp_path / f"w{i}")
        subprocess.run([sys.executable, "-c", WRITE_ONE_SHARD, out], check=True, env=env, capture_output=True)
        digests.add(ts.load_teacher_scores(out).fingerprint)
    assert len(digests) == 1


# ---------------------------------------------------------------------------------------------------------------
# 7. one-line errors with exit code 2
# ---------------------------------------------------------------------------------------------------------------


def test_user_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    from distill_jax.config import CheckpointConfig, ConfigError
    from distill_jax.train.checkpoint import Checkpointer, abstract_like

    col = tmp_path / "col"
    _collection(col)
    # mine --out DIR: refused before mining, no DIR.tmp left behind
    (tmp_path / "outdir").mkdir()
    assert cli_main(["mine", "--collection", str(col), "--out", str(tmp_path / "outdir"), "--k", "5"]) == 2
    _one_line_error(capsys, "is a directory")
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p] and os.listdir(tmp_path / "outdir") == []
    (tmp_path / "notes.jsonl").write_text("my notes\n")  # a file mine did not write is not overwritten
    assert cli_main(["mine", "--collection", str(col), "--out", str(tmp_path / "notes.jsonl"), "--k", "5"]) == 2
    _one_line_error(capsys, "not a candidates file")
    assert (tmp_path / "notes.jsonl").read_text() == "my notes\n"
    # a duplicate passage id in a candidate file, found at read time with its line
    from distill_jax.data.candidates import read_candidates

    (tmp_path / "dup.jsonl").write_text('{"qid": "q0", "pos": ["d1"], "neg": ["d2"]}\n'
                                        '{"qid": "q1", "pos": ["d1"], "neg": ["d2", "d3", "d2"]}\n')
    with pytest.raises(DataError, match=r"dup.jsonl:2: query 'q1' lists passage 'd2' more than once"):
        read_candidates(str(tmp_path / "dup.jsonl"))
    # evaluate on a missing collection
    (tmp_path / "r.trec").write_text("q0 Q0 d1 1 1.0 x\n")
    assert cli_main(["evaluate", "--collection", str(tmp_path / "nope"), "--run", str(tmp_path / "r.trec")]) == 2
    _one_line_error(capsys, "nope")
    # workdir/checkpoints is a file
    (tmp_path / "wd").mkdir()
    (tmp_path / "wd" / "checkpoints").write_text("")
    with pytest.raises(NotADirectoryError, match="checkpoints is a file.*another workdir"):
        Checkpointer(str(tmp_path / "wd" / "checkpoints"), CheckpointConfig())
    # a resume with another geometry: ConfigError naming the work directory and the changed field
    import jax.numpy as jnp

    ck_cfg = CheckpointConfig(async_save=False, keep_best=0)
    wd = tmp_path / "run"
    meta = lambda h: {"config": {"model": {"hidden_size": h}}}  # noqa: E731
    ck = Checkpointer(str(wd / "checkpoints"), ck_cfg, meta(8))
    ck.save(1, {"w": jnp.ones((4, 8))}, {"step": 1})
    ck.close()
    single = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    for other in ({"w": jnp.ones((4, 16))}, {"w": jnp.ones((4, 8)), "mu": jnp.zeros(3)}):
        ck = Checkpointer(str(wd / "checkpoints"), ck_cfg, meta(16))
        with pytest.raises(ConfigError, match=rf"work directory {re.escape(str(wd))}: .*model.hidden_size=8, this "
                           "run has 16"):
            ck.restore(abstract_like(other, jax.tree.map(lambda _: single, other)))
        ck.close()


# ---------------------------------------------------------------------------------------------------------------
# 8. metrics.jsonl after a resume
# ---------------------------------------------------------------------------------------------------------------


def test_metrics_jsonl_has_one_row_per_step_after_a_resume(tmp_path):
    from distill_jax.config import load_config
    from distill_jax.train.metrics import MetricWriter, read_jsonl
    from distill_jax.train.trainer import train

    w = MetricWriter(str(tmp_path / "unit"), tensorboard=False)
    for s in range(1, 7):
        w.write(s, {"loss": float(s)})
    w.close()  # killed after step 6, last checkpoint at step 4: steps 5 and 6 are replayed
    w = MetricWriter(str(tmp_path / "unit"), tensorboard=False, start_step=4)
    for s in (5, 6):
        w.write(s, {"loss": 10.0 + s})
    w.close()
    rows = read_jsonl(str(tmp_path / "unit" / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and rows[-1]["loss"] == 16.0
    # the trainer passes its start step: a resume from step 2 of a 4-step run logs 3 and 4 once
    wd = tmp_path / "run"
    cfg = load_config("configs/tiny.py:dense", [f"workdir={wd}", "steps=4", "checkpoint.every_steps=2",
                                                "checkpoint.keep=3", "log_every=1", "model.num_layers=1"])
    train(cfg)
    shutil.rmtree(wd / "checkpoints" / "4")  # as if killed after logging step 4, before its checkpoint
    train(cfg)
    assert [r["step"] for r in read_jsonl(str(wd / "metrics.jsonl"))] == [1, 2, 3, 4]


# ---------------------------------------------------------------------------------------------------------------
# The quick cases of scripts/reliability.py (R4 simulated hosts, R9 fault matrix), the loader's resume check,
# the tokenizer/model fit, and checkpoint saves that do not grow RSS
# ---------------------------------------------------------------------------------------------------------------


def _reliability_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("reliability", os.path.join(ROOT, "scripts", "reliability.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rel = _reliability_script()


def test_resume_onto_other_data_settings_names_the_setting_and_the_fix(tmp_path):
    from distill_jax.config import ConfigError

    col, ds = str(tmp_path / "col"), str(tmp_path / "ds")
    rel.write_collection(col, 40, 20)
    rel.write_dataset(ds, rel.make_records(40, 20, m=6), shards=1)
    it = iter(rel.r4_loader(ds, col, 0, 1, batch=8, epochs=2, pretokenize=False))
    next(it)
    state = it.get_state()
    other = rel.r4_loader(ds, col, 0, 1, batch=8, epochs=2, pretokenize=False)
    other.config = dataclasses_replace(other.config, seed=3)
    with pytest.raises(ConfigError, match=r"mismatch in field 'seed': saved 0, this run has 3 \(set by data.seed\)"
                                          r".*config.json.*new workdir"):
        iter(other).set_state(state)
    rel.write_dataset(str(tmp_path / "ds2"), rel.make_records(40, 20, m=6, seed=1), shards=1)
    moved = iter(rel.r4_loader(str(tmp_path / "ds2"), col, 0, 1, batch=8, epochs=2, pretokenize=False))
    with pytest.raises(ConfigError, match=r"'fingerprint'.*data.dataset_dir, or its shards were rewritten"):
        moved.set_state(state)
    with pytest.raises(ConfigError, match="has no 'seed'.*config.json"):
        moved.set_state({"step": 1})


def dataclasses_replace(obj, **changes):
    import dataclasses

    return dataclasses.replace(obj, **changes)


def test_the_tokenizer_must_fit_the_model_embedding_rows(tmp_path, minilm_dir):
    from distill_jax.config import ConfigError
    from distill_jax.data.pipeline import check_vocabulary
    from distill_jax.data.tokenize import load_tokenizer

    tok = load_tokenizer(minilm_dir)
    check_vocabulary(tok, 30522, minilm_dir, "colbert")
    with pytest.raises(ConfigError, match="has 30522 token ids but the model embeds 30000.*model.vocab_size"):
        check_vocabulary(tok, 30000, minilm_dir, "dense")
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(minilm_dir, use_fast=True)
    t.add_special_tokens({"mask_token": "[NEWMASK]"})
    t.save_pretrained(str(tmp_path / "tok"))
    grown = load_tokenizer(str(tmp_path / "tok"))
    with pytest.raises(ConfigError, match=r"special token \[MASK\] has id 30522, outside the model's 30522"):
        check_vocabulary(grown, 30522, str(tmp_path / "tok"), "colbert")
    with pytest.raises(ConfigError, match="has 30523 token ids"):  # dense never frames with [MASK]
        check_vocabulary(grown, 30522, str(tmp_path / "tok"), "dense")


def test_checkpoint_saves_do_not_poll_tensorstore_metrics(tmp_path, monkeypatch):
    """tensorstore's metric collection leaks its result (RSS grew with every save, #17); orbax polled it twice
    per save for a log line. The Checkpointer turns that telemetry off: no call in a save or a restore."""
    import jax.numpy as jnp
    import tensorstore

    from distill_jax.config import CheckpointConfig
    from distill_jax.train import checkpoint as ck_lib

    assert ck_lib.ORBAX_TELEMETRY_SKIPPED
    calls = []
    real = tensorstore.experimental_collect_matching_metrics
    monkeypatch.setattr(tensorstore, "experimental_collect_matching_metrics",
                        lambda *a, **k: (calls.append(a), real(*a, **k))[1])
    ck = ck_lib.Checkpointer(str(tmp_path / "ck"), CheckpointConfig(async_save=True, keep=2, keep_best=0))
    state = {"w": jnp.ones((8, 8)), "b": jnp.zeros(8)}
    for step in (1, 2, 3):
        ck.save(step, state, {"pos": step})
    ck.wait()
    single = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    restored, data, step = ck.restore(ck_lib.abstract_like(state, jax.tree.map(lambda _: single, state)))
    ck.close()
    assert step == 3 and data == {"pos": 3} and float(restored["w"].sum()) == 64.0
    assert calls == []


def test_exactly_once_over_simulated_hosts_and_epochs(tmp_path):
    """R4 in one process: 1,009 records (prime), global batch 24, 2 epochs, P = 1, 2, 3 hosts."""
    col, ds = str(tmp_path / "col"), str(tmp_path / "ds")
    rel.write_collection(col, 1009, 32)
    rel.write_dataset(ds, rel.make_records(1009, 32, m=5), shards=3)
    for pc in (1, 2, 3):
        loaders = [rel.r4_loader(ds, col, pi, pc, 24, 2, pretokenize=False) for pi in range(pc)]
        spe = loaders[0].steps_per_epoch
        hosts = [[(ld.record_indices(s), (ld.record_indices(s) >= 0).astype(np.float32)) for s in range(2 * spe)]
                 for ld in loaders]
        cov = rel.coverage(hosts, loaders[0].valid, spe, 2)
        assert cov["duplicates"] == cov["missing"] == 0, (pc, cov)
        assert cov["steps_per_host"] == [2 * spe] * pc and cov["epoch_orders_differ"]
        assert cov["padded"] == 2 * (spe * 24 - 1009)


def test_fault_matrix_through_the_cli(tmp_path):
    """R9 on 200 records: every fault stops `distill-jax train` with exit 2 and one line naming the file, the
    record and the field, before any step; the skip policy counts each record fault by type; two bad records
    pass the skip threshold and stop; a float64 score column is refused by the writer."""
    out = rel.r9_fault_matrix(str(tmp_path), n=200, n_docs=50, skip_runs="loader", fault_at=123,
                              log=lambda m: None)
    missed = {k: c for k, c in out["cases"].items() if not c["detected"]}
    assert not missed, missed
    assert out["detected"] == out["faults"] == 14
    assert out["skip_counted"] == out["skip_cases"] >= len(rel.RECORD_FAULTS) - 1  # one may be refused at write
    assert out["threshold_stops"] and out["wrong_dtype"]["refused_at_write"]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_exactly_once_over_two_killed_loader_processes(tmp_path):
    """R4 with 2 real processes, each SIGKILLed once per epoch and resumed from its last saved state."""
    out = rel.r4_exactly_once(str(tmp_path), n=1009, every=5, log=lambda m: None)["processes"]
    assert out["duplicates"] == out["missing"] == out["padding_weight_nonzero"] == 0, out
    assert out["order_equals_uninterrupted"] and out["epoch_orders_differ"], out
    assert len(set(out["steps_per_host"])) == 1 and all(len(k) == 2 for k in out["killed_after_steps"]), out


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_sigkill_trials_resume_bit_exact(tmp_path):
    """R1 with 3 kills: every restart resumes, every finished checkpoint equals the uninterrupted run's at its
    step, no temporary directory survives a restart, every loss is bitwise equal."""
    out = rel.r1_sigkill(str(tmp_path), trials=3, mid_save=2, every=5, steps=80, log=lambda m: None)
    assert out["restores_ok"] == out["restarts"] and out["restored_hash_equal"] == out["trials"], out
    assert out["loss_mismatches"] == 0 and out["final_sha256_equal"], out
    assert out["unreadable_finished_steps"] == 0 and out["leftover_tmp_dirs_after_restart"] == 0, out


def test_synthetic_loader_refuses_a_position_from_other_settings():
    """The synthetic loader's resume check names the field, both values and the fix (as the dataset loader's)."""
    from distill_jax.config import ConfigError, DataConfig
    from distill_jax.data.synthetic import SyntheticBatches

    data = DataConfig(source="synthetic", batch_size=8, seed=3)
    saved = SyntheticBatches(data, "colbert", 512)
    next(saved)
    state = saved.get_state()
    again = SyntheticBatches(data, "colbert", 512)
    again.set_state(state)
    np.testing.assert_array_equal(next(again)["docs"]["input_ids"], saved.global_batch(1)["docs"]["input_ids"])
    for field, value in (("seed", 4), ("batch_size", 16)):
        other = SyntheticBatches(DataConfig(**{**dataclasses.asdict(data), field: value}), "colbert", 512)
        with pytest.raises(ConfigError, match=f"data.{field}={getattr(data, field)}, this run has data.{field}="
                                              f"{value}.*new workdir"):
            other.set_state(state)
    with pytest.raises(ConfigError, match="not to synthetic batches"):
        again.set_state({"kind": "dataset", "position": 1})
