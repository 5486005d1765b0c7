"""The loss zoo against float64 numpy references written here, plus the invariances that define each loss.

References loop over queries and keep only the real candidates (np.flatnonzero(mask)), so they never see padding:
comparing them with the masked, vectorised JAX losses checks the formula and the masking at once.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from distill_jax import losses as L
from distill_jax.registry import losses as loss_registry
from distill_jax.registry import regularizers

# ----------------------------------------------------------------------------------------------------------------
# float64 numpy references (independent of the package: explicit loops over real candidates)
# ----------------------------------------------------------------------------------------------------------------

def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    shifted = x - x.max()
    return shifted - np.log(np.exp(shifted).sum())


def ref_margin_mse(s, t, m, all_pairs=False, margin=None):
    terms = []
    for b in range(s.shape[0]):
        real = np.flatnonzero(m[b])
        if all_pairs:
            pairs = [(i, j) for a, i in enumerate(real) for j in real[a + 1:]]
        else:
            pairs = [(0, k) for k in real if k != 0] if m[b, 0] else []
        for i, j in pairs:
            target = (t[b, i] - t[b, j]) if margin is None else margin
            terms.append(((s[b, i] - s[b, j]) - target) ** 2)
    return np.mean(terms) if terms else 0.0


def ref_mse(s, t, m, teacher_scale=1.0, teacher_shift=0.0):
    return np.mean([(s[b, k] - (teacher_scale * t[b, k] + teacher_shift)) ** 2 for b, k in zip(*np.nonzero(m))])


def ref_kl(s, t, m, temperature=1.0, teacher_temperature=None, t2_scaling=False, normalize_student=False,
           reverse=False):
    tt = temperature if teacher_temperature is None else teacher_temperature
    rows = []
    for b in range(s.shape[0]):
        real = np.flatnonzero(m[b])
        if real.size == 0:
            continue
        sr = s[b, real].astype(np.float64)
        if normalize_student:
            sr = (sr - sr.min()) / (sr.max() - sr.min() + 1e-8)
        log_ps, log_pt = np_log_softmax(sr / temperature), np_log_softmax(t[b, real] / tt)
        rows.append(np.sum(np.exp(log_ps) * (log_ps - log_pt)) if reverse else np.sum(np.exp(log_pt) * (log_pt - log_ps)))
    value = np.mean(rows) if rows else 0.0
    return value * temperature**2 if t2_scaling else value


def ref_listnet(s, t, m, temperature=1.0):
    rows = []
    for b in range(s.shape[0]):
        real = np.flatnonzero(m[b])
        if real.size:
            rows.append(-np.sum(np.exp(np_log_softmax(t[b, real] / temperature))
                                * np_log_softmax(s[b, real] / temperature)))
    return np.mean(rows)


def ref_infonce(s, t, m, temperature=1.0, in_batch_scores=None, in_batch_mask=None):
    rows = []
    for b in range(s.shape[0]):
        if not m[b, 0]:
            continue
        logits = list(s[b, np.flatnonzero(m[b])])  # positive first: column 0 is real
        if in_batch_scores is not None:
            logits += list(in_batch_scores[b, np.flatnonzero(in_batch_mask[b])])
        rows.append(-np_log_softmax(np.array(logits) / temperature)[0])
    return np.mean(rows)


def ref_plackett_luce(s, t, m, temperature=1.0, positive_first=True):
    rows = []
    for b in range(s.shape[0]):
        real = np.flatnonzero(m[b])
        if real.size == 0:
            continue
        ss, ts = s[b, real] / temperature, t[b, real] / temperature
        weights = np.exp(np_log_softmax(ts))
        order = list(np.argsort(-ts, kind="stable"))
        if positive_first and m[b, 0]:
            order.remove(0)
            order = [0] + order  # real[0] == 0: the positive
        total = 0.0
        for k, item in enumerate(order):
            rest = ss[order[k:]]
            total += weights[item] * (np.log(np.sum(np.exp(rest - rest.max()))) + rest.max() - ss[item])
        rows.append(total)
    return np.mean(rows)


def ref_cprd(s, t, m, num_hard_negatives=8, temperature=1.0):
    rows = []
    for b in range(s.shape[0]):
        negatives = [k for k in np.flatnonzero(m[b]) if k != 0]
        if not negatives:
            continue
        ranked = sorted(negatives, key=lambda k: -t[b, k])
        hard = min(num_hard_negatives, len(ranked))
        terms = [-np_log_softmax(s[b, ranked[r:]] / temperature)[0] for r in range(hard)]
        rows.append(np.mean(terms))
    return np.mean(rows)


def ref_graded_bce(s, t, m, teacher_scale=1.0, teacher_shift=0.0, student_scale=1.0, student_bias=0.0,
                   in_batch_scores=None, in_batch_mask=None):
    terms = []
    for b, k in zip(*np.nonzero(m)):
        y = 1 / (1 + np.exp(-(teacher_scale * t[b, k] + teacher_shift)))
        z = student_scale * s[b, k] + student_bias
        terms.append(y * np.logaddexp(0, -z) + (1 - y) * np.logaddexp(0, z))
    if in_batch_scores is not None:
        for b, k in zip(*np.nonzero(in_batch_mask)):
            terms.append(np.logaddexp(0, student_scale * in_batch_scores[b, k] + student_bias))  # target 0
    return np.mean(terms)


# name -> (hyperparameters, reference); every registered score loss must appear here (test_every_loss_has_a_reference)
CASES = {
    "margin_mse": ({}, ref_margin_mse),
    "margin_mse/all_pairs": ({"all_pairs": True}, functools.partial(ref_margin_mse, all_pairs=True)),
    "fixed_margin_mse": ({}, lambda s, t, m: ref_margin_mse(s, t, m, margin=1.0)),
    "fixed_margin_mse/0.3": ({"margin": 0.3}, lambda s, t, m: ref_margin_mse(s, t, m, margin=0.3)),
    "mse": ({}, ref_mse),
    "mse/shifted": ({"teacher_scale": 0.5, "teacher_shift": 8.0},
                    functools.partial(ref_mse, teacher_scale=0.5, teacher_shift=8.0)),
    "kl": ({}, ref_kl),
    "kl/T": ({"temperature": 2.5, "t2_scaling": True},
             functools.partial(ref_kl, temperature=2.5, t2_scaling=True)),
    "kl/Tt": ({"temperature": 0.5, "teacher_temperature": 3.0},
              functools.partial(ref_kl, temperature=0.5, teacher_temperature=3.0)),
    "kl/pylate": ({"normalize_student": True}, functools.partial(ref_kl, normalize_student=True)),
    "kl/reverse": ({"reverse": True, "temperature": 0.5, "teacher_temperature": 2.0},  # RocketQAv2's L_KL
                   functools.partial(ref_kl, reverse=True, temperature=0.5, teacher_temperature=2.0)),
    "listnet": ({}, ref_listnet),
    "listnet/T": ({"temperature": 0.7}, functools.partial(ref_listnet, temperature=0.7)),
    "infonce": ({}, ref_infonce),
    "infonce/T": ({"temperature": 0.05}, functools.partial(ref_infonce, temperature=0.05)),
    "plackett_luce": ({}, ref_plackett_luce),
    "plackett_luce/T": ({"temperature": 2.0, "positive_first": False},
                        functools.partial(ref_plackett_luce, temperature=2.0, positive_first=False)),
    "cprd": ({}, ref_cprd),
    "cprd/k2": ({"num_hard_negatives": 2, "temperature": 0.5},
                functools.partial(ref_cprd, num_hard_negatives=2, temperature=0.5)),
    "graded_bce": ({}, ref_graded_bce),
    "graded_bce/scaled": ({"teacher_scale": 0.5, "teacher_shift": -1.0, "student_scale": 3.0, "student_bias": 0.2},
                          functools.partial(ref_graded_bce, teacher_scale=0.5, teacher_shift=-1.0, student_scale=3.0,
                                            student_bias=0.2)),
}
# The structural tests (padding, extremes, compile counts) run once per loss, plus the options that change how
# masking is exercised; value tests run every case above.
STRUCTURAL = sorted({case for case in CASES if "/" not in case} | {"margin_mse/all_pairs", "kl/pylate", "kl/Tt",
                                                                  "kl/reverse"})
# Losses over representations, not [B, N] scores: tested on their own below.
NOT_SCORE_LOSSES = {"embedding_alignment", "mlm"}


@functools.cache
def loss_of(case):
    """The registered loss with the case's hyperparameters bound, jitted (one compile beats op-by-op dispatch)."""
    kwargs, _ = CASES[case]
    return jax.jit(functools.partial(loss_registry.get(case.split("/")[0]), **kwargs))


