"""BEIR reader: real scifact/cranfield counts, passage text convention, validation messages, TextTable."""

import gzip
import json

import numpy as np
import pytest

from distill_jax.data.collections import (DataError, TextTable, load_collection, passage_text, read_corpus,
                                          read_qrels, read_queries)


def _beir(tmp_path, corpus, queries, qrels, gz=False):
    (tmp_path / "qrels").mkdir()
    lines = "".join(json.dumps(d) + "\n" if isinstance(d, dict) else d + "\n" for d in corpus)
    if gz:
        with gzip.open(tmp_path / "corpus.jsonl.gz", "wt") as f:
            f.write(lines)
    else:
        (tmp_path / "corpus.jsonl").write_text(lines)
    (tmp_path / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (tmp_path / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{s}\n" for q, d, s in qrels))
    return str(tmp_path)


DOCS = [{"_id": "d1", "title": "T1", "text": "one"}, {"_id": "d2", "title": "", "text": "two"},
        {"_id": "d3", "title": "T3", "text": "three"}]
QUERIES = [{"_id": "q1", "text": "first"}, {"_id": "q2", "text": "second"}, {"_id": "q3", "text": "third"}]


def test_scifact_counts_and_passage_text(shared_data):
    col = load_collection(str(shared_data / "scifact"), "train")
    assert len(col.corpus) == 5183
    assert len(col.queries) == 809  # the train split's judged queries (BEIR GenericDataLoader)
    assert sum(len(v) for v in col.qrels.values()) == 919
    test = load_collection(str(shared_data / "scifact"), "test")
    assert len(test.queries) == 300 and sum(len(v) for v in test.qrels.values()) == 339
    with open(shared_data / "scifact" / "corpus.jsonl") as f:
        first = json.loads(f.readline())
    assert col.passage(first["_id"]) == first["title"] + " " + first["text"]
    # Cranfield's docs 471 and 995 are empty in the original: refused by default, kept or skipped on request
    with pytest.raises(DataError, match=r"cranfield/corpus.jsonl:471: document '471' has an empty title and text"):
        load_collection(str(shared_data / "cranfield"), "test")
    cran = load_collection(str(shared_data / "cranfield"), "test", on_empty="keep")
    assert len(cran.corpus) == 1400 and len(cran.queries) == 225 and cran.passage("471") == ""
    # skipping them (an explicit choice) also drops their judgements (125, 995); an unknown id stays an error
    skip = load_collection(str(shared_data / "cranfield"), "test", on_empty="skip")
    assert len(skip.corpus) == 1398 and "995" not in skip.qrels["125"]
    assert sum(map(len, skip.qrels.values())) == sum(map(len, cran.qrels.values())) - 1
    assert {g for docs in cran.qrels.values() for g in docs.values()} <= {1, 2, 3, 4}
    assert load_collection(str(shared_data / "scifact"), None).qrels == {}


def test_small_folder_and_gzip(tmp_path):
    path = _beir(tmp_path, DOCS, QUERIES, [("q1", "d1", 1), ("q2", "d3", 2)], gz=True)
    col = load_collection(path, "train")
    assert list(col.queries) == ["q1", "q2"]  # q3 has no judgement in this split
    assert col.qrels == {"q1": {"d1": 1}, "q2": {"d3": 2}}
    ids, texts = col.passages()
    assert ids == ["d1", "d2", "d3"] and texts == ["T1 one", "two", "T3 three"]
    assert passage_text("", "  x ") == "x"


@pytest.mark.parametrize("corpus, needle", [
    (DOCS + [{"_id": "d2", "title": "", "text": "again"}], "corpus.jsonl:4: duplicate document id 'd2' (first seen on line 2)"),
    (DOCS + [{"_id": "", "text": "x"}], "corpus.jsonl:4: empty '_id'"),
    (DOCS + [{"text": "x"}], "corpus.jsonl:4: missing field '_id'"),
    (DOCS + [{"_id": "d9", "title": " ", "text": ""}], "corpus.jsonl:4: document 'd9' has an empty title and text"),
    (DOCS + ["{not json"], "corpus.jsonl:4: not valid JSON"),
])
def test_corpus_errors_name_file_and_line(tmp_path, corpus, needle):
    path = _beir(tmp_path, corpus, QUERIES, [("q1", "d1", 1)])
    with pytest.raises(DataError, match=None) as e:
        load_collection(path, "train")
    assert needle in str(e.value), str(e.value)


def test_query_and_qrels_errors(tmp_path):
    (tmp_path / "a").mkdir()
    path = _beir(tmp_path / "a", DOCS, QUERIES + [{"_id": "q1", "text": "dup"}], [("q1", "d1", 1)])
    with pytest.raises(DataError, match=r"queries.jsonl:4: duplicate query id 'q1'"):
        read_queries(path + "/queries.jsonl")
    (tmp_path / "b").mkdir()
    path = _beir(tmp_path / "b", DOCS, QUERIES + [{"_id": "q9", "text": " "}], [("q1", "d1", 1)])
    with pytest.raises(DataError, match=r"queries.jsonl:4: query 'q9' has an empty 'text'"):
        load_collection(path, "train")
    (tmp_path / "c").mkdir()
    path = _beir(tmp_path / "c", DOCS, QUERIES, [("q1", "d1", 1), ("q2", "nope", 1)])
    with pytest.raises(DataError, match=r"train.tsv:3: corpus id 'nope' is not in the corpus; add the document"):
        load_collection(path, "train")
    (tmp_path / "d").mkdir()
    path = _beir(tmp_path / "d", DOCS, QUERIES, [("q7", "d1", 1)])
    with pytest.raises(DataError, match=r"train.tsv:2: query id 'q7' is not in queries.jsonl"):
        load_collection(path, "train")
    with pytest.raises(DataError, match=r"test.tsv not found; splits here: \['train'\]"):
        load_collection(path, "test")
    (tmp_path / "e").mkdir()
    path = _beir(tmp_path / "e", DOCS, QUERIES, [("q1", "d1", "high")])
    with pytest.raises(DataError, match=r"train.tsv:2: score 'high' is not an integer grade"):
        read_qrels(path + "/qrels/train.tsv")


def test_text_table_matches_dict(shared_data):
    corpus = read_corpus(str(shared_data / "scifact" / "corpus.jsonl"))
    texts = {k: passage_text(*v) for k, v in corpus.items()}
    table = TextTable.from_mapping(texts)
    assert len(table) == len(texts)
    rng = np.random.default_rng(0)
    ids = list(texts)
    pick = [ids[i] for i in rng.choice(len(ids), 200, replace=False)]
    assert table.texts(pick) == [texts[i] for i in pick]
    rows = table.rows(pick + ["not-a-doc", "1", ids[0] + "0"])
    assert (rows[:200] >= 0).all() and (rows[200:] == -1).all()
    assert ids[5] in table and "not-a-doc" not in table
    with pytest.raises(KeyError, match="not-a-doc"):
        table.texts([ids[0], "not-a-doc"])
    with pytest.raises(DataError, match="duplicate id 'a'"):
        TextTable(["a", "b", "a"], ["x", "y", "z"])
    uni = TextTable(["é1", "z"], ["ü text", ""])
    assert uni.texts(["é1", "z"]) == ["ü text", ""]
