"""Tokenisation with the real all-MiniLM-L6-v2 tokenizer: exact ids, ColBERT markers, expansion,
punctuation, truncation, errors, and parity with PyLate's ColBERT tokenisation."""

import shutil
import string
import warnings

import numpy as np
import pytest

from distill_jax.data.tokenize import (
    encode_colbert_documents,
    encode_colbert_queries,
    encode_pairs,
    encode_texts,
    load_tokenizer,
    punctuation_ids,
)
from distill_jax.models.colbert import ColBERTConfig

CLS, SEP, PAD, MASK, Q_MARK, D_MARK = 101, 102, 0, 103, 1, 2  # bert-base-uncased vocabulary ids

QUERIES = ["what is the capital of France?", "How do vaccines work"]
DOCS = ["Paris is the capital, and largest city, of France!", "Vaccines train the immune system."]


@pytest.fixture(scope="module")
def tok(minilm_dir):
    return load_tokenizer(minilm_dir)


def body(tok, text):
    """Word-piece ids of a text without special tokens, from the tokenizer's tokenize + vocab lookup."""
    return tok.convert_tokens_to_ids(tok.tokenize(text))


def test_load_tokenizer_is_fast_with_the_bert_vocabulary(tok):
    assert tok.is_fast
    specials = (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, tok.mask_token_id)
    assert specials == (CLS, SEP, PAD, MASK)
    assert tok.convert_tokens_to_ids(["[unused0]", "[unused1]"]) == [Q_MARK, D_MARK]


def test_encode_texts_exact_ids(tok):
    out = encode_texts(tok, ["Hello world!", "a b"], max_length=8)
    np.testing.assert_array_equal(out["input_ids"], [[CLS, 7592, 2088, 999, SEP, PAD, PAD, PAD],
                                                     [CLS, 1037, 1038, SEP, PAD, PAD, PAD, PAD]])
    np.testing.assert_array_equal(out["attention_mask"], [[1, 1, 1, 1, 1, 0, 0, 0],
                                                          [1, 1, 1, 1, 0, 0, 0, 0]])
    assert set(out) == {"input_ids", "attention_mask"}
    assert all(v.dtype == np.int32 for v in out.values())
    # Same ids as the tokenizer called directly, and truncation keeps the final [SEP].
    direct = tok(DOCS, truncation=True, max_length=7, padding="max_length")
    ids = encode_texts(tok, DOCS, max_length=7)["input_ids"]
    np.testing.assert_array_equal(ids, direct["input_ids"])
    assert ids[0, -1] == SEP


def test_encode_pairs_layout_and_longest_first_truncation(tok):
    q, p = "what is x?", "x is y."
    out = encode_pairs(tok, [q], [p], max_length=12)
    np.testing.assert_array_equal(out["input_ids"][0], [CLS, 2054, 2003, 1060, 1029, SEP,
                                                        1060, 2003, 1061, 1012, SEP, PAD])
    np.testing.assert_array_equal(out["token_type_ids"][0], [0] * 6 + [1] * 5 + [0])
    np.testing.assert_array_equal(out["attention_mask"][0], [1] * 11 + [0])
    # A long passage loses its tail; the short query stays whole (longest_first, as CrossEncoder).
    long_p = " ".join(["protein"] + ["folding"] * 50)
    out = encode_pairs(tok, QUERIES[:1], [long_p], max_length=20)
    qb, pb = body(tok, QUERIES[0]), body(tok, long_p)
    expected = [CLS] + qb + [SEP] + pb[: 20 - len(qb) - 3] + [SEP]
    np.testing.assert_array_equal(out["input_ids"][0], expected)
    assert out["attention_mask"].all()


