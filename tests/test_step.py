"""The train step: 8 devices == 1 device for every recipe (loss and params within 1e-5), global FLOPS and in-batch
negatives against float64 references, gradient accumulation == one big step, one compile, non-finite policy,
optimiser pieces (decay mask, schedule), rank agreement against scipy."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from distill_jax import distributed
from distill_jax.config import load_config
from distill_jax.train import state as state_lib
from distill_jax.kinds import forward
from distill_jax.train.metrics import spearman_per_query
from distill_jax.train.step import compile_train_step
from distill_jax.data.synthetic import SyntheticBatches

FAST_RECIPES = ("splade_mse_flops", "colbert_infonce", "colbert_kl")
SLOW_RECIPES = ("colbert_margin_mse", "splade_margin_mse", "splade_infonce", "dense_margin_mse", "dense_infonce")
# One encoder layer keeps each compile short; every code path of the step is still exercised.
# Adam's update lr * g / (|g| + eps) turns a rounding difference d in a near-zero gradient (summed in another
# order on 8 devices) into lr * d / eps of parameter: with eps = 1e-8 a rarely-used embedding row moves 1e-4
# apart after two steps (seen with dense InfoNCE at T = 0.05). eps = 1e-6 keeps that below 1e-6, so the
# comparison tests data parallelism, not Adam's conditioning; gradients are compared through grad_norm.
SMALL = ["model.num_layers=1", "steps=10", "optim.eps=1e-6"]


def tiny(recipe: str, *overrides: str):
    return load_config(f"configs/{recipe}.py:tiny", SMALL + list(overrides))


@pytest.fixture(autouse=True, scope="module")
def fast_compiles():
    """XLA's CPU optimisation passes dominate these tiny compiles (~15 s -> ~3 s each without them); the
    equalities tested here hold either way."""
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", False)


def batch_of(cfg, i: int = 0, pad_last: bool = True, full_mask: bool = False):
    """Global synthetic batch ``i``; the last example is padding (weight 0), as the loader emits at an epoch end.
    ``full_mask``: every candidate real (the synthetic source otherwise drops the last one of some queries)."""
    b = SyntheticBatches(cfg.data, cfg.model.kind, cfg.model.vocab_size).global_batch(i)
    if full_mask:
        b["mask"][:] = 1.0
    if pad_last:
        b["weight"][-1] = 0.0
        b["index"][-1] = -1
    return {k: v for k, v in b.items() if k != "index"}


def mesh_of(n: int, fsdp: int = 1):
    return distributed.make_mesh(-1, fsdp, devices=jax.devices()[:n])


@functools.lru_cache(maxsize=None)
def run(recipe: str, n_devices: int, fsdp: int = 1, steps: int = 2, extra: tuple = (), full_mask: bool = False):
    """``steps`` train steps of a tiny recipe on ``n_devices`` devices; returns (params, metrics, compiles)."""
    cfg = tiny(recipe, *extra)
    mesh = mesh_of(n_devices, fsdp)
    model, _, _ = state_lib.make_model(cfg)
    tx = state_lib.make_optimizer(cfg.optim, cfg.steps)
    state, shardings = state_lib.create_state(model, tx, mesh, cfg.seed, prng_impl=cfg.dropout_prng)
    step = compile_train_step(model, cfg, tx, mesh, shardings)
    metrics = []
    for i in range(steps):
        state, m = step(state, distributed.global_batch(batch_of(cfg, i, full_mask=full_mask), mesh))
        metrics.append({k: float(v) for k, v in m.items() if np.ndim(v) == 0})  # scalars (not the [B, N] scores)
    return jax.device_get(state.params), metrics, step._cache_size(), jax.device_get(state.step)


def assert_same(a, b, atol=1e-5):
    flat_a, flat_b = jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)
    assert len(flat_a) == len(flat_b)
    for (path, x), y in zip(flat_a, flat_b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=atol,
                                   err_msg=jax.tree_util.keystr(path))


def _check_8_vs_1(recipe, extra: tuple = ()):
    p8, m8, c8, s8 = run(recipe, 8, extra=extra)
    p1, m1, c1, s1 = run(recipe, 1, extra=extra)
    for a, b in zip(m8, m1):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-5)
        for k in ("nnz_query", "nnz_doc", "reg_query", "reg_doc"):  # sparsity must not depend on devices
            if k in a:
                np.testing.assert_allclose(a[k], b[k], rtol=1e-5, err_msg=k)
    assert_same(p8, p1)
    assert int(s8) == int(s1) == 2
    assert c8 == c1 == 1  # one compile for both steps
    # the step really trained: parameters moved
    p0 = jax.device_get(state_lib.create_state(*_model_tx(recipe), mesh_of(1), 0)[0].params)
    moved = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                for x, y in zip(jax.tree.leaves(p1), jax.tree.leaves(p0)))
    assert moved > 1e-4


def _model_tx(recipe):
    cfg = tiny(recipe)
    return state_lib.make_model(cfg)[0], state_lib.make_optimizer(cfg.optim, cfg.steps)


@pytest.mark.parametrize("recipe", FAST_RECIPES)
def test_eight_devices_equal_one_device(recipe):
    _check_8_vs_1(recipe)


@pytest.mark.parametrize("recipe,extra", [
    ("colbert_kl", ("model.remat=true", "model.remat_policy=dots_masks", "dropout_prng=rbg")),
    ("splade_mse_flops", ("model.remat=true", "model.remat_policy=dots", "dropout_prng=unsafe_rbg")),
])
def test_eight_devices_equal_one_device_with_remat_policies_and_rbg_dropout(recipe, extra):
    """The memory and PRNG options keep data parallelism exact (on XLA:CPU: jax does not promise rbg bits that
    are the same under every sharding on every backend)."""
    _check_8_vs_1(recipe, extra)
    # the option really changed the dropout masks: another loss than the default's at step 1
    assert abs(run(recipe, 1, extra=extra)[1][0]["loss"] - run(recipe, 1)[1][0]["loss"]) > 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("recipe", SLOW_RECIPES)
def test_eight_devices_equal_one_device_other_recipes(recipe):
    _check_8_vs_1(recipe)


def test_fsdp_mesh_equals_one_device():
    """Parameters sharded over "fsdp" (4 data x 2 fsdp) train exactly like replicated ones."""
    p_fsdp, m_fsdp, _, _ = run("colbert_kl", 8, 2)
    p1, m1, _, _ = run("colbert_kl", 1)
    np.testing.assert_allclose(m_fsdp[-1]["loss"], m1[-1]["loss"], rtol=1e-5)
    assert_same(p_fsdp, p1)


def test_flops_and_sparsity_are_global_batch_statistics():
    """The FLOPS term of the 8-device step equals a float64 FLOPS over the whole global batch, not the mean of
    per-device FLOPS (what DDP peers compute), which differs and would change with the device count."""
    cfg = tiny("splade_mse_flops", "model.dropout=0.0")
    model, _, _ = state_lib.make_model(cfg)
    tx = state_lib.make_optimizer(cfg.optim, cfg.steps)
    mesh = mesh_of(8)
    state, shardings = state_lib.create_state(model, tx, mesh, cfg.seed)
    params = jax.device_get(state.params)
    batch = batch_of(cfg)
    step = compile_train_step(model, cfg, tx, mesh, shardings)
    _, m = step(state, distributed.global_batch(batch, mesh))

    out = forward("splade", model, params, jax.tree.map(jnp.asarray, batch))
    w = batch["weight"].astype(np.float64)
    d_rows = (batch["mask"] * batch["weight"][:, None]).reshape(-1).astype(np.float64)
    q = np.asarray(out.query_reps, np.float64)
    d = np.asarray(out.doc_reps, np.float64).reshape(-1, q.shape[-1])

    def flops(x, rw):
        return float(np.sum((np.sum(rw[:, None] * np.abs(x), 0) / rw.sum()) ** 2))

    np.testing.assert_allclose(float(m["reg_query"]), flops(q, w), rtol=1e-4)
    np.testing.assert_allclose(float(m["reg_doc"]), flops(d, d_rows), rtol=1e-4)
    nnz_d = np.sum((d != 0), -1)[d_rows > 0].mean()
    np.testing.assert_allclose(float(m["nnz_doc"]), nnz_d, rtol=1e-5)
    # per-device FLOPS averaged over 8 devices is a different number: the test can tell them apart
    per_device = np.mean([flops(q[i:i + 1], w[i:i + 1]) for i in range(len(w)) if w[i] > 0])
    assert abs(per_device - flops(q, w)) > 1e-3 * flops(q, w)


def test_in_batch_infonce_matches_float64_reference():
    """InfoNCE with in-batch negatives on 8 devices: softmax over own candidates + every OTHER query's real
    candidates of the GLOBAL batch, computed here in float64 from the model's own vectors."""
    cfg = tiny("dense_infonce", "model.dropout=0.0")
    model, _, _ = state_lib.make_model(cfg)
    tx = state_lib.make_optimizer(cfg.optim, cfg.steps)
    mesh = mesh_of(8)
    state, shardings = state_lib.create_state(model, tx, mesh, cfg.seed)
    params = jax.device_get(state.params)
    batch = batch_of(cfg)
    _, m = compile_train_step(model, cfg, tx, mesh, shardings)(state, distributed.global_batch(batch, mesh))

    q = np.asarray(model.apply({"params": params}, {k: jnp.asarray(v) for k, v in batch["query"].items()
                                                     if k != "score_mask"}), np.float64)
    d = np.asarray(model.apply({"params": params}, {k: jnp.asarray(v) for k, v in batch["docs"].items()
                                                     if k != "score_mask"}), np.float64)
    b, n = batch["mask"].shape
    real = batch["mask"] * batch["weight"][:, None] > 0
    t = cfg.loss.hp["temperature"]
    losses = []
    for i in range(b):
        if not real[i, 0]:
            continue
        logits = [q[i] @ d[i, k] for k in range(n) if real[i, k]]
        logits += [q[i] @ d[j, k] for j in range(b) if j != i for k in range(n) if real[j, k]]
        z = np.array(logits) / t
        losses.append(-(z[0] - np.log(np.sum(np.exp(z - z.max()))) - z.max()))
    np.testing.assert_allclose(float(m["loss"]), np.mean(losses), rtol=1e-5)


