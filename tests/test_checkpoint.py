"""Checkpoints: state + data position round trip, restore 8 -> 1 devices (and from an fsdp mesh), retention of the
latest n plus the best by a metric, partial (killed) saves ignored and cleaned up."""

import dataclasses
import functools
import os

import jax
import numpy as np
import pytest

from distill_jax import distributed
from distill_jax.config import CheckpointConfig, load_config
from distill_jax.train import checkpoint as ckpt_lib
from distill_jax.train import state as state_lib
from distill_jax.train.step import compile_train_step
from distill_jax.data.synthetic import SyntheticBatches


@pytest.fixture(autouse=True, scope="module")
def fast_compiles():
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", False)


@functools.lru_cache(maxsize=None)
def trained_state(n_devices: int, fsdp: int = 1, steps: int = 2):
    """A tiny SPLADE state after a few steps (non-trivial Adam moments), on ``n_devices`` devices."""
    cfg = load_config("configs/splade_mse_flops.py:tiny", ["model.num_layers=1"])
    mesh = distributed.make_mesh(-1, fsdp, devices=jax.devices()[:n_devices])
    model, _, _ = state_lib.make_model(cfg)
    tx = state_lib.make_optimizer(cfg.optim, cfg.steps)
    state, shardings = state_lib.create_state(model, tx, mesh, cfg.seed)
    step = compile_train_step(model, cfg, tx, mesh, shardings)
    data = SyntheticBatches(cfg.data, "splade", cfg.model.vocab_size)
    for _ in range(steps):
        batch = {k: v for k, v in next(data).items() if k != "index"}
        state, _ = step(state, distributed.global_batch(batch, mesh))
    return state, shardings, data, (model, tx, cfg)


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def test_restore_eight_devices_to_one_with_data_state(tmp_path):
    state8, _, data, (model, tx, cfg) = trained_state(8)
    ck = ckpt_lib.Checkpointer(str(tmp_path / "ck"), CheckpointConfig(keep=2, keep_best=0, async_save=True))
    ck.save(2, state8, data.get_state())
    ck.wait()
    expected = leaves(state8)  # read after the async save: the saved copy must not alias donated buffers

    mesh1 = distributed.make_mesh(devices=jax.devices()[:1])
    abstract, shardings1 = state_lib.state_shardings(model, tx, mesh1)
    restored, data_state, step = ck.restore(ckpt_lib.abstract_like(abstract, shardings1))
    ck.close()
    assert step == 2 and data_state == data.get_state() and data_state["position"] == 2
    for leaf in jax.tree.leaves(restored):
        assert leaf.sharding.mesh.devices.size == 1  # laid out on the new topology
    for a, b in zip(leaves(restored), expected):
        np.testing.assert_array_equal(a, b)  # bit-exact
    assert int(restored.step) == 2

    # the restored state keeps training on 1 device, and so does the data position
    fresh = SyntheticBatches(cfg.data, "splade", cfg.model.vocab_size)
    fresh.set_state(data_state)
    step1 = compile_train_step(model, cfg, tx, mesh1, shardings1)
    batch = {k: v for k, v in next(fresh).items() if k != "index"}
    np.testing.assert_array_equal(batch["query"]["input_ids"], data.global_batch(2)["query"]["input_ids"])
    new, m = step1(restored, distributed.global_batch(batch, mesh1))
    assert int(new.step) == 3 and np.isfinite(float(m["loss"]))


def test_restore_from_fsdp_mesh_to_one_device(tmp_path):
    state, shardings, data, (model, tx, _) = trained_state(8, fsdp=2, steps=1)
    kernel = state.params["encoder"]["layer_0"]["intermediate"]["kernel"]
    assert kernel.sharding.spec[0] == "fsdp"  # "embed" really is sharded
    ck = ckpt_lib.Checkpointer(str(tmp_path / "ck"), CheckpointConfig(keep=1, keep_best=0, async_save=False))
    ck.save(1, state, data.get_state())
    mesh1 = distributed.make_mesh(devices=jax.devices()[:1])
    abstract, shardings1 = state_lib.state_shardings(model, tx, mesh1)
    restored, _, _ = ck.restore(ckpt_lib.abstract_like(abstract, shardings1))
    ck.close()
    for a, b in zip(leaves(restored), leaves(state)):
        np.testing.assert_array_equal(a, b)


def test_keeps_latest_n_plus_best_by_metric(tmp_path):
    state, _, data, _ = trained_state(1, steps=1)
    cfg = CheckpointConfig(keep=2, keep_best=1, best_metric="nDCG@10", best_mode="max", async_save=False)
    ck = ckpt_lib.Checkpointer(str(tmp_path / "ck"), cfg)
    ndcg = {10: 0.30, 20: 0.55, 30: 0.40, 40: None, 50: 0.20, 60: None}
    for step, value in ndcg.items():
        ck.save(step, state, data.get_state(), metrics=None if value is None else {"nDCG@10": value})
    ck.wait()
    # the latest two, plus step 20 (best nDCG@10), nothing else
    assert ck.all_steps() == [20, 50, 60]
    ck.close()

    cfg_min = dataclasses.replace(cfg, best_metric="loss", best_mode="min")
    ck = ckpt_lib.Checkpointer(str(tmp_path / "ck_min"), cfg_min)
    for step, loss in ((1, 3.0), (2, 1.0), (3, 2.0), (4, 2.5)):
        ck.save(step, state, data.get_state(), metrics={"loss": loss})
    ck.wait()
    assert ck.all_steps() == [2, 3, 4]
    ck.close()


def test_partial_save_is_ignored_and_cleaned(tmp_path):
    """What a SIGKILL during a save leaves (a step directory still under its temporary name) is never read as a
    checkpoint: the previous one restores, and the next manager removes the debris."""
    state, shardings, data, _ = trained_state(1, steps=1)
    directory = tmp_path / "ck"
    ck = ckpt_lib.Checkpointer(str(directory), CheckpointConfig(keep=3, keep_best=0, async_save=False))
    ck.save(5, state, data.get_state())
    ck.close()
    partial = directory / "10.orbax-checkpoint-tmp-1234"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "garbage").write_bytes(os.urandom(64))

    ck = ckpt_lib.Checkpointer(str(directory), CheckpointConfig(keep=3, keep_best=0, async_save=False))
    assert ck.latest_step() == 5 and ck.all_steps() == [5]
    restored, data_state, step = ck.restore(ckpt_lib.abstract_like(state, shardings))
    ck.close()
    assert step == 5 and data_state["position"] == 1
    for a, b in zip(leaves(restored), leaves(state)):
        np.testing.assert_array_equal(a, b)
    assert not partial.exists()


def test_restore_without_checkpoint_names_the_directory(tmp_path):
    ck = ckpt_lib.Checkpointer(str(tmp_path / "empty"), CheckpointConfig(async_save=False))
    with pytest.raises(FileNotFoundError, match="no checkpoint in .*empty"):
        ck.restore(None)
    ck.close()