def test_colbert_queries_marker_and_mask_expansion(tok):
    cfg = ColBERTConfig(query_maxlen=16)
    out = encode_colbert_queries(tok, QUERIES, cfg)
    for row, text in enumerate(QUERIES):
        real = [CLS, Q_MARK] + body(tok, text) + [SEP]
        expected = real + [MASK] * (16 - len(real))
        np.testing.assert_array_equal(out["input_ids"][row], expected)
        pad = 16 - len(real)
        np.testing.assert_array_equal(out["attention_mask"][row], [1] * len(real) + [0] * pad)
    np.testing.assert_array_equal(out["score_mask"], np.ones((2, 16)))
    assert all(v.dtype == np.int32 and v.shape == (2, 16) for v in out.values())
    attend_cfg = ColBERTConfig(query_maxlen=16, attend_to_expansion_tokens=True)
    attend = encode_colbert_queries(tok, QUERIES, attend_cfg)
    np.testing.assert_array_equal(attend["input_ids"], out["input_ids"])
    np.testing.assert_array_equal(attend["attention_mask"], np.ones((2, 16)))


def test_colbert_query_truncation_warns_with_the_count(tok):
    cfg = ColBERTConfig(query_maxlen=8)  # room for 5 text tokens
    five, six = "a b c d e", "a b c d e f"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exactly filling the room is not a truncation
        out = encode_colbert_queries(tok, [five], cfg)
    np.testing.assert_array_equal(out["input_ids"][0], [CLS, Q_MARK, 1037, 1038, 1039, 1040, 1041, SEP])
    with pytest.warns(UserWarning, match="2 of 3 queries have more than 5 tokens"):
        out = encode_colbert_queries(tok, [six, five, six + " g h"], cfg)
    np.testing.assert_array_equal(out["input_ids"][0], [CLS, Q_MARK, 1037, 1038, 1039, 1040, 1041, SEP])
    np.testing.assert_array_equal(out["attention_mask"], np.ones((3, 8)))


def test_colbert_documents_marker_padding_and_punctuation_mask(tok):
    cfg = ColBERTConfig(doc_maxlen=20)
    out = encode_colbert_documents(tok, DOCS, cfg)
    punct = {tok.convert_tokens_to_ids(c) for c in string.punctuation}
    for row, text in enumerate(DOCS):
        real = [CLS, D_MARK] + body(tok, text) + [SEP]
        np.testing.assert_array_equal(out["input_ids"][row], real + [PAD] * (20 - len(real)))
        pad = 20 - len(real)
        np.testing.assert_array_equal(out["attention_mask"][row], [1] * len(real) + [0] * pad)
        score = [int(t not in punct) for t in real] + [0] * (20 - len(real))
        np.testing.assert_array_equal(out["score_mask"][row], score)
    # "," "," "!" in the first document, "." in the second are not scored; [CLS], marker and [SEP] are.
    assert (out["attention_mask"] - out["score_mask"]).sum(axis=1).tolist() == [3, 1]
    keep = encode_colbert_documents(tok, DOCS, ColBERTConfig(doc_maxlen=20, mask_punctuation=False))
    np.testing.assert_array_equal(keep["score_mask"], out["attention_mask"])


def test_colbert_documents_truncate_at_doc_maxlen_keeping_sep(tok):
    long_doc = " ".join(f"word{i}" for i in range(100))
    out = encode_colbert_documents(tok, [long_doc], ColBERTConfig(doc_maxlen=12))
    np.testing.assert_array_equal(out["input_ids"][0], [CLS, D_MARK] + body(tok, long_doc)[:9] + [SEP])
    assert out["attention_mask"].all()


def test_punctuation_ids_are_the_32_ascii_punctuation_tokens(tok):
    ids = punctuation_ids(tok)
    assert len(ids) == 32
    expected = sorted(string.punctuation, key=tok.convert_tokens_to_ids)
    assert tok.convert_ids_to_tokens(ids.tolist()) == expected


