"""Objectives as a weighted list (multi-task): the single-loss configs map onto one term, MLM and SimCSE against
float64 references, the step computes only what the listed objectives need, gradients of MLM reach the encoder
only, the multi-task recipe's loss falls, resume is bit-exact and 8 devices == 1.

The recipe helpers here (:func:`run_steps`, :func:`check_trains_and_resumes`) serve tests/test_online.py and
tests/test_multistudent.py too."""

import dataclasses
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax import distributed
from distill_jax.config import LossConfig, ObjectiveConfig, from_dict, load_config, to_dict
from distill_jax.losses import mask_tokens, mlm, simcse
from distill_jax.models import init_params
from distill_jax.train import state as state_lib
from distill_jax.train.batches import loader_for_run
from distill_jax.train.step import HOST_ONLY_KEYS, compile_train_step, make_loss_fn
from distill_jax.train.trainer import train
from test_step import assert_same, batch_of, fast_compiles, mesh_of  # noqa: F401  (fast_compiles: autouse)

SMALL = ["model.num_layers=1", "optim.eps=1e-6"]


def tiny(recipe: str, *overrides: str):
    return load_config(f"configs/{recipe}.py:tiny", SMALL + list(overrides))


def run_steps(cfg, n_devices: int, steps: int = 2):
    """``steps`` compiled train steps of ``cfg`` (any recipe: online teacher, several students) on the first
    ``n_devices`` devices, on the run's own batches. Returns (params, [scalar metrics per step])."""
    mesh = mesh_of(n_devices)
    st = state_lib.create_students(cfg, mesh)
    teacher = state_lib.make_teacher(cfg, mesh) if cfg.teacher.online else None
    step = compile_train_step(st.model, cfg, st.tx, mesh, st.shardings, st.schedule, teacher=teacher)
    loader, state, metrics = loader_for_run(cfg, st.vocab_size), st.state, []
    for _ in range(steps):
        batch = {k: v for k, v in next(loader).items() if k not in HOST_ONLY_KEYS}
        state, m = step(state, distributed.global_batch(batch, mesh), *(() if teacher is None else (teacher.params,)))
        metrics.append({k: float(v) for k, v in m.items() if np.ndim(v) == 0})
    assert step._cache_size() == 1
    return jax.device_get(state.params), metrics


def check_eight_equal_one(cfg, keys=("loss", "grad_norm")):
    p8, m8 = run_steps(cfg, 8)
    p1, m1 = run_steps(cfg, 1)
    for a, b in zip(m8, m1):
        for k in keys:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert_same(p8, p1)


def check_trains_and_resumes(tmp_path, recipe: str, *overrides: str, steps: int = 24, fall: float = 0.8):
    """The tiny recipe trains (mean loss of the last 4 steps < ``fall`` x the first 4) and resumes bit-exactly:
    a copy of its work directory without the last checkpoint continues from the middle one to identical losses
    and parameters. Returns the reference run's result."""
    half = steps // 2

    def cfg(workdir):
        return tiny(recipe, f"workdir={workdir}", f"steps={steps}", "log_every=1", f"checkpoint.every_steps={half}",
                    "checkpoint.keep=2", "checkpoint.async_save=false", *overrides)

    ref = train(cfg(tmp_path / "ref"))
    losses = ref["losses"]
    first, last = np.mean([losses[s] for s in range(1, 5)]), np.mean([losses[s] for s in range(steps - 3, steps + 1)])
    assert last < fall * first, (first, last)
    shutil.copytree(tmp_path / "ref", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / str(steps))
    again = train(cfg(tmp_path / "resumed"))
    assert again["start_step"] == half and again["compiles"] == 1
    bad = [s for s in range(half + 1, steps + 1) if again["losses"][s] != losses[s]]
    assert not bad, f"resumed losses differ at steps {bad}"
    for x, y in zip(jax.tree.leaves(jax.device_get(ref["state"])), jax.tree.leaves(jax.device_get(again["state"]))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    return ref


# ---------------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------------


def test_single_loss_is_one_term_and_objectives_round_trip():
    lc = LossConfig(name="infonce", hp={"temperature": 0.1}, in_batch=True)
    assert lc.terms() == (ObjectiveConfig("infonce", 1.0, "", {"temperature": 0.1, "in_batch": True}, "main"),)
    cfg = tiny("colbert_multitask")
    assert [(t.key, t.weight, t.inputs) for t in cfg.loss.terms()] == [("main", 1.0, ""), ("mlm", 0.1, "docs"),
                                                                       ("simcse", 0.1, "query")]
    assert from_dict(to_dict(cfg)) == cfg  # config.json of a work directory reads back
    over = load_config("configs/colbert_multitask.py:tiny",
                       ['loss.objectives=[{"name": "simcse", "weight": 0.5, "inputs": "query"}]'])
    assert over.loss.objectives == (ObjectiveConfig("simcse", 0.5, "query"),)
    with pytest.raises(ValueError, match="inputs"):
        load_config("configs/colbert_multitask.py:tiny", ['loss.objectives=[{"name": "mlm", "inputs": "doc"}]'])


# ---------------------------------------------------------------------------------------------------------------
# The representation objectives against float64 references
# ---------------------------------------------------------------------------------------------------------------


def test_mask_tokens_and_mlm_match_reference(x64):
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(5, 50, size=(4, 12)))
    maskable = jnp.asarray(rng.random((4, 12)) > 0.2)
    masked, labels = mask_tokens(jax.random.key(1), ids, maskable, probability=0.5, mask_token_id=3)
    chosen = np.asarray(labels) != -100
    assert chosen.any() and not (chosen & ~np.asarray(maskable)).any()
    np.testing.assert_array_equal(np.asarray(masked), np.where(chosen, 3, ids))
    np.testing.assert_array_equal(np.asarray(labels)[chosen], np.asarray(ids)[chosen])
    logits = rng.normal(size=(4, 12, 50))
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    ref = -np.mean([logp[b, i, int(ids[b, i])] for b, i in zip(*np.nonzero(chosen))])
    np.testing.assert_allclose(float(mlm(jnp.asarray(logits), labels)), ref, rtol=1e-10)


