"""Every config file loads (default and tiny variants), documents its run command, imports no jax; overrides
convert types and reject unknown keys with the known ones listed."""

import dataclasses
import glob
import os
import subprocess
import sys

import pytest

from distill_jax.config import (LossConfig, TrainConfig, apply_overrides, load_config, student_recipe,
                                tiny_variant, validate)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))
RECIPES = {"colbert_margin_mse": ("colbert", "margin_mse"), "colbert_kl": ("colbert", "kl"),
           "splade_mse_flops": ("splade", "mse"), "splade_margin_mse": ("splade", "margin_mse"),
           "dense_margin_mse": ("dense", "margin_mse"), "colbert_infonce": ("colbert", "infonce"),
           "splade_infonce": ("splade", "infonce"), "dense_infonce": ("dense", "infonce")}


def test_every_recipe_exists():
    names = {os.path.basename(p)[:-3] for p in CONFIGS}
    assert set(RECIPES) | {"tiny"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.basename(p))
def test_config_loads_with_tiny_variant(path):
    name = os.path.basename(path)[:-3]
    with open(path) as f:
        source = f.read()
    if "RunConfig" in source:  # the main job's configs (distill-jax run): tests/test_run.py loads and checks them
        return
    if name not in RECIPES and name != "tiny":  # other commands' configs (e.g. train-teacher) share the format
        assert f"configs/{name}.py" in source and isinstance(load_config(f"{path}:tiny"), TrainConfig)
        return
    assert f"distill-jax train configs/{name}.py" in source  # the run command is in the docstring
    tiny = load_config(f"{path}:{'colbert' if name == 'tiny' else 'tiny'}")
    assert isinstance(tiny, TrainConfig) and tiny.data.source == "synthetic" and tiny.model.hidden_size <= 64
    if name == "tiny":
        return
    full = load_config(path, ["data.dataset_dir=/data/x"])
    assert (full.model.kind, full.loss.name) == RECIPES[name]
    assert (tiny.model.kind, tiny.loss.name) == RECIPES[name]
    assert full.model.checkpoint == "sentence-transformers/all-MiniLM-L6-v2"
    if full.loss.name == "infonce":
        assert full.loss.in_batch
    if name.startswith("splade") and name != "splade_mse_noreg":
        assert full.loss.regularizer_d == "flops" and full.loss.lambda_d > 0 and full.loss.reg_warmup_steps > 0


def test_splade_mse_flops_has_both_lambdas_and_quadratic_warmup():
    cfg = load_config(os.path.join(ROOT, "configs/splade_mse_flops.py"), ["data.dataset_dir=/d"])
    assert cfg.loss.regularizer_q == cfg.loss.regularizer_d == "flops"
    assert (cfg.loss.lambda_q, cfg.loss.lambda_d) == (0.1, 0.08)


def test_overrides_convert_types():
    cfg = student_recipe("x", "colbert", LossConfig())
    cfg = apply_overrides(cfg, ["optim.learning_rate=3e-5", "steps=1e3", "model.remat=true", "model.dtype=bfloat16",
                                "loss.hp={\"temperature\": 0.5}", "loss.hp.all_pairs=True", "eval.metrics=nDCG@10",
                                "optim.lr_multipliers.classifier=10", "name=run=1"])
    assert cfg.optim.learning_rate == 3e-5 and cfg.steps == 1000 and cfg.model.remat is True
    assert cfg.model.dtype == "bfloat16" and cfg.name == "run=1"
    assert cfg.loss.hp == {"temperature": 0.5, "all_pairs": True}
    assert cfg.eval.metrics == ("nDCG@10",) and cfg.optim.lr_multipliers == {"classifier": 10}
    assert dataclasses.is_dataclass(cfg) and cfg.data.batch_size == 32  # untouched fields keep their values


@pytest.mark.parametrize("item, message", [
    ("optim.lr=1", r"unknown config key 'lr' .*learning_rate"),
    ("optimizer.learning_rate=1", r"unknown config key 'optimizer' .*optim"),
    ("steps=1.5", r"cannot convert to int"),
    ("model.remat=maybe", r"cannot convert to bool"),
    ("optim=1", r"group of settings"),
    ("steps", r"expected KEY=VALUE"),
])
def test_override_errors(item, message):
    with pytest.raises((KeyError, ValueError), match=message):
        apply_overrides(student_recipe("x", "colbert", LossConfig()), [item])


def test_validate_names_the_field():
    cfg = tiny_variant(student_recipe("x", "colbert", LossConfig()))
    with pytest.raises(ValueError, match=r"model.kind = 'bert'"):
        validate(apply_overrides(cfg, ["model.kind=bert"]))
    with pytest.raises(ValueError, match=r"batch_size 8 is not divisible by optim.grad_accum 3"):
        validate(apply_overrides(cfg, ["optim.grad_accum=3"]))
    with pytest.raises(ValueError, match=r"regularizer.*SPLADE"):
        validate(apply_overrides(cfg, ["loss.regularizer_d=flops"]))
    with pytest.raises(ValueError, match=r"data.dataset_dir is empty"):
        load_config(os.path.join(ROOT, "configs/colbert_kl.py"))


def test_config_module_imports_no_jax():
    code = ("import sys; import distill_jax.config as c; c.load_config('configs/splade_mse_flops.py:tiny'); "
            "print('jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
