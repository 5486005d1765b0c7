"""The answer-key engine: bucketed, mesh-sharded pair scoring equals a direct forward, on 1 and 8 devices."""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from distill_jax.models import build_model, init_params
from distill_jax.teacher.scorer import PairScorer, pick_bucket


@pytest.fixture(scope="module")
def teacher(tiny_cfg):
    model = build_model("cross_encoder", tiny_cfg)
    return model, init_params(model, jax.random.key(0))


def _pairs(n, length, vocab, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, length + 1, size=n)
    ids = rng.integers(5, vocab, size=(n, length)).astype(np.int32)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    types = ((np.arange(length)[None] >= (lengths[:, None] // 2)) & (mask > 0)).astype(np.int32)
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": types}


@pytest.mark.parametrize("devices", [1, 8])
def test_bucketed_sharded_scores_equal_direct_forward(teacher, tiny_cfg, devices):
    model, params = teacher
    tokens = _pairs(45, 48, tiny_cfg.vocab_size)
    with jax.default_matmul_precision("highest"):
        direct = np.asarray(model.apply({"params": params}, tokens))
        mesh = Mesh(np.asarray(jax.devices()[:devices]), ("data",))
        scorer = PairScorer(model, params, batch_size=12, buckets=(16, 32, 48), mesh=mesh)
        got = scorer.score(tokens)
    assert np.abs(got - direct).max() < 1e-5
    assert scorer.stats.pairs == 45
    # One compiled shape per bucket actually used, and less padding than scoring everything at 48 tokens.
    assert scorer.stats.shapes <= {(scorer.batch_size, b) for b in (16, 32, 48)}
    real = tokens["attention_mask"].sum()
    assert scorer.stats.padding_fraction < 1 - real / (scorer.stats.batches * scorer.batch_size * 48)


def test_pick_bucket():
    assert [pick_bucket(n, (64, 128, 256)) for n in (1, 64, 65, 200, 256)] == [64, 64, 128, 256, 256]
