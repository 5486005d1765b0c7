"""Models: parity with PyTorch transformers on the real all-MiniLM-L6-v2 weights, HF layout round trips, errors."""

import dataclasses
import json
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from distill_jax.config import ConfigError
from distill_jax.models import (ColBERT, ColBERTConfig, EncoderConfig, build_model, check_token_ids,
                                init_params, load_pretrained)
from distill_jax.models.encoder import Encoder
from distill_jax.models.hf import export_state_dict, import_params, read_state_dict

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello",
    "Microstructural development of human newborn cerebral white matter assessed by diffusion tensor MRI.",
    "0-dimensional biomaterials show inductive properties.",
]
QUERIES = ["what is diffusion tensor imaging", "fox", "biomaterials induce bone", "lazy dogs"]


@pytest.fixture(autouse=True)
def highest_precision():
    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    return transformers.AutoTokenizer.from_pretrained(minilm_dir)


def _torch(batch):
    return {k: torch.tensor(np.asarray(v)) for k, v in batch.items()}


def test_encoder_parity_with_pytorch_bertmodel(minilm_dir, tokenizer):
    batch = tokenizer(SENTENCES, padding="max_length", max_length=32, return_tensors="np")
    _, params = load_pretrained("dense", minilm_dir)
    cfg = EncoderConfig.from_pretrained_dir(minilm_dir)
    ours = Encoder(cfg).apply({"params": params["encoder"]}, *(jnp.asarray(batch[k]) for k in
                              ("input_ids", "attention_mask", "token_type_ids")))
    ref = transformers.BertModel.from_pretrained(minilm_dir).eval()
    with torch.no_grad():
        want = ref(**_torch(batch)).last_hidden_state.numpy()
    diff = float(np.abs(np.asarray(ours) - want).max())
    print(f"encoder parity, all-MiniLM-L6-v2, max |diff| of last hidden states: {diff:.3e}")
    assert ours.shape == want.shape == (4, 32, 384)
    assert diff < 1e-4


def test_padding_never_changes_real_token_states(minilm_dir, tokenizer):
    _, params = load_pretrained("dense", minilm_dir)
    enc = Encoder(EncoderConfig.from_pretrained_dir(minilm_dir))
    outs = []
    for length in (24, 40):
        b = tokenizer(SENTENCES[:2], padding="max_length", max_length=length, return_tensors="np")
        outs.append((np.asarray(enc.apply({"params": params["encoder"]}, jnp.asarray(b["input_ids"]),
                                          jnp.asarray(b["attention_mask"]))), b["attention_mask"]))
    (a, ma), (b, _) = outs
    real = ma.astype(bool)
    assert np.abs(a[real] - b[:, :24][real]).max() < 1e-5


def test_splade_parity_with_pytorch_masked_lm(minilm_dir, tokenizer, tmp_path, caplog):
    # all-MiniLM-L6-v2 has no MLM head: PyTorch initialises one (seeded); we load that saved checkpoint.
    torch.manual_seed(0)
    mlm = transformers.BertForMaskedLM.from_pretrained(minilm_dir).eval()
    with torch.no_grad():  # make the bias non-trivial so its mapping is tested
        mlm.cls.predictions.bias.normal_(0.0, 0.5)
    mlm.save_pretrained(tmp_path)
    batch = tokenizer(SENTENCES, padding="max_length", max_length=32, return_tensors="np")
    with torch.no_grad():
        logits = mlm(input_ids=torch.tensor(batch["input_ids"]),
                     attention_mask=torch.tensor(batch["attention_mask"])).logits.numpy().astype(np.float64)
    want = (np.log1p(np.maximum(logits, 0)) * batch["attention_mask"][..., None]).max(axis=1)
    model, params = load_pretrained("splade", str(tmp_path))
    got = np.asarray(model.apply({"params": params}, {k: jnp.asarray(batch[k]) for k in
                                                      ("input_ids", "attention_mask")}))
    diff = float(np.abs(got - want).max())
    print(f"SPLADE parity vs BertForMaskedLM + log1p(relu) max-pool: max |diff| {diff:.3e}")
    assert got.shape == (4, 30522) and diff < 1e-4
    # Fresh-head path: the MiniLM directory itself lacks the MLM head, and the log says so.
    with caplog.at_level(logging.WARNING):
        load_pretrained("splade", minilm_dir)
    assert any("has no mlm head" in r.message for r in caplog.records)


