"""The argmax SPLADE head (custom VJP) against the plain autodiffed formulation: values and gradients in float64
(relative error < 1e-9) with padding, all-negative terms and ties; blocks never hold [N, L, V]; one compile;
the batch sharded over 8 devices; a bfloat16 model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from distill_jax.models import build_model, init_params
from distill_jax.models.splade import splade_pool
from distill_jax.models.splade_head import head_flops, max_logits, splade_max_pool

N, L, H, V = 4, 11, 8, 64


@pytest.fixture(autouse=True, scope="module")
def fast_compiles():
    """Compiles dominate these tiny tests (as in test_step.py); the equalities hold either way."""
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", False)
LENGTHS = (11, 6, 1, 0)  # the last sequence is all padding


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def plain(t, emb, bias, mask):
    return splade_pool(jnp.einsum("nlh,vh->nlv", t, emb) + bias, mask)


def inputs(seed: int = 0, dtype=jnp.float64):
    """Random head inputs with traps: padded positions carry huge logits (must never win), the first 8 terms
    are negative at every position (relu zero: no gradient), the last sequence is all padding."""
    k = jax.random.split(jax.random.key(seed), 3)
    mask = (jnp.arange(L)[None] < jnp.array(LENGTHS)[:, None]).astype(jnp.int32)
    t = jax.random.normal(k[0], (N, L, H), dtype)
    t = jnp.where(mask[..., None] > 0, t, 50.0 * jnp.abs(t))  # padding: large hidden states
    emb = jax.random.normal(k[1], (V, H), dtype) / np.sqrt(H)
    bias = jax.random.normal(k[2], (V,), dtype).at[:8].set(-1e3)
    return t, emb, bias, mask


def weights(shape, seed=7):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float64)


@pytest.mark.parametrize("chunk", [1, 4, 16])  # 4 does not divide L = 11; 16 >= L is one block
@pytest.mark.parametrize("backward", ["loop", "batched"])
def test_value_and_gradients_equal_plain_float64(x64, chunk, backward):
    t, emb, bias, mask = inputs()
    r = weights((N, V))

    def loss(f):
        return lambda t, e, b: (f(t, e, b) * r).sum()

    ours = lambda t, e, b: splade_max_pool(t, e, b, mask, chunk, backward)  # noqa: E731
    ref = lambda t, e, b: plain(t, e, b, mask)  # noqa: E731
    w, w_ref = ours(t, emb, bias), ref(t, emb, bias)
    assert w.dtype == jnp.float64
    assert rel_err(w, w_ref) < 1e-9
    # the traps are live: some terms fire, the all-negative ones and the padded sequence give exact zeros
    assert float(w.max()) > 0.5 and float(jnp.abs(w[:, :8]).max()) == 0.0 and float(jnp.abs(w[3]).max()) == 0.0
    g = jax.grad(loss(ours), argnums=(0, 1, 2))(t, emb, bias)
    g_ref = jax.grad(loss(ref), argnums=(0, 1, 2))(t, emb, bias)
    for name, a, b in zip(("d_t", "d_emb", "d_bias"), g, g_ref):
        assert float(jnp.abs(b).max()) > 1e-2, name  # a gradient that could be wrong
        assert rel_err(a, b) < 1e-9, name
    d_t, d_emb, d_bias = g
    assert float(jnp.abs(d_t * (1 - mask[..., None])).max()) == 0.0  # no gradient to padding
    assert float(jnp.abs(d_emb[:8]).max()) == 0.0 and float(jnp.abs(d_bias[:8]).max()) == 0.0


def test_ties_send_the_gradient_to_the_first_position(x64):
    """All-zero states tie every real position at logit = bias exactly. Autodiff of ``jnp.max`` splits the
    gradient between the tied positions, the kernel gives it to the first: d_emb, d_bias and the per-sequence
    sum of d_t agree. A zero decoder row with zero bias ties at logit 0: relu zero, no gradient on either side."""
    t, emb, bias, mask = inputs()
    t = t.at[1].set(0.0)  # sequence 1 (6 real tokens): every position ties
    emb, bias = emb.at[10].set(0.0), bias.at[10].set(0.0)
    r = weights((N, V))
    args = (t, emb, bias)
    g = jax.grad(lambda *a: (splade_max_pool(*a, mask, 4) * r).sum(), argnums=(0, 1, 2))(*args)
    g_ref = jax.grad(lambda *a: (plain(*a, mask) * r).sum(), argnums=(0, 1, 2))(*args)
    assert rel_err(g[1], g_ref[1]) < 1e-9 and rel_err(g[2], g_ref[2]) < 1e-9
    assert rel_err(g[0][1].sum(0), g_ref[0][1].sum(0)) < 1e-9
    assert float(jnp.abs(g[0][1, 1:]).max()) == 0.0  # all on position 0 ...
    np.testing.assert_allclose(g_ref[0][1, 1], g_ref[0][1, 0], rtol=1e-12)  # ... where autodiff splits evenly
    assert rel_err(g[0][np.array([0, 2])], g_ref[0][np.array([0, 2])]) < 1e-9  # untied sequences: the same
    assert float(g[1][10].std()) == 0.0 and float(g[2][10]) == 0.0
    assert float(jnp.abs(g[2]).max()) > 1e-2


def test_argmax_is_the_first_maximising_real_position(x64):
    t, emb, bias, mask = inputs()
    logits = np.array(jnp.einsum("nlh,vh->nlv", t, emb) + bias)
    logits[np.asarray(mask) == 0] = -np.inf
    for chunk in (1, 4, 16):
        m, idx = max_logits(t, emb, bias, mask, chunk)
        np.testing.assert_array_equal(np.asarray(idx[:3]), logits[:3].argmax(1))
        np.testing.assert_allclose(np.asarray(m[:3]), logits[:3].max(1), rtol=1e-12)
        assert np.all(np.isneginf(np.asarray(m[3])))  # all padding


def _shapes(jaxpr):
    """Every intermediate shape in a jaxpr, sub-jaxprs (scan bodies, custom-VJP rules) included."""
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            yield tuple(getattr(v.aval, "shape", ()))
        for p in eqn.params.values():
            for sub in p if isinstance(p, (tuple, list)) else (p,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _shapes(inner)


def test_no_intermediate_holds_all_positions_times_vocabulary():
    """Forward and backward: the largest [.., V]-wide intermediate covers one block (4 positions) of each
    sequence, never all L of them (the plain head's backward holds [N, L, V])."""
    t, emb, bias, mask = inputs(dtype=jnp.float32)
    f = lambda t, e, b, fn: (fn(t, e, b) ** 2).sum()  # noqa: E731
    ours = jax.make_jaxpr(jax.grad(f, argnums=(0, 1, 2)), static_argnums=3)(
        t, emb, bias, lambda *a: splade_max_pool(*a, mask, 4))
    ref = jax.make_jaxpr(jax.grad(f, argnums=(0, 1, 2)), static_argnums=3)(
        t, emb, bias, lambda *a: plain(*a, mask))
    biggest = lambda j: max(int(np.prod(s)) for s in _shapes(j.jaxpr) if s and s[-1] == V)  # noqa: E731
    assert biggest(ref) == N * L * V
    assert biggest(ours) == N * 4 * V


def _model_batch(cfg, seed=1, length=12):
    ids = jax.random.randint(jax.random.key(seed), (3, length), 1, cfg.vocab_size)
    mask = (jnp.arange(length)[None] < jnp.array([[length], [7], [3]])).astype(jnp.int32)
    return {"input_ids": ids, "attention_mask": mask}


def test_splade_model_gradients_equal_plain_head_float64(x64, tiny_cfg):
    """Whole model (encoder, MLM transform, tied decoder also used by the input embeddings), every parameter."""
    ours = build_model("splade", tiny_cfg, dtype=jnp.float64)
    refs = [build_model("splade", tiny_cfg, dtype=jnp.float64, argmax_head=False, chunk_size=c) for c in (0, 4)]
    params = jax.tree.map(lambda x: x.astype(jnp.float64), init_params(ours, jax.random.key(0)))
    params["bias"] = jax.random.normal(jax.random.key(5), params["bias"].shape, jnp.float64)
    batch = _model_batch(tiny_cfg)
    r = weights((3, tiny_cfg.vocab_size))

    def value_and_grad(model):
        return jax.jit(jax.value_and_grad(lambda p: (model.apply({"params": p}, batch) * r).sum()))(params)

    value, grads = value_and_grad(ours)
    for ref in refs:
        value_ref, grads_ref = value_and_grad(ref)
        assert abs(float(value) - float(value_ref)) < 1e-9 * abs(float(value_ref))
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(grads_ref)):
            assert rel_err(a, b) < 1e-9, jax.tree_util.keystr(path)
    emb_grad = grads["encoder"]["embeddings"]["word_embeddings"]["embedding"]
    assert float(jnp.abs(emb_grad).max()) > 1e-2