def random_batch(seed=0, b=6, n=7, dtype=np.float64):
    """Scores with a ragged mask: row 2 fully padded, row 3 only its positive, row 4 positive padded."""
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(b, n)) * 3
    t = rng.normal(size=(b, n)) * 4 + 1
    m = rng.random((b, n)) < 0.7
    m[:, :3] = True
    m[2] = False
    m[3] = False
    m[3, 0] = True
    m[4, 0] = False
    return s.astype(dtype), t.astype(dtype), m


def test_every_loss_has_a_reference():
    assert set(loss_registry.names()) - NOT_SCORE_LOSSES == {case.split("/")[0] for case in CASES}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_reference_float64(case, x64):
    s, t, m = random_batch(1)
    got = loss_of(case)(jnp.asarray(s), jnp.asarray(t), jnp.asarray(m))
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(float(got), CASES[case][1](s, t, m), rtol=1e-6)
    # And the autodiff gradient agrees with central finite differences.
    check_grads(lambda x: loss_of(case)(x, jnp.asarray(t), jnp.asarray(m)), (jnp.asarray(s),), order=1,
                modes=["rev"], eps=1e-4, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_reference_float32(case):
    s, t, m = random_batch(2, dtype=np.float32)
    got = loss_of(case)(jnp.asarray(s), jnp.asarray(t), jnp.asarray(m))
    assert got.dtype == jnp.float32
    ref = CASES[case][1](s.astype(np.float64), t.astype(np.float64), m)
    np.testing.assert_allclose(float(got), ref, rtol=1e-5)


@pytest.mark.parametrize("case", STRUCTURAL)
def test_padding_changes_neither_value_nor_gradient(case):
    """Unpadded [B, N] vs the same candidates with garbage (inf, nan, 1e30) padding columns interleaved."""
    rng = np.random.default_rng(3)
    s = (rng.normal(size=(4, 5)) * 3).astype(np.float32)
    t = (rng.normal(size=(4, 5)) * 4).astype(np.float32)
    full = np.ones_like(s, bool)
    # Pads go after columns 2, 4 (twice) and at the end; the positive stays at column 0.
    order = np.argsort(np.concatenate([np.arange(5), np.array([2.5, 4.5, 4.6, 5.5])]), kind="stable")
    pad_s = np.concatenate([s, np.array([[np.inf, np.nan, -1e30, 7.0]] * 4, np.float32)], 1)[:, order]
    pad_t = np.concatenate([t, np.array([[np.nan, -np.inf, 1e30, 3.0]] * 4, np.float32)], 1)[:, order]
    pad_m = np.concatenate([full, np.zeros((4, 4), bool)], 1)[:, order]
    real_cols = np.flatnonzero(pad_m[0])
    assert np.array_equal(pad_s[:, real_cols], s) and not pad_m[0, 3]
    value_and_grad = jax.jit(jax.value_and_grad(loss_of(case), argnums=(0, 1)))
    v0, (gs0, gt0) = value_and_grad(jnp.asarray(s), jnp.asarray(t), jnp.asarray(full))
    v1, (gs1, gt1) = value_and_grad(jnp.asarray(pad_s), jnp.asarray(pad_t), jnp.asarray(pad_m))
    np.testing.assert_allclose(v1, v0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(gs1)[:, real_cols], gs0, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(gt1)[:, real_cols], gt0, rtol=1e-5, atol=1e-7)
    assert np.all(np.asarray(gs1)[:, ~pad_m[0]] == 0) and np.all(np.asarray(gt1)[:, ~pad_m[0]] == 0)


@pytest.mark.parametrize("case", STRUCTURAL)
def test_finite_gradients_extreme_logits_and_empty_rows(case):
    s, t, m = random_batch(4, dtype=np.float32)
    s = np.sign(s) * 1e4
    t = -np.sign(t) * 1e4
    value_and_grad = jax.jit(jax.value_and_grad(loss_of(case), argnums=(0, 1)))
    value, grads = value_and_grad(jnp.asarray(s), jnp.asarray(t), jnp.asarray(m))
    assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads)
    # A batch where every candidate is padding: value 0, gradient 0.
    empty = np.zeros_like(m)
    value, grads = value_and_grad(jnp.asarray(s), jnp.asarray(t), jnp.asarray(empty))
    assert value == 0 and all(np.all(np.asarray(g) == 0) for g in grads)