def test_gradient_accumulation_equals_one_big_step():
    """4 micro-batches of 2 queries == one step on the 8 queries (loss and updated params within 1e-5).

    Micro-batches are weighted by their real queries (one is padding here), which is the big-batch mean when every
    real query has the same number of real candidates (documented in docs/training.md)."""
    big = run("colbert_margin_mse", 1, 1, 1, ("model.dropout=0.0",), True)
    acc = run("colbert_margin_mse", 1, 1, 1, ("model.dropout=0.0", "optim.grad_accum=4"), True)
    np.testing.assert_allclose(acc[1][0]["loss"], big[1][0]["loss"], rtol=1e-5)
    np.testing.assert_allclose(acc[1][0]["grad_norm"], big[1][0]["grad_norm"], rtol=1e-5)
    assert_same(acc[0], big[0])


def test_gradient_accumulation_on_eight_devices():
    """Micro-batches stay sharded over the devices: 2 x 8 queries on 8 devices == the big step on 1 device."""
    extra = ("model.dropout=0.0", "data.batch_size=16")
    acc = run("colbert_margin_mse", 8, 1, 1, extra + ("optim.grad_accum=2",), True)
    big = run("colbert_margin_mse", 1, 1, 1, extra, True)
    np.testing.assert_allclose(acc[1][0]["loss"], big[1][0]["loss"], rtol=1e-5)
    assert_same(acc[0], big[0])