def test_one_compile_and_bfloat16(tiny_cfg):
    """A bfloat16 model: float32 vectors and gradients, as close to the float32 plain head as the bfloat16 plain
    head is; one compile for new values."""
    models = {"argmax_bf16": build_model("splade", tiny_cfg, dtype=jnp.bfloat16),
              "plain_bf16": build_model("splade", tiny_cfg, dtype=jnp.bfloat16, argmax_head=False),
              "plain_f32": build_model("splade", tiny_cfg, argmax_head=False)}
    params = init_params(models["plain_f32"], jax.random.key(0))
    params["bias"] = jax.random.normal(jax.random.key(5), params["bias"].shape)
    r = jax.random.normal(jax.random.key(7), (3, tiny_cfg.vocab_size))
    fns = {k: jax.jit(jax.value_and_grad(lambda p, b, m=m: (m.apply({"params": p}, b) * r).sum()))
           for k, m in models.items()}
    for seed in (1, 2):
        batch = _model_batch(tiny_cfg, seed)
        out = {k: f(params, batch) for k, f in fns.items()}
        (v_ref, g_ref) = out["plain_f32"]
        flat = lambda g: jnp.concatenate([x.ravel() for x in jax.tree.leaves(g)])  # noqa: E731
        err = {k: (abs(float(v) - float(v_ref)) / abs(float(v_ref)), rel_err(flat(g), flat(g_ref)))
               for k, (v, g) in out.items() if k != "plain_f32"}
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(out["argmax_bf16"][1]))
        assert err["argmax_bf16"][0] < 1e-2 and err["argmax_bf16"][1] < 0.15
        assert err["argmax_bf16"][1] < 1.2 * err["plain_bf16"][1], err
        assert rel_err(out["argmax_bf16"][1]["bias"], g_ref["bias"]) < 2e-3  # the head's own gradient
    assert fns["argmax_bf16"]._cache_size() == 1
    w = jax.jit(models["argmax_bf16"].apply)({"params": params}, batch)
    assert w.dtype == jnp.float32 and float(w.min()) == 0.0 and float(w.max()) > 0.5


