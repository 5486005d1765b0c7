"""Parity with the PyTorch peers on identical inputs: the peers' real loss objects, driven by tiny real models.

One random tiny BERT (hidden 32, 2 layers, the all-MiniLM-L6-v2 tokenizer) is saved to a temporary directory and
loaded as a sentence-transformers ``SentenceTransformer`` (dense), a ``SparseEncoder`` (SPLADE) and a PyLate
``ColBERT``. Each peer loss object is called on tokenized texts and teacher labels exactly as its trainer would;
our loss gets the student scores computed from the same model's embeddings (in float64). Conventions where we
differ (temperature scaling, PyLate's score normalisation) are reproduced with our flags; see docs/losses.md.
"""

import jax
import numpy as np
import pytest
import torch  # the `test` extra pins the peers: a missing one is an install error, never a skip

from distill_jax import losses as L

QUERIES = ["what do cats eat", "how tall is mount everest", "who wrote the odyssey"]
DOCS = [
    ["cats eat meat and fish", "the moon orbits the earth", "a recipe for bread", "dogs like to run"],
    ["everest is 8849 metres tall", "the tallest building in dubai", "rivers flow to the sea", "k2 is a mountain"],
    ["homer wrote the odyssey", "shakespeare wrote hamlet", "the iliad is an epic", "a poem about the sea"],
]
B, N = len(QUERIES), len(DOCS[0])
TEACHER = np.array([[8.1, -2.0, -5.5, 0.3], [7.4, 1.2, -6.0, 3.3], [9.0, 2.5, 4.1, -1.0]], np.float32)


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory, minilm_dir):
    import transformers

    path = tmp_path_factory.mktemp("tiny_bert")
    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    transformers.BertForMaskedLM(config).save_pretrained(path)
    transformers.AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(path)
    return str(path)

def features(model):
    """[query features, candidate-column-0 features, ..., column N-1 features] as the ST trainers pass them."""
    columns = [[docs[k] for docs in DOCS] for k in range(N)]
    return [model.tokenize(QUERIES)] + [model.tokenize(column) for column in columns]


def embed(model, feats):
    with torch.no_grad():
        return [model(dict(f))["sentence_embedding"].double().numpy() for f in feats]


def dot_scores(embeddings):
    """[B, N] student scores q_b . d_bk from [query, column 0, ..., column N-1] embeddings."""
    query = embeddings[0]
    return np.stack([np.sum(query * column, axis=-1) for column in embeddings[1:]], axis=1)


@pytest.fixture(scope="module")
def dense_model(tiny_bert_dir):
    from sentence_transformers import SentenceTransformer, models

    model = SentenceTransformer(modules=[models.Transformer(tiny_bert_dir), models.Pooling(32, "mean")], device="cpu")
    return model.eval()


@pytest.fixture(scope="module")
def sparse_model(tiny_bert_dir):
    from sentence_transformers.sparse_encoder import SparseEncoder
    from sentence_transformers.sparse_encoder.models import MLMTransformer, SpladePooling

    return SparseEncoder(modules=[MLMTransformer(tiny_bert_dir), SpladePooling("max")], device="cpu").eval()


def test_sentence_transformers_margin_mse(dense_model, x64):
    from sentence_transformers.losses import MarginMSELoss

    feats = features(dense_model)
    with torch.no_grad():
        theirs = MarginMSELoss(dense_model)(feats, torch.from_numpy(TEACHER)).item()
    scores = dot_scores(embed(dense_model, feats))
    ours = float(L.margin_mse(scores, TEACHER.astype(np.float64), np.ones((B, N), bool)))
    assert abs(ours) > 1e-3
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_sentence_transformers_distill_kl(dense_model, temperature, x64):
    """ST multiplies by T^2 (Hinton); our default does not: t2_scaling=True reproduces it."""
    from sentence_transformers.losses import DistillKLDivLoss

    feats = features(dense_model)
    with torch.no_grad():
        theirs = DistillKLDivLoss(dense_model, temperature=temperature)(feats, torch.from_numpy(TEACHER)).item()
    scores = dot_scores(embed(dense_model, feats))
    ours = L.kl(scores, TEACHER.astype(np.float64), None, temperature=temperature, t2_scaling=True)
    np.testing.assert_allclose(float(ours), theirs, rtol=1e-5)
    unscaled = L.kl(scores, TEACHER.astype(np.float64), None, temperature=temperature)
    np.testing.assert_allclose(float(unscaled) * temperature**2, theirs, rtol=1e-5)