@pytest.mark.parametrize("case", ["margin_mse", "margin_mse/all_pairs", "kl", "kl/T", "kl/Tt", "listnet", "mse",
                                  "plackett_luce", "cprd"])
def test_teacher_shift_invariance(case):
    """Margin-MSE and KL (and ListNet) see only teacher differences within a query; pointwise MSE does not."""
    s, t, m = random_batch(5)
    shift = np.random.default_rng(5).normal(size=(s.shape[0], 1)) * 10
    loss = loss_of(case)
    before, after = loss(s, t, m), loss(s, t + shift, m)
    if case == "mse":
        assert abs(float(after) - float(before)) > 1.0
    else:
        np.testing.assert_allclose(after, before, rtol=1e-5)


@pytest.mark.parametrize("case", STRUCTURAL)
def test_jit_compiles_once_per_shape_and_vmaps(case):
    traces = []

    def counted(s, t, m):
        traces.append(s.shape)
        return loss_of(case)(s, t, m)

    step = jax.jit(jax.value_and_grad(counted))
    for seed in range(3):
        s, t, m = random_batch(seed, dtype=np.float32)
        step(s, t, m)
    assert len(traces) == 1
    s, t, m = random_batch(0, b=5, n=9, dtype=np.float32)
    step(s, t, m)
    step(s + 1, t, m)
    assert len(traces) == 2
    # vmap over a leading group axis equals the per-group loop.
    groups = [random_batch(seed, dtype=np.float32) for seed in range(3)]
    stacked = [jnp.asarray(np.stack(x)) for x in zip(*groups)]
    batched = jax.jit(jax.vmap(loss_of(case)))(*stacked)
    np.testing.assert_allclose(batched, [loss_of(case)(*g) for g in groups], rtol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# in-batch negatives
# ----------------------------------------------------------------------------------------------------------------

def test_in_batch_negative_mask():
    cand = np.array([[1, 1, 0], [1, 0, 1]], bool)
    got = np.asarray(L.in_batch_negative_mask(cand, 2))
    np.testing.assert_array_equal(got, [[0, 0, 0, 1, 0, 1], [1, 1, 0, 0, 0, 0]])
    # Under data parallelism device 1 holds query 1 only: offset 1.
    np.testing.assert_array_equal(L.in_batch_negative_mask(cand, 1, query_offset=1), got[1:])


def test_infonce_in_batch_matches_reference(x64):
    s, t, m = random_batch(6)
    b, n = s.shape
    full = np.random.default_rng(6).normal(size=(b, b * n)) * 3
    for q in range(b):  # the query's own block holds its own scores, as a real in-batch matrix would
        full[q, q * n:(q + 1) * n] = s[q]
    ib_mask = np.asarray(L.in_batch_negative_mask(m, b))
    got = L.infonce(s, t, m, temperature=0.3, in_batch_scores=full, in_batch_mask=ib_mask)
    np.testing.assert_allclose(got, ref_infonce(s, t, m, 0.3, full, ib_mask), rtol=1e-6)
    assert float(got) > float(L.infonce(s, t, m, temperature=0.3))  # more negatives, larger loss here


# ----------------------------------------------------------------------------------------------------------------
# regularisers and schedules
# ----------------------------------------------------------------------------------------------------------------

def sparse_reps(seed, b=6, v=40, dtype=np.float64):
    rng = np.random.default_rng(seed)
    reps = np.maximum(rng.normal(size=(b, v)), 0) * 2
    return reps.astype(dtype), np.array([1, 1, 0, 1, 1, 0], bool)[:b]


def ref_flops(reps, rows):
    real = reps[rows]
    return np.sum(np.abs(real).mean(0) ** 2)


def ref_l1(reps, rows):
    return np.abs(reps[rows]).sum(1).mean()


@pytest.mark.parametrize("name,ref", [("flops", ref_flops), ("l1", ref_l1)])
def test_regularizers(name, ref, x64):
    reps, rows = sparse_reps(7)
    reg = regularizers.get(name)
    np.testing.assert_allclose(reg(reps, rows), ref(reps, rows), rtol=1e-6)
    np.testing.assert_allclose(reg(reps), ref(reps, np.ones(len(reps), bool)), rtol=1e-6)
    # Padded rows: garbage there changes neither value nor gradient; their gradient is 0.
    garbage = reps.copy()
    garbage[~rows] = np.nan
    value, grad = jax.value_and_grad(reg)(garbage, rows)
    np.testing.assert_allclose(value, ref(reps, rows), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grad)[rows], np.asarray(jax.grad(reg)(reps[rows])), rtol=1e-12)
    assert np.all(np.asarray(grad)[~rows] == 0)
    check_grads(jax.jit(lambda r: reg(r, rows)), (reps + 0.1,), order=1, modes=["rev"], eps=1e-5)
    # float weights generalise the mask; all-zero weights give 0 with zero gradient.
    np.testing.assert_allclose(reg(reps, rows.astype(np.float64)), ref(reps, rows), rtol=1e-6)
    value, grad = jax.value_and_grad(reg)(reps, np.zeros(len(reps)))
    assert value == 0 and np.all(np.asarray(grad) == 0)
    np.testing.assert_allclose(jax.jit(jax.vmap(reg))(np.stack([reps, 2 * reps]), np.stack([rows, rows])),
                               [ref(reps, rows), ref(2 * reps, rows)], rtol=1e-6)


