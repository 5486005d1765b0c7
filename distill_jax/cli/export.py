"""``distill-jax export WORKDIR --out DIR [--format native|transformers] [--step N] [--tokenizer DIR]
[--student NAME]``: a training run's checkpoint (one student of a run of several) as a directory PyLate /
sentence-transformers (native) or transformers load."""

from __future__ import annotations

import argparse
import sys

_LAYOUTS = """native layouts (the default):
  colbert        PyLate ColBERT: pylate.models.ColBERT(model_name_or_path=DIR)
  splade         sentence-transformers SparseEncoder(DIR) (MLMTransformer + SpladePooling max)
  cross_encoder  sentence-transformers CrossEncoder(DIR) (num_labels 1, the trained score activation)
  dense          SentenceTransformer(DIR) (Pooling cls/mean, Dense projection, Normalize as trained)
--format transformers: a plain Hugging Face transformers directory.

An existing --out is replaced only if it is empty or an earlier export (its distill_jax_export.json lists every
file in it); anything else, and --out inside the work directory, is refused (exit code 2)."""


def main(argv: list[str]) -> int:
    """``argv``: the arguments after ``export``. Returns the exit code (2: refused or bad input)."""
    from distill_jax.export import FORMATS, ExportRefused, export_run

    p = argparse.ArgumentParser(prog="distill-jax export", epilog=_LAYOUTS,
                                description="Export a training run's checkpoint as a directory that PyLate / "
                                            "sentence-transformers (native) or transformers load.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workdir", help="a training run's work directory (checkpoints/ inside)")
    p.add_argument("--out", required=True, help="output directory (new, empty, or an earlier export)")
    p.add_argument("--format", choices=FORMATS, default="native", help="native (default) or transformers")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: best by validation, else latest)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the run's data.tokenizer, "
                                                    "else its model.checkpoint)")
    p.add_argument("--student", default=None, help="the student to export from a run of several (its name in "
                                                   "the config's students)")
    a = p.parse_args(argv)
    try:
        out, step = export_run(a.workdir, a.out, fmt=a.format, step=a.step, tokenizer=a.tokenizer,
                               student=a.student)
    except (ExportRefused, FileNotFoundError, NotADirectoryError, ValueError) as e:
        print(f"distill-jax export: {e}", file=sys.stderr)
        return 2
    print(f"exported step {step} of {a.workdir} to {out} ({a.format})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
