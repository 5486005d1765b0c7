"""``distill-jax`` command line: a thin dispatcher over one small argparse module per subcommand
(``distill_jax.cli.<name>``, each exposing ``main(argv) -> int`` with ``argv`` after the command name).
Library modules take arguments, never argv.

Errors a user can act on (bad data, bad config, a missing file) print as one line naming what is wrong and exit
with code 2; ``--debug`` (before the command) shows the traceback instead.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, one-line help). Modules are imported only when their subcommand runs.
COMMANDS = {
    "mine": ("distill_jax.cli.mine", "mine hard negatives (BM25 or a trained student) for a BEIR collection"),
    "import-scores": ("distill_jax.cli.import_scores", "convert public teacher-score files to a dataset"),
    "train-teacher": ("distill_jax.cli.train_teacher", "fine-tune a cross-encoder teacher on hard negatives"),
    "side-features": ("distill_jax.cli.side_features", "per-passage side information for a teacher column"),
    "score": ("distill_jax.cli.score", "score candidate lists with a teacher: the answer key"),
    "train": ("distill_jax.cli.train", "train a student from a config (resumes from its work directory)"),
    "retrieve": ("distill_jax.cli.retrieve", "retrieve (or rerank) a BEIR split with a student: a TREC run"),
    "evaluate": ("distill_jax.cli.evaluate", "retrieval / reranking evaluation of TREC runs"),
    "export": ("distill_jax.cli.export", "export a training run for serving (PyLate / sentence-transformers / HF)"),
    "run": ("distill_jax.cli.run", "the whole job: mine, teacher, score, students, retrieve, evaluate, export"),
}


def _usage() -> str:
    lines = ["usage: distill-jax [--debug] COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<14} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "distill-jax COMMAND --help shows a command's arguments."]
    return "\n".join(lines)


def _user_errors() -> tuple[type[BaseException], ...]:
    from distill_jax.config import ConfigError
    from distill_jax.data.collections import DataError

    return (DataError, ConfigError, OSError)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv[:1]
    if debug:
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"distill-jax: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    run = module.main
    if debug:
        return int(run(rest) or 0)
    try:
        return int(run(rest) or 0)
    except _user_errors() as e:
        print(f"distill-jax {name}: {type(e).__name__}: {e}", file=sys.stderr)
        print("(run `distill-jax --debug ...` for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
