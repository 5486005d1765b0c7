"""A teacher with side information (``distill-jax side-features`` + ``score --teacher side:DIR``): the side
vectors equal sentence-transformers' embeddings of the same texts; the side column is each pair's float64 dot
product of them, beside the cross-encoder's column as it is alone; changed features are refused on a rerun; a
pair without a side vector fails naming the file and the id. The recipe (``configs/side_information.py``) is the
SciFact job's student with only the answer key, work directory and steps changed; its tiny variant trains, resumes
bit for bit and gives the same steps on 8 devices as on 1."""

import dataclasses
import json

import numpy as np
import pytest

from distill_jax.cli import main as cli
from distill_jax.config import load_config
from distill_jax.data.collections import DataError, load_collection
from distill_jax.jobs.run import load_run_config, student_train_config
from distill_jax.teacher.answer_key import ScoreConfig, run_score, teacher_name
from distill_jax.teacher.side import SideFeatures, write_side_features
from test_objectives import check_eight_equal_one, check_trains_and_resumes, tiny
from test_step import fast_compiles  # noqa: F401  (autouse)
from test_teacher import _read, _write_collection, tiny_teacher  # noqa: F401  (tiny_teacher: a fixture)


@pytest.fixture(scope="module")
def side(tmp_path_factory, minilm_dir):
    root = tmp_path_factory.mktemp("side")
    _write_collection(root / "col")
    assert cli(["side-features", "--model", minilm_dir, "--collection", str(root / "col"),
                "--out", str(root / "feat")]) == 0
    return root


def test_side_vectors_are_the_encoders_embeddings(side, minilm_dir):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(minilm_dir, device="cpu")
    col = load_collection(str(side / "col"), None)
    doc_ids, texts = col.passages()
    feat = side / "feat"
    assert json.load(open(feat / "passage_ids.json")) == doc_ids
    qids = json.load(open(feat / "query_ids.json"))
    assert qids == list(col.queries)
    np.testing.assert_allclose(np.load(feat / "passages.npy"), st.encode(texts), atol=2e-5)
    np.testing.assert_allclose(np.load(feat / "queries.npy"), st.encode([col.queries[q] for q in qids]),
                               atol=2e-5)
    with pytest.raises(FileExistsError, match="already holds side features"):
        write_side_features(str(feat), ["q"], np.zeros((1, 2)), ["d"], np.zeros((1, 2)), {})


def test_side_column_beside_the_cross_encoder(side, tmp_path, tiny_teacher):
    feat = str(side / "feat")
    common = dict(collection=str(side / "col"), candidates=str(side / "col" / "cands.jsonl"), num_shards=2,
                  max_length=64, buckets=(32, 64), batch_size=16)
    run_score(ScoreConfig(teachers=(tiny_teacher,), out_dir=str(tmp_path / "one"), **common), 0, 1)
    run_score(ScoreConfig(teachers=(tiny_teacher, "side:" + feat), out_dir=str(tmp_path / "two"), **common), 0, 1)
    assert teacher_name("side:" + feat) == "side-feat"
    one, two = _read(tmp_path / "one"), _read(tmp_path / "two")
    q_vec = dict(zip(json.load(open(f"{feat}/query_ids.json")), np.load(f"{feat}/queries.npy").astype(np.float64)))
    p_vec = dict(zip(json.load(open(f"{feat}/passage_ids.json")), np.load(f"{feat}/passages.npy").astype(np.float64)))
    assert one.keys() == two.keys() and len(two) == 12
    text = lambda x: x.decode() if isinstance(x, bytes) else x  # noqa: E731
    for key, rec in two.items():
        np.testing.assert_array_equal(rec["scores"][:, 0], one[key]["scores"][:, 0])
        want = [q_vec[text(key)] @ p_vec[text(p)] for p in rec["pids"]]
        np.testing.assert_allclose(rec["scores"][:, 1], want, rtol=1e-6, atol=1e-7)
    # other features in the same output directory: refused, naming the teachers
    other = tmp_path / "feat"  # the same column name, other vectors
    write_side_features(str(other), json.load(open(f"{feat}/query_ids.json")), np.load(f"{feat}/queries.npy"),
                        json.load(open(f"{feat}/passage_ids.json")), np.load(f"{feat}/passages.npy")[::-1].copy(), {})
    with pytest.raises(DataError, match="teachers"):
        run_score(ScoreConfig(teachers=(tiny_teacher, f"side:{other}"), out_dir=str(tmp_path / "two"), **common), 0, 1)


