"""Smoke test of scripts/bench.py: the MaxSim KD line at --quick shapes, both sides in their own processes."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SIDE_FIELDS = ("step_s_median", "step_s_min", "step_s_max", "examples_per_s", "mfu", "peak_rss_gb", "compile_s",
               "first_call_s_median", "model_tflops_per_call", "times_s", "load_avg_1m")


def test_bench_quick_maxsim(tmp_path):
    pytest.importorskip("pylate")
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "bench.py"), "--quick", "--only",
                           "maxsim-kd", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    for key in ("command", "date", "machine", "load_avg_start", "load_avg_end", "matmul_peak", "lines"):
        assert key in r, key
    assert r["matmul_peak"]["jax_tflops_start"] > 0 and r["matmul_peak"]["torch_tflops_start"] > 0
    line = r["lines"]["maxsim-kd"]
    for side in ("ours", "peer"):
        missing = [f for f in SIDE_FIELDS if f not in line[side]]
        assert not missing, (side, missing)
        assert line[side]["step_s_median"] > 0 and line[side]["peak_rss_gb"] > 0.05
    assert line["ratio"] == pytest.approx(line["ours"]["examples_per_s"] / line["peer"]["examples_per_s"])
    # Both sides scored the same vectors: distill_jax.scoring.maxsim == pylate.scores.colbert_kd_scores.
    assert line["agreement"]["agree"], line["agreement"]
    assert line["agreement"]["max_abs_score_diff"] < 1e-4
    assert "| maxsim-kd |" in proc.stdout  # the markdown table


def test_bench_gpu_lines_run_at_quick_shapes_on_a_cpu(tmp_path, shared_data):
    """The --gpu mode (../shared/GPU.md lines, bf16, random weights from a pack) end to end at --quick shapes, so
    the script a GPU session runs is known to work before a device is lent: the pack holds the tokenizer and the
    teacher's text pairs, both sides load the same random weights, and the teacher scores agree at bf16."""
    pytest.importorskip("sentence_transformers")
    pack, out = tmp_path / "pack", tmp_path / "gpu.json"
    script = os.path.join(REPO, "scripts", "bench.py")
    proc = subprocess.run([sys.executable, script, "--gpu-pack", str(pack), "--collection",
                           str(shared_data / "scifact")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (pack / "tokenizer" / "vocab.txt").is_file()
    pairs = json.loads((pack / "pairs-4096.json").read_text())
    assert len(pairs["queries"]) == len(pairs["passages"]) == 4096
    proc = subprocess.run([sys.executable, script, "--gpu", "--pack", str(pack), "--quick", "--only",
                           "gpu-splade-minilm-16x2", "gpu-teacher-minilm", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert set(r["lines"]) == {"gpu-splade-minilm-16x2", "gpu-teacher-minilm"}
    for name, line in r["lines"].items():
        assert line["spec"]["dtype"] == "bfloat16" and line["reference"] and line["target"] > 1
        for side in ("ours", "peer"):
            assert "error" not in line[side], (name, side, line[side])
            assert line[side]["step_s_median"] > 0 and line[side]["device"]
            assert line[side]["device_peak_gb"] is None  # no accelerator here: host RSS only
        assert line["ratio"] == pytest.approx(line["ours"]["examples_per_s"] / line["peer"]["examples_per_s"])
    teacher = r["lines"]["gpu-teacher-minilm"]
    assert teacher["agreement"]["agree"] and teacher["agreement"]["tolerance"] == 5e-2, teacher["agreement"]
    assert "| gpu-splade-minilm-16x2 |" in proc.stdout and "target >= 8.0x" in proc.stdout