def test_cross_encoder_parity_with_sequence_classification(minilm_dir, tokenizer, tmp_path):
    torch.manual_seed(1)
    seq = transformers.BertForSequenceClassification.from_pretrained(minilm_dir, num_labels=1).eval()
    seq.save_pretrained(tmp_path)
    batch = tokenizer(QUERIES, SENTENCES, padding="max_length", max_length=48, truncation=True,
                      return_tensors="np")
    with torch.no_grad():
        want = seq(**_torch(batch)).logits.numpy()[:, 0]
    model, params = load_pretrained("cross_encoder", str(tmp_path))
    got = np.asarray(model.apply({"params": params}, {k: jnp.asarray(v) for k, v in batch.items()}))
    diff = float(np.abs(got - want).max())
    print(f"cross-encoder parity vs BertForSequenceClassification: max |diff| {diff:.3e}")
    assert diff < 1e-4
    # A plain BertModel with a pooler (all-MiniLM-L6-v2) loads as a cross-encoder with a fresh classifier only.
    _, fresh = load_pretrained("cross_encoder", minilm_dir)
    np.testing.assert_array_equal(np.asarray(fresh["pooler"]["kernel"]), seq.bert.pooler.dense.weight.detach().numpy().T)
    # Any leading shape: [B, N, L] pairs give [B, N] logits, equal to the flat computation.
    grid = model.apply({"params": params}, {k: jnp.asarray(v).reshape(2, 2, -1) for k, v in batch.items()})
    np.testing.assert_allclose(np.asarray(grid).ravel(), got, atol=1e-6)


def test_hf_round_trip_is_exact(tiny_cfg):
    for kind in ("cross_encoder", "colbert", "splade"):
        model = build_model(kind, tiny_cfg)
        params = init_params(model, jax.random.key(3))
        state = export_state_dict(kind, tiny_cfg, params)
        fresh = init_params(model, jax.random.key(4))
        back = import_params(kind, tiny_cfg, state, fresh)
        leaves = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), params, back))
        assert max(leaves) == 0.0, kind


def test_colbert_vectors_unit_norm_and_shapes(tiny_cfg):
    model = ColBERT(tiny_cfg, ColBERTConfig(dim=16))
    params = init_params(model, jax.random.key(0))
    ids = jax.random.randint(jax.random.key(1), (2, 3, 10), 1, tiny_cfg.vocab_size)
    out = model.apply({"params": params}, {"input_ids": ids, "attention_mask": jnp.ones_like(ids)})
    assert out.shape == (2, 3, 10, 16)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(out), axis=-1), 1.0, atol=1e-5)


def test_splade_chunked_pooling_equals_full(tiny_cfg):
    full = build_model("splade", tiny_cfg)
    chunked = build_model("splade", tiny_cfg, chunk_size=4)
    params = init_params(full, jax.random.key(0))
    params["bias"] = jax.random.normal(jax.random.key(5), params["bias"].shape)
    ids = jax.random.randint(jax.random.key(1), (3, 12), 1, tiny_cfg.vocab_size)
    mask = (jnp.arange(12)[None] < jnp.array([[12], [7], [3]])).astype(jnp.int32)
    batch = {"input_ids": ids, "attention_mask": mask}
    a = full.apply({"params": params}, batch)
    b = chunked.apply({"params": params}, batch)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    assert float(a.min()) >= 0.0
    # Gradients agree too (the chunked path is rematerialised inside a scan).
    g = [jax.grad(lambda p, m=m: m.apply({"params": p}, batch).sum())(params) for m in (full, chunked)]
    diffs = jax.tree.leaves(jax.tree.map(lambda x, y: float(jnp.abs(x - y).max()), *g))
    assert max(diffs) < 1e-4