@pytest.mark.parametrize("backward,axis_type", [("loop", "Auto"), ("batched", "Auto"), ("auto", "Explicit"),
                                                ("batched", "Explicit")])
def test_batch_sharded_over_eight_devices(backward, axis_type):
    """The kernel under a jit whose batch is sharded on "data" over 8 devices equals the one-device result: on
    Auto axes (the train step's mesh; GSPMD replicates the loop) and on Explicit ones ("auto" then picks the
    batched backward, as a scan over a sharded axis is rejected)."""
    assert len(jax.devices()) >= 8
    t, emb, bias, mask = inputs(dtype=jnp.float32)
    t, mask = jnp.tile(t, (2, 1, 1)), jnp.tile(mask, (2, 1))  # N = 8
    r = jax.random.normal(jax.random.key(3), (2 * N, V))

    def grads(t, e, b, m):
        return jax.grad(lambda t, e, b: (splade_max_pool(t, e, b, m, 4, backward) * r).sum(),
                        argnums=(0, 1, 2))(t, e, b)

    want = jax.jit(grads)(t, emb, bias, mask)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(getattr(jax.sharding.AxisType, axis_type),),
                         devices=jax.devices()[:8])
    rows, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    t, emb, bias, mask = (jax.device_put(x, s) for x, s in zip((t, emb, bias, mask), (rows, rep, rep, rows)))
    got = jax.jit(grads, out_shardings=(rows, rep, rep))(t, emb, bias, mask)
    for a, b in zip(got, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_head_flops_fall_by_the_predicted_share():
    f = head_flops(n_seq=48, length=128, hidden=384, vocab=30522)
    assert f["plain"] == 6 * 48 * 128 * 384 * 30522
    np.testing.assert_allclose(f["argmax"] / f["plain"], (1 + 2 / 128) / 3)