def test_flops_float32_and_shapes():
    reps, rows = sparse_reps(8, dtype=np.float32)
    np.testing.assert_allclose(L.flops(reps, rows), ref_flops(reps.astype(np.float64), rows), rtol=1e-5)
    with pytest.raises(ValueError, match="one weight per representation"):
        L.flops(reps, rows[:3])


def test_splade_lambda_quadratic_warmup_under_jit():
    expected = lambda step: 0.4 * min(1.0, step / 50) ** 2  # noqa: E731
    sched = jax.jit(L.splade_lambda, static_argnums=(1,))
    for step in [0, 1, 10, 25, 49, 50, 51, 1000]:
        np.testing.assert_allclose(sched(jnp.asarray(step), 0.4, 50), expected(step), rtol=1e-6)
        np.testing.assert_allclose(L.splade_lambda(step, 0.4, 50), expected(step), rtol=1e-6)
    assert float(L.splade_lambda(3, 0.4, 0)) == pytest.approx(0.4)  # no warm-up


def test_splade_regularization_combines_query_and_document_terms(x64):
    q, q_rows = sparse_reps(9)
    d, _ = sparse_reps(10, b=5)
    d_rows = np.array([1, 1, 1, 0, 1], bool)
    got = L.splade_regularization(q, d, 10, lambda_query=0.5, lambda_doc=0.3, warmup_steps=20, query_mask=q_rows,
                                  doc_mask=d_rows, query_regularizer="l1")
    expected = 0.5 * 0.25 * ref_l1(q, q_rows) + 0.3 * 0.25 * ref_flops(d, d_rows)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_sparsity_stats():
    reps, rows = sparse_reps(11, dtype=np.float32)
    expected = np.mean([(r != 0).sum() for r in reps[rows]])
    assert float(L.sparsity_stats(reps, rows)) == pytest.approx(expected)
    assert float(L.sparsity_stats(reps)) == pytest.approx(np.mean((reps != 0).sum(1)))
    assert float(L.sparsity_stats(reps, np.zeros(len(reps), bool))) == 0.0