@pytest.mark.parametrize("base", ["margin_mse", "kl"])
def test_sentence_transformers_splade_loss(sparse_model, base, x64):
    """SpladeLoss(SparseMarginMSELoss | SparseDistillKLDivLoss) + FlopsLoss on queries and all documents."""
    from sentence_transformers.sparse_encoder.losses import SparseDistillKLDivLoss, SparseMarginMSELoss, SpladeLoss

    inner = SparseMarginMSELoss(sparse_model) if base == "margin_mse" else SparseDistillKLDivLoss(sparse_model)
    loss = SpladeLoss(sparse_model, inner, document_regularizer_weight=0.3, query_regularizer_weight=0.1)
    feats = features(sparse_model)
    with torch.no_grad():
        theirs = {k: v.item() for k, v in loss(feats, torch.from_numpy(TEACHER)).items()}
    embeddings = embed(sparse_model, feats)
    scores = dot_scores(embeddings)
    if base == "margin_mse":
        ours_base = L.margin_mse(scores, TEACHER.astype(np.float64))
    else:  # SparseDistillKLDivLoss: temperature 2.0 by default, T^2-scaled
        ours_base = L.kl(scores, TEACHER.astype(np.float64), temperature=2.0, t2_scaling=True)
    np.testing.assert_allclose(float(ours_base), theirs["base_loss"], rtol=1e-5)
    # Documents of every column are regularised together, as one [B * N, V] batch.
    docs = np.concatenate(embeddings[1:], axis=0)
    np.testing.assert_allclose(0.3 * float(L.flops(docs)), theirs["document_regularizer_loss"], rtol=1e-5)
    np.testing.assert_allclose(0.1 * float(L.flops(embeddings[0])), theirs["query_regularizer_loss"], rtol=1e-5)
    assert theirs["document_regularizer_loss"] > 0 and theirs["query_regularizer_loss"] > 0
    # Same through our combined helper, past the warm-up.
    combined = L.splade_regularization(embeddings[0], docs, 100, lambda_query=0.1, lambda_doc=0.3, warmup_steps=10)
    np.testing.assert_allclose(float(combined), theirs["document_regularizer_loss"] + theirs["query_regularizer_loss"],
                               rtol=1e-5)


def test_sentence_transformers_flops_loss(sparse_model, x64):
    from sentence_transformers.sparse_encoder.losses import FlopsLoss

    embeddings = embed(sparse_model, features(sparse_model))
    docs = np.concatenate(embeddings[1:], axis=0)
    with torch.no_grad():
        theirs = FlopsLoss(sparse_model).compute_loss_from_embeddings(torch.from_numpy(docs)).item()
    np.testing.assert_allclose(float(L.flops(docs)), theirs, rtol=1e-10)


def test_sentence_transformers_splade_schedule(sparse_model):
    """SpladeRegularizerWeightSchedulerCallback's quadratic weight equals splade_lambda at every step."""
    from sentence_transformers.sparse_encoder.callbacks.splade_callbacks import SpladeRegularizerWeightSchedulerCallback
    from sentence_transformers.sparse_encoder.losses import SparseMarginMSELoss, SpladeLoss

    loss = SpladeLoss(sparse_model, SparseMarginMSELoss(sparse_model), document_regularizer_weight=0.3,
                      query_regularizer_weight=0.1)
    callback = SpladeRegularizerWeightSchedulerCallback(loss)
    callback.warmup_steps = 40  # what on_train_begin sets from max_steps * warmup_ratio
    for step in [0, 1, 7, 20, 39, 40, 41, 400]:
        theirs = callback._calculate_weight_value(step, 0.3)
        assert float(L.splade_lambda(step, 0.3, 40)) == pytest.approx(theirs, rel=1e-6)


def test_pylate_distillation(tiny_bert_dir, x64):
    """PyLate Distillation: KL(teacher || student) with log targets, min-max normalised student scores."""
    from pylate import losses as pylate_losses
    from pylate import models as pylate_models
    from pylate.scores import colbert_kd_scores

    model = pylate_models.ColBERT(model_name_or_path=tiny_bert_dir, device="cpu").eval()
    recorded = []

    def recording_scores(*args, **kwargs):  # PyLate's own MaxSim, recorded so our loss sees the same scores
        scores = colbert_kd_scores(*args, **kwargs)
        recorded.append(scores.detach().double().numpy())
        return scores

    loss = pylate_losses.Distillation(model, score_metric=recording_scores)
    assert loss.normalize_scores  # PyLate's default
    feats = [model.tokenize(QUERIES, is_query=True),
             model.tokenize([doc for docs in DOCS for doc in docs], is_query=False)]
    with torch.no_grad():
        theirs = loss(feats, torch.from_numpy(TEACHER)).item()
    (scores,) = recorded
    assert scores.shape == (B, N)
    ours = L.kl(scores, TEACHER.astype(np.float64), None, normalize_student=True)
    np.testing.assert_allclose(float(ours), theirs, rtol=1e-5)
    # Our default (raw scores) is a different number on the same inputs: the flag is what reproduces PyLate.
    assert abs(float(L.kl(scores, TEACHER.astype(np.float64), None)) - theirs) > 1e-3
