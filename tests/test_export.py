"""Export: our params -> Hugging Face directories that transformers loads with the same outputs, and back."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax.export import export_run, save_pretrained
from distill_jax.models import build_model, init_params, load_pretrained

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _random(tree, seed):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(treedef, [0.1 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def _ids(cfg, shape, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, cfg.vocab_size, size=shape).astype(np.int32)
    mask = np.ones(shape, np.int32)
    mask[1, shape[1] // 2:] = 0
    return ids, mask


@pytest.mark.parametrize("kind", ["cross_encoder", "splade", "dense"])
def test_transformers_loads_the_export_with_the_same_outputs(tmp_path, tiny_cfg, kind):
    model = build_model(kind, tiny_cfg)
    params = _random(init_params(model, jax.random.key(0)), 1)  # every weight non-trivial, biases included
    save_pretrained(kind, tiny_cfg, params, str(tmp_path / kind))
    ids, mask = _ids(tiny_cfg, (3, 12))
    with jax.default_matmul_precision("highest"):
        ours = np.asarray(model.apply({"params": params}, {"input_ids": jnp.asarray(ids),
                                                           "attention_mask": jnp.asarray(mask)}))
    cls = {"cross_encoder": transformers.BertForSequenceClassification, "splade": transformers.BertForMaskedLM,
           "dense": transformers.BertModel}[kind]
    pt = cls.from_pretrained(str(tmp_path / kind)).eval()
    with torch.no_grad():
        out = pt(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    if kind == "cross_encoder":
        want = out.logits.numpy()[:, 0]
    elif kind == "splade":
        want = (np.log1p(np.maximum(out.logits.numpy(), 0)) * mask[..., None]).max(1)
    else:
        h = out.last_hidden_state.numpy()
        want = (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    assert np.abs(ours - want).max() < 1e-5
    # and distill-jax reads its own export back bit for bit
    _, back = load_pretrained(kind, str(tmp_path / kind))
    same = jax.tree.map(lambda a, b: bool((np.asarray(a) == np.asarray(b)).all()), params, back)
    assert all(jax.tree.leaves(same))


def test_export_run_writes_the_trained_params(tmp_path):
    from distill_jax.config import load_config
    from distill_jax.train.trainer import train

    cfg = load_config("configs/tiny.py:cross_encoder")
    cfg = dataclasses.replace(cfg, workdir=str(tmp_path / "run"), steps=2, progress=False, tensorboard=False,
                              checkpoint=dataclasses.replace(cfg.checkpoint, every_steps=2, async_save=False))
    final = jax.device_get(train(cfg)["state"].params)
    out, step = export_run(str(tmp_path / "run"), str(tmp_path / "hf"), fmt="transformers")
    assert step == 2
    _, back = load_pretrained("cross_encoder", out)
    same = jax.tree.map(lambda a, b: bool((np.asarray(a) == np.asarray(b)).all()), final, back)
    assert all(jax.tree.leaves(same))