def test_parity_with_pylate_colbert_tokenisation(tok, minilm_dir):
    from pylate import models

    cfg = ColBERTConfig()
    peer = models.ColBERT(model_name_or_path=minilm_dir, query_prefix=cfg.query_marker,
                          document_prefix=cfg.doc_marker, device="cpu")
    queries = QUERIES + [" ".join(["long"] * 40)]
    theirs = peer.tokenize(queries, is_query=True)
    with pytest.warns(UserWarning, match="1 of 3 queries"):
        ours = encode_colbert_queries(tok, queries, cfg)
    np.testing.assert_array_equal(ours["input_ids"], theirs["input_ids"].numpy())
    np.testing.assert_array_equal(ours["attention_mask"], theirs["attention_mask"].numpy())

    docs = DOCS + [" ".join(f"term{i}" for i in range(300))]
    theirs = peer.tokenize(docs, is_query=False)
    ours = encode_colbert_documents(tok, docs, cfg)
    # PyLate pads to the longest document (with [MASK]); we pad to doc_maxlen (with [PAD]).
    width = theirs["input_ids"].shape[1]
    assert width == cfg.doc_maxlen
    att = theirs["attention_mask"].numpy()
    np.testing.assert_array_equal(ours["attention_mask"], att)
    np.testing.assert_array_equal(np.where(att == 1, ours["input_ids"], -1),
                                  np.where(att == 1, theirs["input_ids"].numpy(), -1))
    assert set(punctuation_ids(tok).tolist()) == set(peer.skiplist)


@pytest.mark.parametrize("encode", ["texts", "pairs", "queries", "documents"])
def test_bad_texts_are_named_by_index(tok, encode):
    cfg = ColBERTConfig()
    calls = {
        "texts": lambda xs: encode_texts(tok, xs, 16),
        "pairs": lambda xs: encode_pairs(tok, ["q"] * len(xs), xs, 16),
        "queries": lambda xs: encode_colbert_queries(tok, xs, cfg),
        "documents": lambda xs: encode_colbert_documents(tok, xs, cfg),
    }
    call = calls[encode]
    with pytest.raises(ValueError, match=r"\[1\] is empty or whitespace only"):
        call(["fine", "", "fine"])
    with pytest.raises(ValueError, match=r"\[2\] is empty or whitespace only"):
        call(["fine", "ok", " \n\t"])
    with pytest.raises(TypeError, match=r"\[1\] is a NoneType, not a string"):
        call(["fine", None])
    with pytest.raises(TypeError, match="must be a list of strings, got str"):
        call("a single string")