def test_dropout_only_in_training(tiny_cfg):
    model = build_model("dense", tiny_cfg)
    params = init_params(model, jax.random.key(0))
    ids = jax.random.randint(jax.random.key(1), (2, 8), 1, tiny_cfg.vocab_size)
    batch = {"input_ids": ids, "attention_mask": jnp.ones_like(ids)}
    a, b = (model.apply({"params": params}, batch) for _ in range(2))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    c = model.apply({"params": params}, batch, deterministic=False, rngs={"dropout": jax.random.key(2)})
    d = model.apply({"params": params}, batch, deterministic=False, rngs={"dropout": jax.random.key(3)})
    assert float(jnp.abs(c - d).max()) > 1e-3


def test_dropout_draws_flax_dropouts_masks_bitwise():
    """The encoder's Dropout (its mask named for remat policies) keeps nn.Dropout's submodule names and RNG
    stream: the same key gives bitwise the same output."""
    import flax.linen as nn

    from distill_jax.models.encoder import Dropout

    def wrap(cls):
        class Two(nn.Module):  # two auto-named dropouts in one scope: Dropout_0, Dropout_1
            @nn.compact
            def __call__(self, x):
                return cls(0.1)(x, deterministic=False) + cls(0.3)(2 * x, deterministic=False)
        return Two()

    x = jnp.ones((4, 50, 7))
    rngs = {"dropout": jax.random.key(3)}
    ours, flax_out = wrap(Dropout).apply({}, x, rngs=rngs), wrap(nn.Dropout).apply({}, x, rngs=rngs)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(flax_out))
    assert 0.01 < float(jnp.mean(ours == 0)) < 0.06  # masks really drawn (both zero: 0.1 x 0.3)


def _saved_residuals(fn, *args) -> list[str]:
    import contextlib
    import io

    from jax.ad_checkpoint import print_saved_residuals

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        print_saved_residuals(fn, *args)
    return buf.getvalue().splitlines()


def test_remat_policies_keep_what_they_say_with_the_same_value_and_gradient(tiny_cfg):
    """Every remat policy gives the value and gradient of no remat (float32 rounding: the backward recomputes);
    the residuals kept for the backward: no remat keeps the [B, heads, L, L] attention probabilities and every
    dropout mask, "full" and "dots" keep no mask of a layer (drawn again in the backward), "dots_masks" keeps
    every mask (1 byte an element) but no attention probabilities."""
    cfg = dataclasses.replace(tiny_cfg, num_layers=1)
    ids = jax.random.randint(jax.random.key(0), (3, 20), 1, cfg.vocab_size)
    mask = jnp.ones_like(ids).at[2, 15:].set(0)
    out = {}
    for mode in ("", "full", "dots", "dots_masks"):
        enc = Encoder(cfg, remat=mode)
        params = enc.init(jax.random.key(1), ids, mask)

        def f(p):
            h = enc.apply(p, ids, mask, deterministic=False, rngs={"dropout": jax.random.key(5)})
            return jnp.sum(h ** 2 * mask[..., None])

        value, grad = jax.jit(jax.value_and_grad(f))(params)
        res = _saved_residuals(f, params)
        probs = f"f32[3,{cfg.num_heads},20,20]"
        out[mode] = (value, grad, sum("bool[" in r for r in res), sum(r.startswith(probs) for r in res))
    v0, g0, masks0, probs0 = out[""]
    assert masks0 == 4 and probs0 >= 1  # embeddings + attention probs + 2 residual branches; probs kept
    for mode, (v, g, masks, probs) in out.items():
        np.testing.assert_allclose(float(v), float(v0), rtol=1e-6, err_msg=mode)
        scale = float(optax.global_norm(g0))  # relative to the whole gradient: the key bias's is 0 (+ rounding)
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g0)):
            assert float(jnp.linalg.norm(a - b)) <= 1e-5 * scale, mode
    assert out["full"][2] == out["dots"][2] == 1  # only the embeddings' mask (outside the rematerialised layer)
    assert out["dots_masks"][2] == 4 and out["dots_masks"][3] == out["dots"][3] == 0