def test_user_registered_loss_is_found_by_name():
    @loss_registry.register("test_hinge")
    def hinge(student, teacher, mask):
        return jnp.sum(jnp.where(mask, jax.nn.relu(1 - student), 0))

    try:
        assert loss_registry.get("test_hinge") is hinge
    finally:
        loss_registry._items.pop("test_hinge")


def test_bad_shapes_fail_early_with_a_message():
    s, t, m = random_batch(0)
    with pytest.raises(ValueError, match="teacher_scores shape"):
        L.margin_mse(s, t[:, :3], m)
    with pytest.raises(ValueError, match=r"\[B, N\]"):
        L.kl(s[0], t[0], m[0])


def test_graded_bce_in_batch_matches_reference(x64):
    s, t, m = random_batch(12)
    b, n = s.shape
    full = np.random.default_rng(12).normal(size=(b, b * n))
    ib_mask = np.asarray(L.in_batch_negative_mask(m, b))
    got = L.graded_bce(s, t, m, teacher_scale=0.3, in_batch_scores=full, in_batch_mask=ib_mask)
    np.testing.assert_allclose(got, ref_graded_bce(s, t, m, 0.3, in_batch_scores=full, in_batch_mask=ib_mask),
                               rtol=1e-6)


def test_plackett_luce_positive_first_is_teacher_weighted_cross_entropy_for_two_items(x64):
    """With two candidates PLD is w_pos * CE(positive) (the second step is log 1 = 0)."""
    s = np.array([[0.3, 1.2]])
    t = np.array([[-1.0, 2.0]])
    w_pos = np.exp(-1.0) / (np.exp(-1.0) + np.exp(2.0))
    expected = w_pos * -np_log_softmax(s[0])[0]
    np.testing.assert_allclose(L.plackett_luce(s, t, None), expected, rtol=1e-12)