def test_configuration_errors(tok, tmp_path, minilm_dir):
    with pytest.raises(ValueError, match=r"query_marker='\[Q\]' is not a token.*\[unused0\]"):
        encode_colbert_queries(tok, QUERIES, ColBERTConfig(query_marker="[Q]"))
    with pytest.raises(ValueError, match=r"doc_marker='\[D\]' is not a token"):
        encode_colbert_documents(tok, DOCS, ColBERTConfig(doc_marker="[D]"))
    with pytest.raises(ValueError, match="query_maxlen=3 leaves no room"):
        encode_colbert_queries(tok, QUERIES, ColBERTConfig(query_maxlen=3))
    with pytest.raises(ValueError, match="2 queries but 1 passages"):
        encode_pairs(tok, QUERIES, DOCS[:1], 16)
    # A model directory without tokenizer files (config.json alone would yield a 5-token vocabulary).
    shutil.copy(f"{minilm_dir}/config.json", tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="has no tokenizer vocabulary"):
        load_tokenizer(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no tokenizer could be loaded"):
        load_tokenizer(str(tmp_path / "missing"))


# ---------------------------------------------------------------------------------------------------------------
# One assembly for text and pre-tokenised bodies; longest_first; the token table
# ---------------------------------------------------------------------------------------------------------------

ZERO_TOKENS = "\u200b"  # not blank for str.strip, but BERT's normaliser drops it: a text of 0 word pieces


@pytest.fixture(scope="module")
def scifact_texts(shared_data):
    """Real scifact passages: 120 random, the 40 longest and the 40 shortest by characters, plus tiny texts."""
    from distill_jax.data.collections import load_collection

    ids, texts = load_collection(str(shared_data / "scifact"), None).passages()
    by_len = np.argsort([len(t) for t in texts], kind="stable")
    pick = np.concatenate([np.random.default_rng(0).choice(len(texts), 120, replace=False), by_len[-40:],
                           by_len[:40]])
    return [texts[i] for i in pick] + ["a", "Ok.", ZERO_TOKENS, "?"]


def _longest_first_reference(a, b, room):
    """Token-at-a-time reading of longest_first as tokenizers' truncation.rs states it, in plain Python."""
    if a + b <= room:
        return a, b
    short, long_ = sorted((a, b))
    if 2 * short <= room:
        keep_short, keep_long = short, room - short
    else:
        keep_short, keep_long = room // 2, room // 2 + room % 2
    return (keep_long, keep_short) if a > b else (keep_short, keep_long)


def test_longest_first_equals_the_hf_pair_truncation_exactly(tok):
    # Every (query, passage) length pair 0..14 tokens at odd and even lengths: all three branches and ties.
    word = {n: " ".join(["a"] * n) if n else ZERO_TOKENS for n in range(15)}
    word_b = {n: " ".join(["b"] * n) if n else ZERO_TOKENS for n in range(15)}
    grid = [(a, b) for a in range(15) for b in range(15)]
    for max_length in (3, 4, 7, 8, 12, 13, 40):
        qs, ps = [word[a] for a, _ in grid], [word_b[b] for _, b in grid]
        ours = encode_pairs(tok, qs, ps, max_length)
        hf = tok(qs, ps, truncation="longest_first", max_length=max_length, padding="max_length",
                 return_token_type_ids=True)
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            np.testing.assert_array_equal(ours[key], hf[key], err_msg=f"{key} at max_length {max_length}")
        kept = [((r == 1037).sum(), (r == 1038).sum()) for r in ours["input_ids"]]
        assert kept == [_longest_first_reference(a, b, max_length - 3) for a, b in grid]


def test_encode_pairs_equals_hf_on_scifact_with_long_queries(tok, scifact_texts):
    # Passages as queries too: both sides over the room (the half split, the longer side first or second).
    rng = np.random.default_rng(1)
    texts = scifact_texts
    queries = [texts[i] for i in rng.integers(0, len(texts), 160)]
    passages = [texts[i] for i in rng.integers(0, len(texts), 160)]
    # (HF's own pair truncation of long texts to a short length is slow: fewer pairs there.)
    for max_length, count in ((24, 40), (64, 160), (256, 160)):
        ours = encode_pairs(tok, queries[:count], passages[:count], max_length)
        hf = tok(queries[:count], passages[:count], truncation="longest_first", max_length=max_length,
                 padding="max_length", return_token_type_ids=True)
        for key in ours:
            np.testing.assert_array_equal(ours[key], hf[key], err_msg=f"{key} at max_length {max_length}")
            assert ours[key].dtype == np.int32


def test_encode_texts_and_colbert_equal_independent_references_on_scifact(tok, scifact_texts):
    texts = scifact_texts
    for max_length in (5, 32, 180):
        hf = tok(texts, truncation=True, max_length=max_length, padding="max_length")
        ours = encode_texts(tok, texts, max_length)
        np.testing.assert_array_equal(ours["input_ids"], hf["input_ids"])
        np.testing.assert_array_equal(ours["attention_mask"], hf["attention_mask"])
    cfg = ColBERTConfig(query_maxlen=32, doc_maxlen=180)
    punct = {tok.convert_tokens_to_ids(c) for c in string.punctuation}
    docs = encode_colbert_documents(tok, texts, cfg)
    with pytest.warns(UserWarning, match="queries have more than 29 tokens"):
        queries = encode_colbert_queries(tok, texts, cfg)
    for row, text in enumerate(texts):
        b = body(tok, text)
        real = [CLS, D_MARK] + b[:177] + [SEP]
        np.testing.assert_array_equal(docs["input_ids"][row], real + [PAD] * (180 - len(real)))
        np.testing.assert_array_equal(docs["score_mask"][row],
                                      [int(t not in punct) for t in real] + [0] * (180 - len(real)))
        real = [CLS, Q_MARK] + b[:29] + [SEP]
        np.testing.assert_array_equal(queries["input_ids"][row], real + [MASK] * (32 - len(real)))


def test_table_path_gives_the_text_path_bytes_for_every_layout(tok, scifact_texts):
    from distill_jax.data import tokenize as tk
    from distill_jax.data.collections import TextTable
    from distill_jax.data.token_cache import TokenTable

    texts = scifact_texts
    table = TokenTable.build(TextTable([f"d{i}" for i in range(len(texts))], texts), tok, cap=253)
    assert table.ids.dtype == np.uint16  # 30,522 ids fit
    np.testing.assert_array_equal(table.lengths, [len(body(tok, t)) for t in texts])
    lay = tk.layout(tok)
    rng = np.random.default_rng(2)
    rows = rng.integers(0, len(texts), 300)  # with repeats, in any order
    rows2 = rng.integers(0, len(texts), 300)
    sel, sel2 = [texts[r] for r in rows], [texts[r] for r in rows2]

    def same(a, b):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == b[key].dtype == np.int32
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)

    for length in (4, 32, 180):
        same(tk.assemble_texts(table.gather(rows, length - 2), length, lay), encode_texts(tok, sel, length))
        cfg = ColBERTConfig(query_maxlen=length, doc_maxlen=length)
        same(tk.assemble_colbert_documents(table.gather(rows, length - 3), cfg, lay),
             encode_colbert_documents(tok, sel, cfg))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the text path warns about the long queries
            same(tk.assemble_colbert_queries(table.gather(rows, length - 3), cfg, lay),
                 encode_colbert_queries(tok, sel, cfg))
    for length in (3, 24, 256):
        same(tk.assemble_pairs(table.gather(rows, length - 3), table.gather(rows2, length - 3), length, lay),
             encode_pairs(tok, sel, sel2, length))
    with pytest.raises(ValueError, match="stores 253 tokens a text but 254 are asked"):
        table.gather(rows, 254)
    with pytest.raises(ValueError, match="kept to 10 columns but this layout has room for 30"):
        tk.assemble_texts(table.gather(rows, 10), 32, lay)