def test_bf16_compute_keeps_f32_params(tiny_cfg):
    f32 = build_model("colbert", tiny_cfg)
    bf16 = build_model("colbert", tiny_cfg, dtype=jnp.bfloat16)
    params = init_params(bf16, jax.random.key(0))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    ids = jax.random.randint(jax.random.key(1), (2, 8), 1, tiny_cfg.vocab_size)
    batch = {"input_ids": ids, "attention_mask": jnp.ones_like(ids)}
    a, b = f32.apply({"params": params}, batch), bf16.apply({"params": params}, batch)
    assert float(jnp.abs(a - b).max()) < 5e-2


# ---------------------------------------------------------------- errors a user can act on


def test_error_not_a_bert_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 10}))
    with pytest.raises(ValueError, match="model_type 'gpt2' is not a BERT-family encoder"):
        load_pretrained("colbert", str(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_pretrained("colbert", str(empty))


def test_error_missing_and_unmatched_weights(minilm_dir, tmp_path):
    from safetensors.numpy import load_file, save_file

    for name in ("config.json", "tokenizer.json"):
        shutil.copy(os.path.join(minilm_dir, name), tmp_path / name)
    state = load_file(os.path.join(minilm_dir, "model.safetensors"))
    del state["encoder.layer.3.output.dense.weight"]
    state["decoder.extra.weight"] = np.zeros((2, 2), np.float32)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError) as err:
        load_pretrained("dense", str(tmp_path))
    msg = str(err.value)
    assert "encoder.layer.3.output.dense.weight" in msg and "decoder.extra.weight" in msg


def test_error_pickle_refused_unless_allowed(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(ConfigError, match="pickle") as err:
        read_state_dict(str(tmp_path))
    assert "--allow-pickle" in str(err.value) and "model.allow_pickle=true" in str(err.value)


def test_pickle_checkpoint_loads_when_allowed_from_a_train_config(tmp_path, minilm_dir):
    """A ``pytorch_model.bin``-only copy of MiniLM: refused by default, and with ``model.allow_pickle`` the
    trainer's model equals the safetensors original bit for bit."""
    from safetensors.numpy import load_file

    from distill_jax.config import DataConfig, ModelConfig, TrainConfig
    from distill_jax.train.state import make_model

    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        if os.path.exists(os.path.join(minilm_dir, name)):
            shutil.copy(os.path.join(minilm_dir, name), tmp_path / name)
    state = load_file(os.path.join(minilm_dir, "model.safetensors"))
    torch.save({k: torch.from_numpy(v.copy()) for k, v in state.items()}, str(tmp_path / "pytorch_model.bin"))
    cfg = TrainConfig(model=ModelConfig(kind="dense", checkpoint=str(tmp_path)), data=DataConfig(source="synthetic"))
    with pytest.raises(ConfigError, match="allow_pickle"):
        make_model(cfg)
    _, _, pickled = make_model(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, allow_pickle=True)))
    _, _, original = make_model(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, checkpoint=minilm_dir)))
    assert jax.tree.structure(pickled) == jax.tree.structure(original)
    for a, b in zip(jax.tree.leaves(pickled), jax.tree.leaves(original)):
        np.testing.assert_array_equal(a, b)


def test_error_token_ids_beyond_vocabulary():
    ids = np.array([[1, 2, 3], [4, 30522, 0]])
    with pytest.raises(ValueError, match=r"input_ids\[1, 1\] = 30522 is outside the model's vocabulary"):
        check_token_ids(ids, 30522)
    check_token_ids(ids[:1], 30522)  # in range: no error