def test_cprd_ignores_the_positive_and_score_values(x64):
    s, t, m = random_batch(13)
    base = L.cprd(s, t, m, num_hard_negatives=3)
    moved = s.copy()
    moved[:, 0] += 50.0  # the positive is not part of the distilled order
    np.testing.assert_allclose(L.cprd(moved, t, m, num_hard_negatives=3), base, rtol=1e-12)
    monotone = np.sign(t) * np.abs(t) ** 3 + 7.0  # same order per query, different values
    np.testing.assert_allclose(L.cprd(s, monotone, m, num_hard_negatives=3), base, rtol=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# representation losses: embedding alignment, MLM
# ----------------------------------------------------------------------------------------------------------------

def ref_alignment(se, te, rows, metric):
    se, te = se[rows], te[rows]
    if metric == "mse":
        return np.mean((se - te) ** 2)
    cos = np.sum(se * te, 1) / (np.linalg.norm(se, axis=1) * np.linalg.norm(te, axis=1))
    return np.mean(1 - cos)


@pytest.mark.parametrize("metric", ["mse", "cosine"])
def test_embedding_alignment(metric, x64):
    rng = np.random.default_rng(14)
    se, te = rng.normal(size=(5, 16)), rng.normal(size=(5, 16))
    rows = np.array([1, 0, 1, 1, 0], bool)
    loss = functools.partial(L.embedding_alignment, metric=metric)
    np.testing.assert_allclose(loss(se, te, rows), ref_alignment(se, te, rows, metric), rtol=1e-6)
    np.testing.assert_allclose(loss(se, te), ref_alignment(se, te, np.ones(5, bool), metric), rtol=1e-6)
    check_grads(jax.jit(lambda x: loss(x, te, rows)), (se,), order=1, modes=["rev"], eps=1e-5)
    garbage = se.copy()
    garbage[~rows] = np.inf
    value, grad = jax.value_and_grad(loss)(garbage, te, rows)
    np.testing.assert_allclose(value, ref_alignment(se, te, rows, metric), rtol=1e-6)
    assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[~rows] == 0)
    zero = np.zeros_like(se)  # a dead student embedding: finite gradient
    assert np.all(np.isfinite(jax.grad(loss)(zero, te, rows)))
    np.testing.assert_allclose(jax.jit(jax.vmap(loss))(np.stack([se, te]), np.stack([te, se]), np.stack([rows, rows])),
                               [ref_alignment(se, te, rows, metric), ref_alignment(te, se, rows, metric)], rtol=1e-6)
    with pytest.raises(ValueError, match="metric"):
        L.embedding_alignment(se, te, metric="l2")


def test_mlm_cross_entropy(x64):
    rng = np.random.default_rng(15)
    logits = rng.normal(size=(3, 6, 11)) * 4
    labels = rng.integers(0, 11, size=(3, 6))
    labels[rng.random((3, 6)) < 0.5] = -100
    labels[0, 0] = 4
    expected = np.mean([-np_log_softmax(logits[b, i])[labels[b, i]] for b, i in zip(*np.nonzero(labels != -100))])
    np.testing.assert_allclose(L.mlm(logits, labels), expected, rtol=1e-6)
    garbage = logits.copy()
    garbage[labels == -100] = np.nan
    value, grad = jax.value_and_grad(L.mlm)(garbage, labels)
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    assert np.all(np.asarray(grad)[labels == -100] == 0) and np.all(np.isfinite(grad))
    attention = np.ones((3, 6), bool)
    attention[:, -2:] = False
    keep = (labels != -100) & attention
    expected_masked = np.mean([-np_log_softmax(logits[b, i])[labels[b, i]] for b, i in zip(*np.nonzero(keep))])
    np.testing.assert_allclose(L.mlm(logits, labels, attention), expected_masked, rtol=1e-6)
    assert float(L.mlm(logits, np.full((3, 6), -100))) == 0.0
    np.testing.assert_allclose(L.mlm(logits.astype(np.float32) * 2500, labels), L.mlm(logits * 2500, labels),
                               rtol=1e-5)  # logits ~1e4: float32 still agrees
    batched = jax.jit(jax.vmap(L.mlm))(np.stack([logits, logits]), np.stack([labels, labels]))
    np.testing.assert_allclose(batched, [expected, expected], rtol=1e-6)