def test_token_table_cache_round_trip_and_fingerprint(tok, scifact_texts, tmp_path):
    from distill_jax.data.collections import TextTable
    from distill_jax.data.token_cache import TokenTable

    texts = TextTable([f"d{i}" for i in range(50)], scifact_texts[:50])
    built = TokenTable.build(texts, tok, cap=40, cache_dir=tmp_path)
    (entry,) = [p for p in tmp_path.iterdir()]  # one directory, no temporary left behind
    assert entry.name == f"tokens-{built.fingerprint[:32]}"
    again = TokenTable.build(texts, tok, cap=40, cache_dir=tmp_path)
    assert isinstance(again.ids, np.memmap)  # read from disk, not tokenised again
    for name in ("ids", "offsets", "lengths"):
        np.testing.assert_array_equal(getattr(again, name), getattr(built, name))
    rows = np.arange(50)[::-1]
    np.testing.assert_array_equal(again.gather(rows, 40).ids, built.gather(rows, 40).ids)
    # A different cap, or one changed text, is a different table.
    assert TokenTable.build(texts, tok, cap=41, cache_dir=tmp_path).fingerprint != built.fingerprint
    changed = TextTable([f"d{i}" for i in range(50)], scifact_texts[:49] + ["another text"])
    other = TokenTable.build(changed, tok, cap=40, cache_dir=tmp_path)
    assert other.fingerprint != built.fingerprint and len(list(tmp_path.iterdir())) == 3
    np.testing.assert_array_equal(other.lengths[:49], built.lengths[:49])
    assert other.lengths[49] == 2


def test_layout_refuses_left_truncation(minilm_dir):
    from distill_jax.data.tokenize import layout

    left = load_tokenizer(minilm_dir)
    left.truncation_side = "left"
    with pytest.raises(ValueError, match="truncates from the left"):
        encode_texts(left, ["a"], 8)
    assert layout(load_tokenizer(minilm_dir)).vocab_size == 30522
