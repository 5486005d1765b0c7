"""Online distillation: a frozen cross-encoder teacher (a tiny ``train-teacher``-style work directory) runs inside
the step. Online == offline from the scores that teacher writes through the scoring engine (same seed, same
batches: losses and parameters within 1e-5); no gradient reaches the teacher; bf16 teacher; the recipe's loss
falls, resume is bit-exact and 8 devices == 1."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax import distributed
from distill_jax.config import load_config
from distill_jax.teacher.scorer import PairScorer
from distill_jax.train import state as state_lib
from distill_jax.train.batches import loader_for_run
from distill_jax.train.step import HOST_ONLY_KEYS, compile_train_step, make_loss_fn, teacher_scores
from distill_jax.train.trainer import train
from test_objectives import check_eight_equal_one, check_trains_and_resumes, tiny
from test_step import assert_same, fast_compiles, mesh_of  # noqa: F401  (fast_compiles: autouse)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny cross-encoder trained for 12 steps on the synthetic overlap teacher: a real checkpoint to load."""
    workdir = tmp_path_factory.mktemp("teacher")
    train(load_config("configs/tiny.py:cross_encoder", [f"workdir={workdir}", "steps=12", "model.num_layers=1",
                                                         "checkpoint.async_save=false"]))
    return str(workdir)


def online(teacher_dir, *overrides):
    return tiny("colbert_online", f"teacher.model.checkpoint={teacher_dir}", *overrides)


def test_online_equals_offline_from_the_scores_the_teacher_wrote(teacher_dir):
    """Same seed, same batches: the online step (teacher inside) and the offline step on the scores the
    scoring engine (``PairScorer``, what ``distill-jax score`` runs) wrote for the same pairs agree within 1e-5
    at every step, losses and parameters."""
    cfg = online(teacher_dir)
    offline_cfg = dataclasses.replace(cfg, teacher=dataclasses.replace(cfg.teacher, online=False))
    mesh = mesh_of(8)
    teacher = state_lib.make_teacher(cfg, mesh)
    scorer = PairScorer(teacher.model, jax.device_get(teacher.params), batch_size=8,
                        buckets=(cfg.data.pair_maxlen,), mesh=mesh)
    runs = {}
    for name, c, t in (("online", cfg, teacher), ("offline", offline_cfg, None)):
        st = state_lib.create_students(c, mesh)
        step = compile_train_step(st.model, c, st.tx, mesh, st.shardings, st.schedule, teacher=t)
        loader, state, losses = loader_for_run(cfg, st.vocab_size), st.state, []
        for _ in range(3):
            batch = {k: v for k, v in next(loader).items() if k not in HOST_ONLY_KEYS}
            assert "teacher_scores" not in batch  # the candidates come without scores
            if t is None:  # offline: the answer key written by the scoring engine for these pairs
                pairs = batch.pop("teacher_pairs")
                flat = {k: v.reshape(-1, v.shape[-1]) for k, v in pairs.items()}
                batch["teacher_scores"] = scorer.score(flat).reshape(batch["mask"].shape)
                args = ()
            else:
                args = (t.params,)
            state, m = step(state, distributed.global_batch(batch, mesh), *args)
            losses.append(float(m["loss"]))
        runs[name] = (losses, jax.device_get(state.params))
    np.testing.assert_allclose(runs["online"][0], runs["offline"][0], rtol=1e-5, atol=1e-6)
    assert_same(runs["online"][1], runs["offline"][1])
    assert len(set(runs["online"][0])) == 3  # it trained


def test_no_gradient_reaches_the_teacher_and_bf16_teacher(teacher_dir):
    cfg = online(teacher_dir)
    mesh = mesh_of(1)
    teacher = state_lib.make_teacher(cfg, mesh)
    st = state_lib.create_students(cfg, mesh)
    batch = jax.tree.map(jnp.asarray, {k: v for k, v in next(loader_for_run(cfg, st.vocab_size)).items()
                                       if k not in HOST_ONLY_KEYS})
    loss_fn = make_loss_fn(st.model, cfg)

    def loss(student, frozen):
        scored = {**batch, "teacher_scores": teacher_scores(teacher, frozen, batch)}
        return loss_fn(student, scored, jax.random.key(0), 0)[0]

    g_student, g_teacher = jax.jit(jax.grad(loss, argnums=(0, 1)))(st.state.params, teacher.params)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(g_teacher))
    assert float(jnp.abs(g_student["linear"]["kernel"]).max()) > 0
    assert float(jnp.abs(g_student["encoder"]["layer_0"]["attention"]["query"]["kernel"]).max()) > 0
    half = state_lib.make_teacher(online(teacher_dir, "teacher.model.dtype=bfloat16"), mesh)
    assert {x.dtype for x in jax.tree.leaves(half.params)} == {jnp.dtype(jnp.bfloat16)}
    full = jax.jit(lambda p: teacher_scores(teacher, p, batch))(teacher.params)
    bf16 = jax.jit(lambda p: teacher_scores(half, p, batch))(half.params)
    assert bf16.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(bf16), np.asarray(full), rtol=0.05, atol=0.05)


def test_online_eight_devices_equal_one(teacher_dir):
    check_eight_equal_one(online(teacher_dir))


def test_online_recipe_trains_and_resumes_bit_exactly(tmp_path, teacher_dir):
    ref = check_trains_and_resumes(tmp_path, "colbert_online", f"teacher.model.checkpoint={teacher_dir}")
    assert ref["last_metrics"]["spearman"] > 0  # agreement with the online teacher's ranking
