"""The fresh SPLADE MLM head (checkpoints without one): identity transform, vocabulary bias -z |e_v|.

Checks: the import fills exactly that head (and only when it is missing), the per-position firing rate of a random
encoder matches the Gaussian tail the bias is derived from, and all-MiniLM-L6-v2 starts sparse and lexical.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax.models import build_model, init_params, load_pretrained
from distill_jax.models.hf import export_state_dict, import_params
from distill_jax.models.splade import FRESH_HEAD_SCALE, FRESH_HEAD_Z, lexical_mlm_head


def _state_without_mlm(cfg, params):
    state = export_state_dict("splade", cfg, params)
    return {k: v for k, v in state.items() if not k.startswith("cls.")}


def test_missing_head_gets_identity_transform_and_norm_scaled_bias(tiny_cfg):
    model = build_model("splade", tiny_cfg)
    source = init_params(model, jax.random.key(1))
    fresh = init_params(model, jax.random.key(2))
    params = import_params("splade", tiny_cfg, _state_without_mlm(tiny_cfg, source), fresh)
    emb = np.asarray(source["encoder"]["embeddings"]["word_embeddings"]["embedding"], np.float64)
    want_bias = -FRESH_HEAD_Z * FRESH_HEAD_SCALE * np.sqrt((emb ** 2).sum(axis=1))
    np.testing.assert_allclose(params["bias"], want_bias, rtol=1e-6)
    np.testing.assert_array_equal(params["transform_dense"]["kernel"], np.eye(tiny_cfg.hidden_size))
    np.testing.assert_array_equal(params["transform_dense"]["bias"], 0.0)
    np.testing.assert_allclose(params["transform_LayerNorm"]["scale"], FRESH_HEAD_SCALE, rtol=1e-7)
    np.testing.assert_array_equal(params["transform_LayerNorm"]["bias"], 0.0)
    # the encoder itself is the checkpoint's
    np.testing.assert_array_equal(params["encoder"]["layer_1"]["output_dense"]["kernel"],
                                  source["encoder"]["layer_1"]["output_dense"]["kernel"])


def test_fresh_head_z_and_scale_come_from_the_train_config(tiny_cfg, tmp_path):
    """``model.splade_head_z`` / ``splade_head_scale`` reach the head that a headless checkpoint gets, and their
    defaults are the model's (config.py imports no jax, so it repeats the two numbers)."""
    from safetensors.numpy import save_file

    from distill_jax.config import ModelConfig, load_config
    from distill_jax.train import state as state_lib

    assert (ModelConfig().splade_head_z, ModelConfig().splade_head_scale) == (FRESH_HEAD_Z, FRESH_HEAD_SCALE)

    model = build_model("splade", tiny_cfg)
    source = init_params(model, jax.random.key(1))
    save_file({k: np.ascontiguousarray(v) for k, v in _state_without_mlm(tiny_cfg, source).items()},
              str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(__import__("json").dumps(tiny_cfg.to_hf_dict()))
    cfg = load_config("configs/tiny.py:splade", [f"model.checkpoint={tmp_path}", "model.splade_head_z=4.0",
                                                 "model.splade_head_scale=0.5"])
    _, _, params = state_lib.make_model(cfg)
    emb = np.asarray(source["encoder"]["embeddings"]["word_embeddings"]["embedding"], np.float64)
    np.testing.assert_allclose(params["bias"], -4.0 * 0.5 * np.sqrt((emb ** 2).sum(axis=1)), rtol=1e-6)
    np.testing.assert_allclose(params["transform_LayerNorm"]["scale"], 0.5, rtol=1e-7)


def test_present_head_is_left_untouched(tiny_cfg):
    model = build_model("splade", tiny_cfg)
    source = init_params(model, jax.random.key(1))
    source["bias"] = jnp.linspace(-1.0, 1.0, tiny_cfg.vocab_size)
    state = export_state_dict("splade", tiny_cfg, source)
    params = import_params("splade", tiny_cfg, state, init_params(model, jax.random.key(2)))
    for name in ("bias", "transform_dense", "transform_LayerNorm"):
        jax.tree.map(np.testing.assert_array_equal, params[name], jax.tree.map(np.asarray, source[name]))


@pytest.mark.parametrize("z", [0.5, 1.0, 2.0])
def test_firing_rate_of_random_encoder_is_the_gaussian_tail(tiny_cfg, z):
    """LayerNorm gives t zero mean, unit variance per component, so for embeddings independent of t the logit
    t.e_v / |e_v| is ~N(0, 1): a fraction 1 - Phi(z) of (position, term) logits is positive."""
    model = build_model("splade", tiny_cfg)
    params = init_params(model, jax.random.key(3))
    params.update(jax.tree.map(jnp.asarray, lexical_mlm_head(
        params["encoder"]["embeddings"]["word_embeddings"]["embedding"], z)))
    ids = jax.random.randint(jax.random.key(4), (16, 32), 5, tiny_cfg.vocab_size)
    h = model.apply({"params": params}, ids, jnp.ones_like(ids), None, True,
                    method=lambda m, i, a, t, d: m.encoder(i, a, t, d))
    logits = model.apply({"params": params}, h, method=lambda m, x: m.mlm_logits(x))
    rate = float(jnp.mean(logits > 0))
    tail = 0.5 * math.erfc(z / math.sqrt(2.0))
    assert abs(rate - tail) < 0.25 * tail + 0.002, (rate, tail)


def test_minilm_starts_sparse_and_lexical(minilm_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir)
    model, params = load_pretrained("splade", minilm_dir)
    text = "a deficiency of vitamin b6 decreases blood levels of homocysteine"
    batch = tok([text], padding="max_length", max_length=24, return_tensors="np")
    vec = np.asarray(model.apply({"params": params}, {"input_ids": batch["input_ids"],
                                                      "attention_mask": batch["attention_mask"]}))[0]
    active = int((vec > 0).sum())
    assert 20 <= active <= 5000, active  # a random head activates ~30 000 of 30 522 terms
    top = set(tok.convert_ids_to_tokens(np.argsort(-vec)[:15].tolist()))
    assert {"vitamin", "deficiency", "blood"} <= top, top