def test_simcse_matches_reference(x64):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 6)), rng.normal(size=(5, 6))
    rows = np.array([1, 1, 0, 1, 1], bool)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    sim = unit(a) @ unit(b).T / 0.05
    ref = np.mean([-(sim[i, i] - np.log(sum(np.exp(sim[i, j]) for j in range(5) if rows[j] or j == i)))
                   for i in range(5) if rows[i]])
    np.testing.assert_allclose(float(simcse(jnp.asarray(a), jnp.asarray(b), jnp.asarray(rows))), ref, rtol=1e-10)


# ---------------------------------------------------------------------------------------------------------------
# The step: only what is needed, gradients where they belong
# ---------------------------------------------------------------------------------------------------------------


def _loss_parts(cfg):
    model, _, _ = state_lib.make_model(cfg)
    params = init_params(model, jax.random.key(0))
    batch = jax.tree.map(jnp.asarray, batch_of(cfg))
    loss_fn = make_loss_fn(model, cfg)
    return params, batch, lambda p: loss_fn(p, batch, jax.random.key(1), 0)


def test_mlm_alone_runs_no_scoring_forward_and_trains_the_encoder_only():
    """An MLM-only run computes no scores (the forward is never traced: scores stay 0) and its gradient reaches
    the encoder but not ColBERT's projection; Margin-MSE reaches both."""
    mlm_only = tiny("colbert_multitask", "loss.name=", 'loss.objectives=[{"name": "mlm", "inputs": "docs", '
                    '"hp": {"mask_token_id": 3, "first_text_id": 5, "probability": 0.3}}]')
    params, _, f = _loss_parts(mlm_only)
    (loss, (means, _, scores)), grads = jax.jit(jax.value_and_grad(f, has_aux=True))(params)
    assert set(means) == {"loss_mlm", "loss"} and float(loss) > 0
    assert not np.asarray(scores).any()
    assert float(jnp.abs(grads["linear"]["kernel"]).max()) == 0.0
    assert float(jnp.abs(grads["encoder"]["embeddings"]["word_embeddings"]["embedding"]).max()) > 0
    full = tiny("colbert_multitask")
    params, _, f = _loss_parts(full)
    (loss, (means, _, scores)), grads = jax.jit(jax.value_and_grad(f, has_aux=True))(params)
    np.testing.assert_allclose(float(loss), float(means["loss_main"] + 0.1 * means["loss_mlm"]
                                                  + 0.1 * means["loss_simcse"]), rtol=1e-6)
    assert np.asarray(scores).any() and float(jnp.abs(grads["linear"]["kernel"]).max()) > 0


def test_single_loss_numbers_unchanged_through_the_list():
    """The main loss as the only term of a list (name='' + objectives=[margin_mse]) gives the same loss and
    gradient, bit for bit, as the plain single-loss config."""
    plain = tiny("colbert_margin_mse")
    listed = dataclasses.replace(plain, loss=LossConfig(name="", objectives=(ObjectiveConfig("margin_mse"),)))
    params, _, f = _loss_parts(plain)
    _, _, g = _loss_parts(listed)
    (a, _), ga = jax.jit(jax.value_and_grad(f, has_aux=True))(params)
    (b, _), gb = jax.jit(jax.value_and_grad(g, has_aux=True))(params)
    assert float(a) == float(b)
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_multitask_eight_devices_equal_one():
    check_eight_equal_one(tiny("colbert_multitask"), keys=("loss", "grad_norm", "loss_mlm", "loss_simcse"))


def test_multitask_recipe_trains_and_resumes_bit_exactly(tmp_path):
    ref = check_trains_and_resumes(tmp_path, "colbert_multitask", fall=0.9)  # MLM falls slowly from ln(512)
    assert {"loss_main", "loss_mlm", "loss_simcse"} <= set(ref["last_metrics"])
