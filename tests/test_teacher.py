"""`distill-jax score`: the written answer key equals a direct forward (1 and 8 devices), and a SIGKILLed run
resumes to exactly the uninterrupted result."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from distill_jax.models import EncoderConfig, build_model, init_params
from distill_jax.models.hf import export_state_dict

WORDS = ("cell gene protein brain matter white tumour growth factor bone marrow blood vessel lung cancer "
         "immune response virus infection drug dose trial patient outcome risk").split()


def _write_collection(root, n_docs=40, n_queries=12, seed=0):
    rng = np.random.default_rng(seed)
    text = lambda n: " ".join(rng.choice(WORDS, size=n))  # noqa: E731
    os.makedirs(root / "qrels")
    with open(root / "corpus.jsonl", "w") as f:
        for i in range(n_docs):
            f.write(json.dumps({"_id": f"d{i}", "title": text(3), "text": text(int(rng.integers(5, 60)))}) + "\n")
    with open(root / "queries.jsonl", "w") as f:
        for i in range(n_queries):
            f.write(json.dumps({"_id": f"q{i}", "text": text(int(rng.integers(2, 9)))}) + "\n")
    cands = []
    with open(root / "qrels" / "train.tsv", "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for i in range(n_queries):
            docs = rng.choice(n_docs, size=7, replace=False)
            f.write(f"q{i}\td{docs[0]}\t1\n")
            cands.append({"qid": f"q{i}", "pos": [f"d{docs[0]}"], "neg": [f"d{j}" for j in docs[1:]]})
    with open(root / "cands.jsonl", "w") as f:
        for c in cands:
            f.write(json.dumps(c) + "\n")
    return cands


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory, minilm_dir):
    """A tiny random cross-encoder saved as a Hugging Face directory with the MiniLM tokenizer."""
    from safetensors.numpy import save_file

    root = tmp_path_factory.mktemp("teacher")
    cfg = EncoderConfig(vocab_size=30522, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                        max_position_embeddings=128)
    params = init_params(build_model("cross_encoder", cfg), jax.random.key(7))
    save_file(export_state_dict("cross_encoder", cfg, params), str(root / "model.safetensors"))
    hf = cfg.to_hf_dict() | {"architectures": ["BertForSequenceClassification"], "num_labels": 1}
    (root / "config.json").write_text(json.dumps(hf))
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(os.path.join(minilm_dir, name), root / name)
    return str(root)


def _score_cmd(teacher, root, out, shards=4):
    return [sys.executable, "-m", "distill_jax.cli", "score", "--teacher", teacher, "--collection", str(root),
            "--candidates", str(root / "cands.jsonl"), "--out", str(out), "--num-shards", str(shards),
            "--max-length", "64", "--buckets", "32,64", "--batch-size", "16"]


def _env(devices):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", HF_HUB_OFFLINE="1",
               JAX_DEFAULT_MATMUL_PRECISION="highest")
    return env


def _read(out):
    from distill_jax.data.scores import load_teacher_scores

    ds = load_teacher_scores(str(out))
    return {r["qid"]: r for r in (ds.record(i) for i in range(len(ds)))}


@pytest.mark.parametrize("devices", [1, 8])
def test_score_equals_direct_forward(tmp_path, tiny_teacher, devices):
    from distill_jax.data.collections import load_collection
    from distill_jax.data.tokenize import encode_pairs, load_tokenizer
    from distill_jax.models import load_pretrained

    cands = _write_collection(tmp_path)
    out = tmp_path / "scores"
    subprocess.run(_score_cmd(tiny_teacher, tmp_path, out), env=_env(devices), check=True, capture_output=True)
    got = _read(out)
    assert sorted(got) == sorted(c["qid"] for c in cands)
    col = load_collection(str(tmp_path), "train")
    tok = load_tokenizer(tiny_teacher)
    model, params = load_pretrained("cross_encoder", tiny_teacher)
    worst = 0.0
    with jax.default_matmul_precision("highest"):
        for c in cands:
            rec = got[c["qid"]]
            assert rec["pids"] == c["pos"] + c["neg"]
            assert rec["labels"].tolist() == [1] + [0] * len(c["neg"])
            b = encode_pairs(tok, [col.queries[c["qid"]]] * len(rec["pids"]), [col.passage(p) for p in rec["pids"]],
                             64)
            direct = np.asarray(model.apply({"params": params}, b))
            worst = max(worst, float(np.abs(rec["scores"][:, 0] - direct).max()))
    assert worst < 1e-5, worst


def test_sigkill_and_resume_gives_the_uninterrupted_result(tmp_path, tiny_teacher):
    _write_collection(tmp_path, n_queries=24)
    ref, out = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(_score_cmd(tiny_teacher, tmp_path, ref, shards=12), env=_env(2), check=True, capture_output=True)
    proc = subprocess.Popen(_score_cmd(tiny_teacher, tmp_path, out, shards=12), env=_env(2),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and any(p.endswith(".done.json") for p in os.listdir(out)):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = sum(p.endswith(".done.json") for p in os.listdir(out))
    assert 0 < done_at_kill < 12, f"kill landed after {done_at_kill} of 12 shards"
    resumed = subprocess.run(_score_cmd(tiny_teacher, tmp_path, out, shards=12), env=_env(2), check=True,
                             capture_output=True, text=True)
    assert f"{done_at_kill} already done" in resumed.stdout
    a, b = _read(ref), _read(out)
    assert sorted(a) == sorted(b)
    for q in a:
        assert a[q]["pids"] == b[q]["pids"]
        np.testing.assert_array_equal(a[q]["scores"], b[q]["scores"])
    assert not [p for p in os.listdir(out) if ".tmp" in p]


def test_lexical_column_beside_the_cross_encoder_and_its_ensemble(tmp_path, tiny_teacher):
    """`score --teacher T --teacher bm25`: the second column is each pair's BM25 score (the index `mine` builds),
    the first the cross-encoder's as when scored alone; the job's ensemble row combines them as the loader does."""
    from distill_jax.data.collections import load_collection
    from distill_jax.data.negatives import bm25_search
    from distill_jax.data.pipeline import combine_teachers
    from distill_jax.data.candidates import as_scores
    from distill_jax.jobs.run import ensemble_rerank
    from distill_jax.teacher.answer_key import BM25_TEACHER, ScoreConfig, run_score

    root = tmp_path / "col"
    _write_collection(root)
    common = dict(collection=str(root), candidates=str(root / "cands.jsonl"), num_shards=2, max_length=64,
                  buckets=(32, 64), batch_size=16)
    run_score(ScoreConfig(teachers=(tiny_teacher,), out_dir=str(tmp_path / "one"), **common), 0, 1)
    run_score(ScoreConfig(teachers=(tiny_teacher, BM25_TEACHER), out_dir=str(tmp_path / "two"), **common), 0, 1)
    one, two = _read(tmp_path / "one"), _read(tmp_path / "two")
    col = load_collection(str(root), "train")
    doc_ids, texts = col.passages()
    full = bm25_search(doc_ids, texts, col.queries, len(doc_ids))
    assert one.keys() == two.keys() and len(two) == 12
    for qid, rec in two.items():
        np.testing.assert_array_equal(rec["scores"][:, 0], one[qid]["scores"][:, 0])
        lexical = dict(full[qid])
        want = [lexical.get(p.decode() if isinstance(p, bytes) else p, 0.0) for p in rec["pids"]]
        np.testing.assert_allclose(rec["scores"][:, 1], want, rtol=1e-6)
    # the ensemble reranker: BM25's top 3 reordered by the z-mean of (teacher, BM25), the rest below in BM25 order
    first = {q: r[:5] for q, r in full.items() if len(r) >= 5}
    teacher = {q: [(d, float(len(d) % 3)) for d, _ in r] for q, r in first.items()}
    out = ensemble_rerank(first, [as_scores(teacher), as_scores(first)], depth=5, rerank_depth=3, how="zmean")
    for q, r in first.items():
        cols = np.array([[float(len(d) % 3), s] for d, s in r[:3]])
        want = [r[i][0] for i in np.argsort(-combine_teachers(cols, "zmean"), kind="stable")]
        assert [d for d, _ in out[q]] == want + [d for d, _ in r[3:]]
