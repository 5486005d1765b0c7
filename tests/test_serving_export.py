"""Serving exports: a run's params -> the directories PyLate / sentence-transformers load, scoring as distill-jax
does; those directories back into distill-jax bit for bit; export never deletes what it did not write.

Also :func:`distill_jax.train.checkpoint.restore_params`, which export reads runs with."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from distill_jax.config import CheckpointConfig, load_config, to_dict
from distill_jax.train import checkpoint as ckpt_lib


def _same(a, b) -> bool:
    """Equal trees, leaf for leaf, bit for bit (dtype included)."""
    if jax.tree.structure(a) != jax.tree.structure(b):
        return False
    return all(np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y)
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _saved_run(workdir: str, kind: str = "cross_encoder", steps=(2, 4)):
    """A tiny run's checkpoints as the trainer writes them: a real TrainState (params, AdamW state, step, rng)
    after optimiser updates with random gradients, saved at ``steps`` with the config in ``meta``.

    Returns:
      (params at the last step as host numpy, the config).
    """
    import optax

    from distill_jax import distributed
    from distill_jax.train import state as state_lib

    cfg = load_config(f"configs/tiny.py:{kind}")
    cfg = dataclasses.replace(cfg, workdir=workdir, checkpoint=dataclasses.replace(cfg.checkpoint, async_save=False))
    mesh = distributed.make_mesh(devices=jax.devices()[:2])
    model, _, _ = state_lib.make_model(cfg)
    tx = state_lib.make_optimizer(cfg.optim, cfg.steps)
    state, _ = state_lib.create_state(model, tx, mesh, cfg.seed)
    ck = ckpt_lib.Checkpointer(f"{workdir}/checkpoints", cfg.checkpoint, {"config": to_dict(cfg)})
    rng = np.random.default_rng(0)
    for step in range(1, max(steps) + 1):
        grads = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        state = state.replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state,
                              step=state.step + 1)
        if step in steps:
            ck.save(step, state, {"position": step})
    ck.close()
    return jax.tree.map(np.asarray, jax.device_get(state.params)), cfg


# ---------------------------------------------------------------------------------------------------------------
# restore_params
# ---------------------------------------------------------------------------------------------------------------


def test_restore_params_is_the_trained_state_bit_for_bit(tmp_path, monkeypatch):
    final, cfg = _saved_run(str(tmp_path / "run"))
    # no optimiser, no train state, no Hugging Face weights on the way
    from distill_jax.train import state as state_lib

    for name in ("make_optimizer", "create_state", "state_shardings", "make_model"):
        monkeypatch.setattr(state_lib, name, lambda *a, **k: pytest.fail("restore_params built a model/state"))
    params, step, saved = ckpt_lib.restore_params(str(tmp_path / "run"))
    assert step == 4 and saved == cfg
    assert _same(params, final)
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(params))
    earlier, step2, _ = ckpt_lib.restore_params(str(tmp_path / "run"), step=2)
    assert step2 == 2 and not _same(earlier, final)  # step 2 really is another checkpoint
    with pytest.raises(ValueError, match=r"no checkpoint for step 3; saved steps: \[2, 4\]"):
        ckpt_lib.restore_params(str(tmp_path / "run"), step=3)


def test_restore_params_picks_the_best_by_the_validation_metric(tmp_path):
    cfg = load_config("configs/tiny.py:cross_encoder")
    cfg = dataclasses.replace(cfg, checkpoint=CheckpointConfig(keep=5, keep_best=1, best_metric="nDCG@10",
                                                               best_mode="max", async_save=False))
    ck = ckpt_lib.Checkpointer(str(tmp_path / "run" / "checkpoints"), cfg.checkpoint, {"config": to_dict(cfg)})
    for step in (1, 2, 3, 4):
        ck.save(step, {"params": {"w": np.full((2, 3), step, np.float32)}, "step": np.int32(step)},
                {"position": step}, metrics={"nDCG@10": 0.1 * step} if step < 4 else None)
    ck.close()
    # The trainer's validation rows; step 3 was validated twice (a resumed run repeats it: the later row counts),
    # step 5 has no checkpoint, the last line was cut by a kill.
    rows = [{"step": 1, "val/nDCG@10": 0.30}, {"step": 2, "val/nDCG@10": 0.52}, {"step": 3, "val/nDCG@10": 0.61},
            {"step": 3, "loss": 0.2}, {"step": 3, "val/nDCG@10": 0.41}, {"step": 5, "val/nDCG@10": 0.90}]
    (tmp_path / "run" / "metrics.jsonl").write_text("\n".join(map(json.dumps, rows)) + '\n{"step": 6, "val/nD')
    params, step, _ = ckpt_lib.restore_params(str(tmp_path / "run"))
    assert step == 2 and np.array_equal(params["w"], np.full((2, 3), 2, np.float32))

    # min mode ranks the other way; with no metric at all, the latest step wins
    low = dataclasses.replace(cfg.checkpoint, best_mode="min")
    manager = ckpt_lib._read_only_manager(str(tmp_path / "run" / "checkpoints"))
    try:
        assert ckpt_lib.select_step(manager, low, str(tmp_path / "run")) == 1
        assert ckpt_lib.select_step(manager, dataclasses.replace(low, best_metric="MRR@10"),
                                    str(tmp_path / "run")) == 4
    finally:
        manager.close()


def test_restore_params_errors_name_the_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="work directory .*nope does not exist"):
        ckpt_lib.restore_params(str(tmp_path / "nope"))
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="holds no finished checkpoint"):
        ckpt_lib.restore_params(str(tmp_path / "empty"))
    (tmp_path / "file").mkdir()
    (tmp_path / "file" / "checkpoints").write_text("x")
    with pytest.raises(NotADirectoryError, match="checkpoints is a file"):
        ckpt_lib.restore_params(str(tmp_path / "file"))