def test_nonfinite_update_is_never_applied():
    """A NaN teacher score: the step reports it, keeps params and optimiser state bit-identical, counts a skip."""
    cfg = tiny("colbert_kl")
    mesh = mesh_of(8)
    model, _, _ = state_lib.make_model(cfg)
    tx = state_lib.make_optimizer(cfg.optim, cfg.steps)
    state, shardings = state_lib.create_state(model, tx, mesh, cfg.seed)
    before = jax.device_get((state.params, state.opt_state))
    batch = batch_of(cfg)
    batch["teacher_scores"][2, 1] = np.nan
    step = compile_train_step(model, cfg, tx, mesh, shardings)
    new, m = step(state, distributed.global_batch(batch, mesh))
    assert float(m["nonfinite"]) == 1.0 and int(new.skipped) == 1 and int(new.step) == 1
    after = jax.device_get((new.params, new.opt_state))
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # the next good batch trains normally, with the same compiled step
    new, m = step(new, distributed.global_batch(batch_of(cfg, 1), mesh))
    assert float(m["nonfinite"]) == 0.0 and np.isfinite(float(m["loss"])) and step._cache_size() == 1


def test_weight_decay_mask_excludes_biases_and_layernorm():
    cfg = tiny("splade_mse_flops")
    model, _, _ = state_lib.make_model(cfg)
    abstract, _ = state_lib.state_shardings(model, state_lib.make_optimizer(cfg.optim, 10), mesh_of(1))
    mask = state_lib.decay_mask(abstract.params)
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(mask)}
    assert flat["['encoder']['layer_0']['attention']['query']['kernel']"] is True
    assert flat["['encoder']['embeddings']['word_embeddings']['embedding']"] is True
    assert flat["['encoder']['layer_0']['attention']['query']['bias']"] is False
    assert flat["['encoder']['layer_0']['output_LayerNorm']['scale']"] is False
    assert flat["['transform_LayerNorm']['bias']"] is False
    assert flat["['bias']"] is False  # SPLADE's vocabulary bias
    assert sum(flat.values()) == sum(1 for k in flat if k.endswith("['kernel']") or k.endswith("['embedding']"))