def test_a_pair_without_side_vector_names_the_file_and_id(side, tmp_path):
    feat = str(side / "feat")
    part = tmp_path / "part"
    qids = json.load(open(f"{feat}/query_ids.json"))
    write_side_features(str(part), qids[1:], np.load(f"{feat}/queries.npy")[1:],
                        json.load(open(f"{feat}/passage_ids.json")), np.load(f"{feat}/passages.npy"), {})
    with pytest.raises(KeyError, match=f"query_ids.json has no vector for '{qids[0]}'"):
        SideFeatures(str(part)).pair_scores([qids[0]], ["d0"])
    common = dict(collection=str(side / "col"), candidates=str(side / "col" / "cands.jsonl"), num_shards=1)
    with pytest.raises(DataError, match="query_ids.json has no vector"):
        run_score(ScoreConfig(teachers=(f"side:{part}",), out_dir=str(tmp_path / "s"), **common), 0, 1)


def test_side_teacher_rerank_script_scores_each_pair_with_its_own_vectors(tmp_path):
    """scripts/side_teacher_rerank.py: BM25 and the cross-encoder rank every query's positive last of 7, the side
    vectors (one-hot, a query's equal to its positive's) first; the table must say so for every query."""
    import os
    import subprocess
    import sys

    from distill_jax.data.candidates import write_trec_run

    cands = _write_collection(tmp_path / "col")
    os.makedirs(tmp_path / "job" / "runs")
    ranked = {c["qid"]: [(d, float(7 - i)) for i, d in enumerate(c["neg"] + c["pos"])] for c in cands}
    write_trec_run(str(tmp_path / "job" / "runs" / "bm25.trec"), ranked)
    write_trec_run(str(tmp_path / "job" / "runs" / "teacher.trec"),
                   {q: [(d, 10.0 * s) for d, s in r] for q, r in ranked.items()})
    doc_ids = [f"d{i}" for i in range(40)]
    passages = np.eye(40, dtype=np.float32)
    queries = np.stack([passages[doc_ids.index(c["pos"][0])] for c in cands])
    write_side_features(str(tmp_path / "side"), [c["qid"] for c in cands], queries, doc_ids, passages, {})
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, os.path.join(repo, "scripts", "side_teacher_rerank.py"), "--job",
                          str(tmp_path / "job"), "--side", str(tmp_path / "side"), "--collection",
                          str(tmp_path / "col"), "--split", "train", "--depth", "7"],
                         capture_output=True, text=True, check=True).stdout
    ndcg = {line[:28].strip(): float(line[28:].split()[0]) for line in out.splitlines()[3:] if line.strip()}
    assert ndcg["side alone"] == 1.0  # the positive first for every query
    assert ndcg["cross-encoder"] == ndcg["cross-encoder + BM25"] == pytest.approx(1 / np.log2(8), abs=1e-4)
    assert set(ndcg) == {"cross-encoder", "cross-encoder + BM25", "cross-encoder + side",
                         "cross-encoder + BM25 + side", "side alone"}


@pytest.mark.parametrize("variant, student, infonce_t", [("", "dense_distilled_t4", 0.05),
                                                          (":colbert", "colbert_distilled_t4", 1.0)])
def test_side_recipe_is_the_jobs_student_with_the_side_key(variant, student, infonce_t):
    """The side-information recipe differs from the job's student in the answer key, work directory and steps
    only, so its figure beside the same recipe on the two-column key isolates the side column; the student learns
    the z-score mean of every column, through a KL at 4x its InfoNCE temperature."""
    job = load_run_config("configs/scifact.py")
    want = student_train_config(job, next(s for s in job.students if s.name == student))
    got = load_config(f"configs/side_information.py{variant}")
    assert (got.data.dataset_dir, got.steps, got.data.teacher_combine) == ("runs/scores_side", 300, "zmean")
    assert got.workdir != want.workdir and got.data.dataset_dir != want.data.dataset_dir and got.steps != want.steps
    assert dataclasses.replace(got, workdir=want.workdir, steps=want.steps, data=dataclasses.replace(
        got.data, dataset_dir=want.data.dataset_dir)) == want
    (kl,) = got.loss.objectives
    assert kl.name == "kl" and kl.hp == {"temperature": 4 * infonce_t, "teacher_temperature": 0.75}
    assert got.loss.name == "infonce" and got.loss.hp == {"temperature": infonce_t} and got.loss.in_batch


def test_side_recipe_trains_resumes_and_eight_devices_equal_one(tmp_path):
    check_trains_and_resumes(tmp_path, "side_information")
    check_eight_equal_one(tiny("side_information"))
