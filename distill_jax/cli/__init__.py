"""``distill-jax`` command line: a thin dispatcher. Each subcommand's arguments and logic live in its module,
which exposes ``cli_main(argv: list[str]) -> int``."""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, one-line help). Modules are imported only when their subcommand runs.
COMMANDS = {
    "mine": ("distill_jax.data.negatives", "mine hard negatives (BM25 or a trained student) for a BEIR collection"),
    "import-scores": ("distill_jax.data.teacher_scores", "convert public teacher-score files to a dataset"),
    "train-teacher": ("distill_jax.teacher", "fine-tune a cross-encoder teacher on hard negatives"),
    "score": ("distill_jax.teacher", "score candidate lists with a teacher: the answer key"),
    "train": ("distill_jax.train.trainer", "train a student from a config (resumes from its work directory)"),
    "evaluate": ("distill_jax.evaluate", "retrieval / reranking evaluation"),
    "export": ("distill_jax.export", "export a training run to a Hugging Face transformers directory"),
}


def _usage() -> str:
    lines = ["usage: distill-jax COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<14} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "distill-jax COMMAND --help shows a command's arguments."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"distill-jax: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.cli_main([name] + rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