def test_learning_rate_schedule_values():
    cfg = tiny("colbert_kl", "optim.learning_rate=1e-3", "optim.warmup_steps=10", "optim.end_factor=0.1")
    lin = state_lib.learning_rate_schedule(cfg.optim, 110)
    np.testing.assert_allclose([lin(0), lin(5), lin(10), lin(60), lin(110)],
                               [0.0, 5e-4, 1e-3, 1e-3 - 0.5 * 0.9e-3, 1e-4], rtol=1e-6, atol=1e-9)
    cos = state_lib.learning_rate_schedule(dataclasses.replace(cfg.optim, schedule="cosine"), 110)
    # cosine: halfway through the decay = alpha + (1 - alpha) / 2 of the peak
    np.testing.assert_allclose(float(cos(60)), 1e-3 * (0.1 + 0.9 * 0.5), rtol=1e-6)


def test_lr_multipliers_scale_one_group_and_reject_unknown_names():
    cfg = load_config("configs/tiny.py:colbert", ['optim.lr_multipliers={"head": 10}', "optim.learning_rate=1e-3",
                                                   "optim.warmup_steps=0", "optim.weight_decay=0.1"])
    assert cfg.optim.lr_multipliers == {"head": 10}
    rng = np.random.default_rng(0)
    params = {"encoder": {"kernel": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)},
              "head": {"kernel": jnp.asarray(rng.normal(size=(4, 2)), jnp.float32),
                       "bias": jnp.asarray(rng.normal(size=(2,)), jnp.float32)}}
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)

    def updates(optim):
        tx = state_lib.make_optimizer(optim, 100)
        state = tx.init(params)
        for _ in range(3):  # a few steps: Adam moments and decay differ from step 1
            upd, state = tx.update(grads, state, params)
        return upd

    plain, scaled = updates(dataclasses.replace(cfg.optim, lr_multipliers={})), updates(cfg.optim)
    np.testing.assert_allclose(scaled["encoder"]["kernel"], plain["encoder"]["kernel"], rtol=0, atol=0)
    for name in ("kernel", "bias"):
        np.testing.assert_allclose(scaled["head"][name], 10 * plain["head"][name], rtol=1e-6)
    assert float(jnp.abs(plain["head"]["kernel"]).max()) > 0
    bad = dataclasses.replace(cfg.optim, lr_multipliers={"haed": 2.0})
    with pytest.raises(ValueError, match=r"haed.*'encoder', 'head'"):
        state_lib.make_optimizer(bad, 100).init(params)


def test_spearman_matches_scipy_with_ties_and_padding():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(6, 7)).astype(np.float32)
    t = np.round(rng.normal(size=(6, 7)), 0).astype(np.float32)  # many ties
    mask = np.ones((6, 7), np.float32)
    mask[1, 5:] = 0
    mask[2, 1:] = 0  # one candidate: undefined
    rho, defined = spearman_per_query(jnp.asarray(s), jnp.asarray(t), jnp.asarray(mask))
    for i in range(6):
        m = mask[i] > 0
        if m.sum() < 2 or np.all(t[i, m] == t[i, m][0]):
            assert not bool(defined[i])
            continue
        assert bool(defined[i])
        np.testing.assert_allclose(float(rho[i]), scipy.stats.spearmanr(s[i, m], t[i, m]).statistic, rtol=1e-5)


def test_batch_divisibility_error_names_the_numbers():
    with pytest.raises(ValueError, match=r"global batch 12 is not divisible by 8 devices x 1"):
        distributed.check_batch_divisibility(12, mesh_of(8))
    with pytest.raises(ValueError, match=r"8 devices x 4 accumulation"):
        distributed.check_batch_divisibility(16, mesh_of(8), 4)
