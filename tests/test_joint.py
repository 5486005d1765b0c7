"""Joint retriever-reranker training (RocketQAv2, ``configs/rocketqav2.py``): the retriever's KL reads the
re-ranker's scores of the same step without stop-gradient, so ONE gradient of L_sup + L_KL reaches both parameter
sets; the step's loss and per-student gradient norms equal that gradient taken outside the step; both sets move
(and the re-ranker's update differs from its update alone); 8 == 1; the recipe trains and resumes bit-exactly;
peers are validated (unknown, cycle, grad_accum) and ``--set students.<name>.<field>`` reaches one student."""

import json
import os

import jax
import numpy as np
import optax
import pytest

from distill_jax import distributed
from distill_jax.config import ConfigError, load_config, peer_order
from distill_jax.export import MARKER, export_run
from distill_jax.train import checkpoint as ckpt_lib
from distill_jax.train import state as state_lib
from distill_jax.train.batches import loader_for_run
from distill_jax.train.step import HOST_ONLY_KEYS, make_loss_fn, student_batch
from test_objectives import check_trains_and_resumes, run_steps, tiny
from test_step import assert_same, fast_compiles, mesh_of  # noqa: F401  (fast_compiles: autouse)


def _same_tree(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_one_gradient_of_both_losses_reaches_both_students():
    cfg = tiny("rocketqav2")
    assert peer_order(cfg.students) == ("reranker", "retriever")
    st = state_lib.create_students(cfg, mesh_of(1))
    batch = {k: v for k, v in next(loader_for_run(cfg, st.vocab_size)).items() if k not in HOST_ONLY_KEYS}
    key = jax.random.fold_in(jax.random.wrap_key_data(st.state.rng), 0)
    subs = dict(cfg.student_configs())
    f_ce = make_loss_fn(st.model["reranker"], subs["reranker"], score=True)
    f_r = make_loss_fn(st.model["retriever"], subs["retriever"])

    def total(params, coupled=True):
        l_ce, (_, _, s_ce) = f_ce(params["reranker"], student_batch(batch, "reranker", "cross_encoder"), key, 0)
        if not coupled:
            s_ce = jax.lax.stop_gradient(s_ce)
        view = {**student_batch(batch, "retriever", "dense"), "teacher_scores": s_ce}
        l_r, _ = f_r(params["retriever"], view, key, 0)
        return l_ce + l_r, (l_ce, l_r)

    (value, (l_ce, l_r)), grads = jax.value_and_grad(total, has_aux=True)(st.state.params)
    _, stopped = jax.value_and_grad(lambda p: total(p, coupled=False), has_aux=True)(st.state.params)
    # the KL's gradient reaches the re-ranker: its gradient is not its L_sup gradient alone
    assert float(optax.tree.norm(jax.tree.map(lambda a, b: a - b, grads["reranker"], stopped["reranker"]))) > 1e-4
    params, metrics = run_steps(cfg, 1, steps=2)  # step 1 at warm-up's learning rate 0; compare its gradient
    m = metrics[0]
    np.testing.assert_allclose(m["loss"], float(value), rtol=1e-5)
    np.testing.assert_allclose([m["reranker/loss"], m["retriever/loss"]], [float(l_ce), float(l_r)], rtol=1e-5)
    for name in ("reranker", "retriever"):
        np.testing.assert_allclose(m[f"{name}/grad_norm"], float(optax.tree.norm(grads[name])), rtol=1e-4,
                                   err_msg=name)
    # after step 2 both parameter sets moved; the re-ranker's is not the update it takes alone (same batches, keys)
    init = jax.device_get(st.state.params)
    assert not _same_tree(params["reranker"], init["reranker"]) and not _same_tree(params["retriever"],
                                                                                    init["retriever"])
    alone, alone_metrics = run_steps(dict(cfg.student_configs())["reranker"], 1, steps=2)
    np.testing.assert_allclose(alone_metrics[0]["loss_main"], m["reranker/loss_main"], rtol=1e-6)
    assert not _same_tree(alone, params["reranker"])


def test_joint_eight_devices_equal_one():
    cfg = tiny("rocketqav2")
    p8, m8 = run_steps(cfg, 8)
    p1, m1 = run_steps(cfg, 1)
    for a, b in zip(m8, m1):
        for k in ("loss", "reranker/loss", "retriever/loss", "grad_norm"):
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # Both losses are shift-invariant in the re-ranker's logits, so its classifier bias has gradient 0: what it
    # gets is float32 rounding of a sum that is 0, which Adam scales up to steps of up to the learning rate, in
    # a direction that depends on the reduction order. Every other parameter is compared.
    bias8, bias1 = (p["reranker"]["classifier"].pop("bias") for p in (p8, p1))
    bound = 2 * cfg.students[0].optim.learning_rate
    assert np.abs(bias8).max() <= bound and np.abs(bias1).max() <= bound
    assert_same(p8, p1)


def test_rocketqav2_recipe_trains_both_and_resumes(tmp_path):
    # the tiny re-ranker learns the synthetic labels slowly (its L_sup stays near ln 4 for 60 steps); the total
    # falls by the retriever's KL, which drops 20x and more
    check_trains_and_resumes(tmp_path, "rocketqav2", fall=0.97)
    params, step, saved = ckpt_lib.restore_params(str(tmp_path / "ref"))
    assert set(params) == {"reranker", "retriever"} and [s.peer for s in saved.students] == ["", "reranker"]
    rows = [json.loads(line) for line in open(tmp_path / "ref" / "metrics.jsonl")]
    rows = [r for r in rows if "retriever/loss" in r]
    first, last = rows[0], rows[-1]
    assert last["retriever/loss"] < 0.2 * first["retriever/loss"], (first, last)
    assert step == 24
    # one student of the run, as a run of its own: its params and config; exported by name
    p, _, single = ckpt_lib.restore_student(str(tmp_path / "ref"), "retriever")
    assert single.model.kind == "dense" and not single.students and _same_tree(p, params["retriever"])
    with pytest.raises(ValueError, match="trains 2 students \\(reranker, retriever\\)"):
        ckpt_lib.restore_student(str(tmp_path / "ref"))
    for name, kind in (("reranker", "cross_encoder"), ("retriever", "dense")):
        out, _ = export_run(str(tmp_path / "ref"), str(tmp_path / name), fmt="transformers", student=name)
        marker = json.load(open(os.path.join(out, MARKER)))
        assert (marker["kind"], marker["student"], marker["step"]) == (kind, name, 24)


def test_peers_are_validated_and_one_student_can_be_set():
    cfg = load_config("configs/rocketqav2.py", ["students.reranker.model.checkpoint=/some/teacher",
                                                "data.dataset_dir=/some/labels"])
    assert [s.model.checkpoint for s in cfg.students] == ["/some/teacher", "sentence-transformers/all-MiniLM-L6-v2"]
    with pytest.raises(KeyError, match="reranker, retriever"):
        load_config("configs/rocketqav2.py", ["students.ranker.peer=retriever"])
    with pytest.raises(ConfigError, match="name another student"):
        load_config("configs/rocketqav2.py:tiny", ["students.retriever.peer=teacher"])
    with pytest.raises(ConfigError, match="cycle: reranker -> retriever -> reranker"):
        load_config("configs/rocketqav2.py:tiny", ["students.reranker.peer=retriever"])
    with pytest.raises(ConfigError, match="grad_accum must be 1"):
        load_config("configs/rocketqav2.py:tiny", ["students.reranker.optim.grad_accum=2"])
