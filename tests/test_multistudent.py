"""Multi-student single pass: ColBERT and SPLADE in one step from one batch equal the two single-student steps
run separately (losses and updates within 1e-5); both trained, checkpointed together, bit-exact resume, 8 == 1."""

import jax
import numpy as np

from distill_jax.train import checkpoint as ckpt_lib
from test_objectives import check_eight_equal_one, check_trains_and_resumes, run_steps, tiny
from test_step import assert_same, fast_compiles  # noqa: F401  (fast_compiles: autouse)


def test_multi_student_step_equals_the_single_student_steps():
    cfg = tiny("colbert_splade_multistudent")
    params, metrics = run_steps(cfg, 8, steps=2)
    assert set(params) == {"colbert", "splade"}
    for name, single in cfg.student_configs():
        alone_params, alone = run_steps(single, 8, steps=2)
        for a, b in zip(metrics, alone):
            for k in ("loss", "grad_norm", "loss_main") + (("reg_doc", "nnz_doc") if name == "splade" else ()):
                np.testing.assert_allclose(a[f"{name}/{k}"], b[k], rtol=1e-5, atol=1e-6, err_msg=f"{name}/{k}")
        assert_same(params[name], alone_params)
    np.testing.assert_allclose(metrics[-1]["loss"], metrics[-1]["colbert/loss"] + metrics[-1]["splade/loss"],
                               rtol=1e-6)


def test_multi_student_eight_devices_equal_one():
    check_eight_equal_one(tiny("colbert_splade_multistudent"), keys=("loss", "colbert/loss", "splade/loss"))


def test_multi_student_recipe_trains_checkpoints_together_and_resumes(tmp_path):
    ref = check_trains_and_resumes(tmp_path, "colbert_splade_multistudent", fall=0.9)  # SPLADE margins fall slowly
    last = ref["last_metrics"]
    assert {"colbert/loss", "splade/loss", "colbert/spearman", "splade/spearman"} <= set(last)
    params, step, saved = ckpt_lib.restore_params(str(tmp_path / "ref"))
    assert set(params) == {"colbert", "splade"} and step == 24 and [s.name for s in saved.students] == [
        "colbert", "splade"]
    for name in ("colbert", "splade"):
        for x, y in zip(jax.tree.leaves(params[name]), jax.tree.leaves(jax.device_get(ref["state"].params[name]))):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
