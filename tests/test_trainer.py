"""The training loop: bit-exact resume after SIGKILL, one compile per run, loss falls, the non-finite policy stops
with the step number, CLI overrides, validation hook + best checkpoint."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from distill_jax.config import load_config
from distill_jax.train import checkpoint as ckpt_lib
from distill_jax.train import state as state_lib
from distill_jax.train.metrics import read_jsonl
from distill_jax.cli import main as cli_main
from distill_jax.eval.rerank import validator
from distill_jax.train.trainer import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True, scope="module")
def fast_compiles():
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", False)


def _env():
    env = dict(os.environ)
    env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "true"  # same flags in every process: bit-exact comparisons
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _overrides(workdir, steps, every):
    return [f"workdir={workdir}", f"steps={steps}", f"checkpoint.every_steps={every}", "checkpoint.keep=2",
            "checkpoint.async_save=true", "log_every=1", "model.num_layers=1"]


def _cmd(workdir, steps, every):
    return [sys.executable, "-m", "distill_jax.cli", "train", "configs/tiny.py:splade", "--set",
            *_overrides(workdir, steps, every)]


def _losses(workdir):
    """{step: loss} with the LAST line of each step (a resumed run re-logs the steps after its checkpoint)."""
    return {r["step"]: r["loss"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "loss" in r}


def _final_params(workdir):
    cfg = load_config("configs/tiny.py:splade", ["model.num_layers=1"])
    model, _, _ = state_lib.make_model(cfg)
    tx = state_lib.make_optimizer(cfg.optim, 10)
    from distill_jax import distributed

    mesh = distributed.make_mesh(devices=jax.devices()[:1])
    abstract, shardings = state_lib.state_shardings(model, tx, mesh)
    ck = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), cfg.checkpoint)
    state, data_state, step = ck.restore(ckpt_lib.abstract_like(abstract, shardings))
    ck.close()
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state))], data_state, step


def run_kill_resume(tmp_path, steps: int, every: int):
    ref, broken = tmp_path / "ref", tmp_path / "broken"
    # The reference runs in this process (same XLA flags and optimisation setting as the subprocesses).
    train(load_config("configs/tiny.py:splade", _overrides(ref, steps, every)))

    kill_at = random.Random().randrange(every + 1, steps - 2)  # after the first checkpoint, before the end
    proc = subprocess.Popen(_cmd(broken, steps, every), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    metrics = broken / "metrics.jsonl"
    deadline = time.time() + max(300, 2 * steps)  # a loaded 2-core machine runs a tiny step in ~0.5 s
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and max(_losses(broken), default=0) >= kill_at:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run ended (rc {proc.returncode}) before the kill at {kill_at}"
    killed_after = max(_losses(broken))

    resumed = subprocess.run(_cmd(broken, steps, every), cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a, b = _losses(ref), _losses(broken)
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    bad = [s for s in a if a[s] != b[s]]  # bit-exact: float32 losses written as exact decimals
    assert not bad, f"killed after step {killed_after} (aimed at {kill_at}); losses differ at steps {bad[:10]}"
    ref_leaves, ref_data, ref_step = _final_params(ref)
    new_leaves, new_data, new_step = _final_params(broken)
    assert ref_step == new_step == steps and ref_data == new_data
    for x, y in zip(ref_leaves, new_leaves):
        np.testing.assert_array_equal(x, y)
    return killed_after


def test_resume_after_sigkill_is_bit_exact(tmp_path):
    """Uninterrupted run vs a run SIGKILLed at a random step after a checkpoint (async saves every 5 steps, so
    the kill may land mid-save) then resumed: identical loss at every step and identical final state."""
    run_kill_resume(tmp_path, steps=30, every=5)


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_resume_after_sigkill_is_bit_exact_2k_steps(tmp_path):
    run_kill_resume(tmp_path, steps=2000, every=100)


def test_resume_is_bit_exact_with_remat_masks_and_rbg_dropout(tmp_path):
    """A run with the "dots_masks" remat policy and rbg dropout keys, resumed from its step-4 checkpoint (the
    step-8 one deleted), repeats steps 5-8 bitwise: the rbg key data (4 words) is checkpointed and restored."""
    import shutil

    over = ["model.num_layers=1", "steps=8", "log_every=1", "checkpoint.every_steps=4", "checkpoint.keep=3",
            "checkpoint.async_save=false", "model.remat=true", "model.remat_policy=dots_masks", "dropout_prng=rbg"]
    ref = train(load_config("configs/tiny.py:colbert", [f"workdir={tmp_path / 'ref'}", *over]))
    shutil.copytree(tmp_path / "ref", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "8")
    cut = train(load_config("configs/tiny.py:colbert", [f"workdir={tmp_path / 'cut'}", *over]))
    assert cut["start_step"] == 4 and sorted(cut["losses"]) == [5, 6, 7, 8]
    assert cut["losses"] == {s: ref["losses"][s] for s in range(5, 9)}
    assert np.asarray(ref["state"].rng).shape == (4,)  # an rbg key really was the dropout key
    for a, b in zip(jax.tree.leaves(jax.device_get(ref["state"])), jax.tree.leaves(jax.device_get(cut["state"]))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_one_compile_per_run_and_loss_falls(tmp_path):
    cfg = load_config("configs/tiny.py:colbert", [f"workdir={tmp_path}", "steps=60", "log_every=10",
                                                  "model.num_layers=1", "checkpoint.every_steps=30",
                                                  "checkpoint.async_save=true", "tensorboard=true"])
    out = train(cfg)
    assert out["compiles"] == 1  # the train step compiled once for the whole run (and across a checkpoint)
    losses = out["losses"]
    first, last = np.mean([losses[s] for s in range(1, 11)]), np.mean([losses[s] for s in range(51, 61)])
    assert last < 0.7 * first, (first, last)
    rows = read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
    assert [r["step"] for r in rows] == [10, 20, 30, 40, 50, 60]
    assert rows[-1]["spearman"] > rows[0]["spearman"]  # the student agrees more with the (overlap) teacher
    for key in ("loss", "loss_main", "grad_norm", "learning_rate", "examples_per_s", "tokens_per_s", "spearman"):
        assert key in rows[-1]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))


def test_nonfinite_loss_raises_with_the_step(tmp_path):
    # An absurd learning rate blows the parameters up after the first update: step 2 is the first non-finite.
    cfg = load_config("configs/tiny.py:dense", [f"workdir={tmp_path}", "steps=20", "model.num_layers=1",
                                                "optim.learning_rate=1e30", "optim.warmup_steps=0",
                                                "optim.clip_norm=0", "checkpoint.every_steps=0"])
    with pytest.raises(FloatingPointError, match=r"non-finite loss or gradient at step [2-5]\b"):
        train(cfg)
    ck = ckpt_lib.Checkpointer(os.path.join(tmp_path, "checkpoints"), cfg.checkpoint)
    assert ck.latest_step() is None  # nothing past the bad step was ever saved
    ck.close()


def test_nonfinite_skip_policy_keeps_going(tmp_path):
    cfg = load_config("configs/tiny.py:dense", [f"workdir={tmp_path}", "steps=6", "model.num_layers=1",
                                                "optim.learning_rate=1e30", "optim.warmup_steps=0",
                                                "optim.clip_norm=0", "optim.nonfinite=skip",
                                                "checkpoint.every_steps=0", "log_every=1"])
    out = train(cfg)
    assert int(out["state"].skipped) >= 4 and int(out["state"].step) == 6
    for leaf in jax.tree.leaves(out["state"].params):
        assert np.all(np.isfinite(np.asarray(leaf)))


def test_cli_overrides_and_errors(capsys, tmp_path):
    assert cli_main(["train", "configs/tiny.py", "--print-config", "--set", "optim.learning_rate=5e-4",
                     "steps=7", "loss.hp.temperature=2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["optim"]["learning_rate"] == 5e-4 and printed["steps"] == 7
    assert printed["loss"]["hp"] == {"temperature": 2}
    assert cli_main(["train", "configs/tiny.py", "--set", "optim.lr=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'lr'" in err and "learning_rate" in err
    assert cli_main(["train", "configs/tiny.py", "--set", "steps=many"]) == 2
    assert "cannot convert to int" in capsys.readouterr().err


def test_validation_hook_ranks_checkpoints(tmp_path, shared_data, minilm_dir):
    """Reranking nDCG@10 on held-out scifact queries is logged and ranks checkpoints (best kept beside the last)."""
    cfg = load_config("configs/tiny.py:colbert", [
        f"workdir={tmp_path}", "steps=6", "model.num_layers=1", "model.vocab_size=30522",
        f"data.tokenizer={minilm_dir}", "eval.every_steps=2", f"eval.collection_dir={shared_data / 'scifact'}",
        "eval.split=test", "eval.max_queries=16", "eval.depth=8", "data.query_maxlen=32", "checkpoint.every_steps=2",
        "checkpoint.keep=1", "checkpoint.keep_best=1", "checkpoint.async_save=false", "log_every=2"])
    out = train(cfg, validator=validator)
    rows = [r for r in read_jsonl(os.path.join(tmp_path, "metrics.jsonl")) if "val/nDCG@10" in r]
    assert [r["step"] for r in rows] == [2, 4, 6]
    values = {r["step"]: r["val/nDCG@10"] for r in rows}
    assert all(0.0 <= v <= 1.0 for v in values.values())
    assert out["validation"]["nDCG@10"] == values[6]
    best = max(values, key=lambda s: (values[s], -s))
    ck = ckpt_lib.Checkpointer(os.path.join(tmp_path, "checkpoints"), cfg.checkpoint)
    assert ck.all_steps() == sorted({best, 6})
    ck.close()


def test_check_mse_targets_warns_on_targets_splade_cannot_reach(caplog):
    """A SPLADE score is >= 0: raw cross-encoder logits (mostly negative) as MSE targets get a warning naming the
    fix; shifted targets, margin losses and other student kinds do not."""
    from distill_jax.train.trainer import check_mse_targets

    batch = {"teacher_scores": np.array([[6.0, -7.0, -8.0, 9.0], [5.0, -2.0, 0.5, -9.0]], np.float32),
             "mask": np.array([[1, 1, 1, 0], [1, 1, 1, 1]], np.float32),  # the 9.0 is padding
             "weight": np.array([1.0, 1.0], np.float32)}
    raw = load_config("configs/splade_mse_flops.py:tiny", [])
    with caplog.at_level("WARNING", logger="distill_jax.train.trainer"):
        assert check_mse_targets(raw, batch) == pytest.approx(4 / 7)
    assert "teacher_shift" in caplog.text and "min -9.00" in caplog.text
    caplog.clear()
    shifted = load_config("configs/splade_mse_flops.py:tiny", ['loss.hp={"teacher_shift": 9.0}'])
    scaled = load_config("configs/splade_mse_flops.py:tiny", ['loss.hp={"teacher_scale": 0.5, "teacher_shift": 4.5}'])
    with caplog.at_level("WARNING", logger="distill_jax.train.trainer"):
        assert check_mse_targets(shifted, batch) == 0.0
        assert check_mse_targets(scaled, batch) == pytest.approx(0.0)
        assert check_mse_targets(load_config("configs/splade_margin_mse.py:tiny", []), batch) == 0.0
        assert check_mse_targets(load_config("configs/colbert_margin_mse.py:tiny", ["loss.name=mse"]), batch) == 0.0
    assert caplog.text == ""


def test_start_end_follows_losses_agreement_and_validation_only():
    from distill_jax.train.metrics import format_start_end, start_end

    rows = [{"step": 10, "loss": 9.0, "loss_mean": 2.0, "loss_kl": 0.5, "spearman": 0.25, "grad_norm": 3.0,
             "learning_rate": 1e-4, "examples_per_s": 5.0, "nonfinite": 0.0, "colbert/spearman": 0.1,
             "colbert/loss": 3.0, "colbert/grad_norm": 9.0, "colbert/tokens": 99.0, "splade/lambda_doc": 0.1},
            {"step": 20, "val/ndcg@10": 0.3},
            {"step": 20, "loss": 1.0, "loss_mean": 1.5, "loss_kl": 0.75, "spearman": 0.5, "grad_norm": 1.0,
             "learning_rate": 5e-5, "examples_per_s": 6.0, "nonfinite": 0.0, "colbert/spearman": 0.4,
             "colbert/loss": 2.0, "colbert/grad_norm": 8.0, "colbert/tokens": 98.0, "splade/lambda_doc": 0.2},
            {"step": 30, "val/ndcg@10": 0.45}]
    changes = start_end(rows)
    assert changes == {"loss_mean": (10, 2.0, 20, 1.5), "loss_kl": (10, 0.5, 20, 0.75),
                       "spearman": (10, 0.25, 20, 0.5), "colbert/spearman": (10, 0.1, 20, 0.4),
                       "colbert/loss": (10, 3.0, 20, 2.0),
                       "val/ndcg@10": (20, 0.3, 30, 0.45)}
    lines = format_start_end(changes)
    assert lines[0] == "colbert/loss          3.0000 (step 10) ->     2.0000 (step 20)  -1.0000"
    assert "loss_mean             2.0000 (step 10) ->     1.5000 (step 20)  -0.5000" in lines
    assert start_end([]) == {} and format_start_end({}) == []


def test_cli_train_prints_start_to_end_of_its_metrics(capsys, tmp_path):
    assert cli_main(["train", "configs/tiny.py:colbert", "--set", f"workdir={tmp_path}", "steps=20",
                     "log_every=5", "model.num_layers=1", "checkpoint.every_steps=0", "progress=false"]) == 0
    out = capsys.readouterr().out
    rows = read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    summary = out[out.index("start -> end"):].splitlines()[1:]
    printed = {line.split()[0]: line.split() for line in summary}
    assert set(printed) == {"loss_mean", "loss_main", "spearman"}
    for key, fields in printed.items():  # name, start, (step, 5), ->, end, (step, 20), change
        assert float(fields[1]) == pytest.approx(rows[0][key], abs=1e-4)
        assert float(fields[5]) == pytest.approx(rows[-1][key], abs=1e-4)
        assert fields[3] == "5)" and fields[7] == "20)"
    assert float(printed["loss_mean"][5]) < float(printed["loss_mean"][1])  # the tiny run learns
