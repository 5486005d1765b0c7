"""Model, optimiser and the train state, born sharded on the mesh.

The state is a pytree (:class:`TrainState`) of plain arrays: what the step transforms, what orbax saves. Its
shardings come from the parameters' logical axis names (``eval_shape`` of a boxed init -> logical specs ->
``distributed.LOGICAL_RULES``), and a jitted init with those ``out_shardings`` allocates every array directly
where it lives: no host-side copy of the full model on any device.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, NamedTuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from distill_jax import distributed, kinds
from distill_jax.config import ModelConfig, OptimConfig, TrainConfig, base_checkpoint
from distill_jax.models import EncoderConfig, build_model, dummy_batch, init_params, load_pretrained, select_layers
from distill_jax.models.hf import resolve_checkpoint_dir, transformer_dir

log = logging.getLogger(__name__)

class TrainState(flax.struct.PyTreeNode):
    """Everything a step reads and writes.

    Attributes:
      step: int32 scalar, optimiser steps taken.
      params: model parameters (float32 master copy).
      opt_state: optax state.
      rng: uint32 [2] raw PRNG key data; dropout at step t uses ``fold_in(rng, t)``.
      skipped: int32 scalar, updates skipped for a non-finite loss or gradient.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    skipped: jax.Array


# ---------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------


def encoder_config(cfg: ModelConfig) -> EncoderConfig:
    """Geometry of a randomly initialised encoder."""
    return EncoderConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
                         num_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
                         max_position_embeddings=cfg.max_position_embeddings, hidden_dropout=cfg.dropout,
                         attention_dropout=cfg.dropout)


def saved_geometry(cfg: TrainConfig, params: dict) -> tuple[EncoderConfig, str | None]:
    """(encoder geometry, base directory or None) of a trained student's ``params`` with its run's ``cfg``: the
    base checkpoint's geometry (:func:`distill_jax.config.base_checkpoint`) with the number of layers the params
    hold when the run selected layers (``model.init_layers``), else ``model``'s own fields for a random start."""
    base = base_checkpoint(cfg)
    base = resolve_checkpoint_dir(base) if base else None
    if not base:
        return encoder_config(cfg.model), None
    enc = EncoderConfig.from_pretrained_dir(transformer_dir(base))
    if cfg.model.init_layers:
        enc = dataclasses.replace(enc, num_layers=sum(1 for k in params["encoder"] if k.startswith("layer_")))
    return enc, base


def compute_dtype(m: ModelConfig):
    return jnp.bfloat16 if m.dtype == "bfloat16" else jnp.float32


def starting_weights(m: ModelConfig, data_cfg, seed: int, directory_options: bool = False
                     ) -> tuple[nn.Module, EncoderConfig, dict | None]:
    """The model ``m`` describes and the weights it starts from, ``model.init_layers`` applied.

    Sources: ``m.checkpoint`` empty (random: the parameters are None, the caller initialises them); a
    ``distill-jax train`` work directory (its best, else latest, checkpoint, with the geometry and head options
    it was trained with); a Hugging Face / exported directory (:func:`distill_jax.models.load_pretrained`; build
    options from ``m``, or with ``directory_options`` only those the directory states, as a frozen teacher
    wants).

    Returns:
      (model, encoder geometry, parameters as host arrays or None).

    Raises:
      ValueError: a work directory of another kind or of several students, layers it does not have.
    """
    from distill_jax.train.checkpoint import restore_params

    dtype = compute_dtype(m)
    options = kinds.get(m.kind).model_options(m, data_cfg)
    if not m.checkpoint:
        enc = encoder_config(m)
        return build_model(m.kind, enc, dtype=dtype, remat=m.encoder_remat, **options), enc, None
    if os.path.isdir(os.path.join(m.checkpoint, "checkpoints")):
        params, step, saved = restore_params(m.checkpoint)
        if saved.students:
            names = ", ".join(s.name for s in saved.students)
            raise ValueError(f"{m.checkpoint} holds several students ({names}); export the one to start from and "
                             "point the checkpoint at its directory")
        if saved.model.kind != m.kind:
            raise ValueError(f"checkpoint {m.checkpoint} holds a {saved.model.kind}, not a {m.kind}")
        enc = (EncoderConfig.from_pretrained_dir(transformer_dir(resolve_checkpoint_dir(saved.model.checkpoint)))
               if saved.model.checkpoint else encoder_config(saved.model))  # the geometry it was trained with
        enc, params = _initial_layers(m, enc, params)
        model = build_model(m.kind, enc, dtype=dtype, remat=m.encoder_remat,
                            **kinds.get(m.kind).model_options(saved.model, data_cfg))
        log.info("weights of %s: %s step %d", m.kind, m.checkpoint, step)
        return model, enc, params
    model, params = load_pretrained(m.kind, m.checkpoint, dtype=dtype, remat=m.encoder_remat, seed=seed,
                                    allow_pickle=m.allow_pickle, fresh_head=(m.splade_head_z, m.splade_head_scale),
                                    **({} if directory_options else options))
    enc, params = _initial_layers(m, model.cfg, jax.device_get(params))
    return model.clone(cfg=enc), enc, params


def _initial_layers(m: ModelConfig, enc: EncoderConfig, params):
    return select_layers(enc, params, m.init_layers) if m.init_layers else (enc, params)


def make_model(cfg: TrainConfig) -> tuple[nn.Module, EncoderConfig, dict | None]:
    """Builds the student; loads its starting weights (``model.checkpoint``, or the teacher's with
    ``teacher.init_student``: the teacher's model with ``model.init_layers`` of its layers, the student's own
    dropout, dtype and remat).

    Returns:
      (model, encoder geometry, pretrained params as host arrays or None).
    """
    m = cfg.model
    if not cfg.teacher.init_student:
        return starting_weights(m, cfg.data, cfg.seed)
    teacher, enc, params = teacher_weights(cfg)
    enc = dataclasses.replace(enc, hidden_dropout=m.dropout, attention_dropout=m.dropout)
    enc, params = _initial_layers(m, enc, params)
    return teacher.clone(cfg=enc, dtype=compute_dtype(m), remat=m.encoder_remat), enc, params


# ---------------------------------------------------------------------------------------------------------------
# Optimiser
# ---------------------------------------------------------------------------------------------------------------


def learning_rate_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 to the peak, then linear / cosine decay to ``end_factor`` x peak (or constant)."""
    peak, warm = cfg.learning_rate, max(cfg.warmup_steps, 0)
    decay_steps = max(total_steps - warm, 1)
    if cfg.schedule == "constant":
        after = optax.constant_schedule(peak)
    elif cfg.schedule == "linear":
        after = optax.linear_schedule(peak, peak * cfg.end_factor, decay_steps)
    else:
        after = optax.cosine_decay_schedule(peak, decay_steps, alpha=cfg.end_factor)
    if not warm:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warm), after], [warm])


def decay_mask(params: Any) -> Any:
    """True for parameters that get weight decay: not biases, not LayerNorm scales/offsets (BERT practice)."""

    def wants_decay(path, _):
        # DictKey names only: a logical-axis box (``Partitioned.value``) adds an attribute key to the path.
        names = [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)]
        return not (names[-1] == "bias" or any("LayerNorm" in n for n in names))

    return jax.tree_util.tree_map_with_path(wants_decay, params)


def scale_by_group(multipliers: dict[str, float]) -> optax.GradientTransformation:
    """Multiplies each update by the factor of its top-level parameter group (1 for groups not named).

    After AdamW this is a per-group learning rate (the decoupled weight decay scales with it, as it would with a
    larger learning rate). Unknown group names fail when the optimiser state is first built.
    """
    multipliers = {str(k): float(v) for k, v in multipliers.items()}

    def init(params):
        groups = set(params) if isinstance(params, dict) else set()
        unknown = sorted(set(multipliers) - groups)
        if unknown:
            raise ValueError(f"optim.lr_multipliers names {unknown}, not parameter groups of this model: "
                             f"{sorted(groups)}")
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        return {k: (jax.tree_util.tree_map(lambda u, f=multipliers[k]: u * f, v) if k in multipliers else v)
                for k, v in updates.items()}, state

    return optax.GradientTransformation(init, update)


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """Global-norm clipping, AdamW (decoupled weight decay on :func:`decay_mask`), per-group learning-rate factors."""
    parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm > 0 else []
    parts.append(optax.adamw(learning_rate_schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=decay_mask))
    if cfg.lr_multipliers:
        parts.append(scale_by_group(cfg.lr_multipliers))
    return parts[0] if len(parts) == 1 else optax.chain(*parts)


# ---------------------------------------------------------------------------------------------------------------
# The state, born sharded
# ---------------------------------------------------------------------------------------------------------------


INIT_LENGTH = 8  # token length of the shape-only batch parameters are initialised from (any length gives them)


def state_shardings(model: nn.Module, tx: optax.GradientTransformation, mesh, seed: int = 0,
                    prng_impl: str = "threefry2x32"):
    """(abstract state, state shardings): ``eval_shape`` of a boxed init, logical names -> mesh axes."""

    def boxed_init(rng):
        params = model.init(rng, dummy_batch(INIT_LENGTH, 1))["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          rng=jax.random.key_data(jax.random.key(0, impl=prng_impl)),
                          skipped=jnp.zeros((), jnp.int32))

    boxed = jax.eval_shape(boxed_init, jax.random.key(seed))
    specs = nn.get_partition_spec(boxed)
    shardings = distributed.logical_shardings(specs, mesh)
    abstract = nn.unbox(boxed)
    distributed.check_param_divisibility(abstract, shardings)
    return abstract, shardings


def create_state(model: nn.Module, tx: optax.GradientTransformation, mesh, seed: int,
                 pretrained: dict | None = None, prng_impl: str = "threefry2x32") -> tuple[TrainState, TrainState]:
    """A fresh train state allocated with its shardings (parameters replaced by ``pretrained`` if given).

    Args:
      prng_impl: the dropout keys' PRNG (``TrainConfig.dropout_prng``); initialisation always uses threefry, so
        the parameters do not depend on it.

    Returns:
      (state, shardings): shardings is a TrainState-shaped tree of ``NamedSharding``.
    """
    abstract, shardings = state_shardings(model, tx, mesh, seed, prng_impl)
    key = jax.random.key(seed)
    init_key, dropout_key = jax.random.split(key)

    def init(rng, dropout_rng, params=None):
        if params is None:
            params = nn.unbox(model.init(rng, dummy_batch(INIT_LENGTH, 1))["params"])
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          rng=dropout_key_data(dropout_rng, prng_impl), skipped=jnp.zeros((), jnp.int32))

    if pretrained is None:
        state = jax.jit(init, out_shardings=shardings)(init_key, dropout_key)
    else:
        _check_same_tree(abstract.params, pretrained)
        params = jax.device_put(jax.tree.map(np.asarray, pretrained), shardings.params)
        state = jax.jit(init, out_shardings=shardings)(init_key, dropout_key, params)
    return state, shardings


def dropout_key_data(key: jax.Array, prng_impl: str) -> jax.Array:
    """The raw data of the dropout key kept in the state: ``key``'s own (threefry), or as many of its random bits
    as a key of ``prng_impl`` holds (rbg: 4 words)."""
    if prng_impl == "threefry2x32":
        return jax.random.key_data(key)
    shape = jax.random.key_data(jax.random.key(0, impl=prng_impl)).shape
    return jax.random.bits(key, shape, jnp.uint32)


def _check_same_tree(abstract: Any, params: Any) -> None:
    a = {jax.tree_util.keystr(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(abstract)}
    b = {jax.tree_util.keystr(p): np.shape(x) for p, x in jax.tree_util.tree_leaves_with_path(params)}
    if a != b:
        diff = sorted(set(a.items()) ^ set(b.items()))[:5]
        raise ValueError(f"pretrained parameters do not match the model (first differences: {diff})")


def count_params(params: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


# ---------------------------------------------------------------------------------------------------------------
# Several students in one state
# ---------------------------------------------------------------------------------------------------------------


class Students(NamedTuple):
    """What the step and the loop need of a run's students: one each for a one-student run, dicts by student
    name for ``cfg.students`` (one parameter set and optimiser state each, in ONE :class:`TrainState`, so they
    are checkpointed together)."""

    model: Any
    tx: Any
    schedule: Any
    state: TrainState
    shardings: TrainState
    vocab_size: int


def create_students(cfg: TrainConfig, mesh) -> Students:
    """Builds every student of ``cfg`` (:meth:`TrainConfig.student_configs`) with its own optimiser, born sharded.

    Every student starts from ``cfg.seed`` exactly as it would alone (same initialisation, same dropout key), so
    a multi-student run equals its students' single runs.

    Raises:
      ValueError: students whose vocabularies differ (they read one batch, tokenised once).
    """
    built = {}
    for name, sub in cfg.student_configs():
        model, enc, pretrained = make_model(sub)
        tx = make_optimizer(sub.optim, cfg.steps)
        state, shardings = create_state(model, tx, mesh, cfg.seed, pretrained, cfg.dropout_prng)
        built[name] = (model, tx, learning_rate_schedule(sub.optim, cfg.steps), state, shardings, enc.vocab_size)
    if not cfg.students:
        return Students(*built[""])
    vocab = {name: b[5] for name, b in built.items()}
    if len(set(vocab.values())) != 1:
        raise ValueError(f"students have vocabularies of different sizes {vocab}: they share one tokenised batch, "
                         "so they need the same tokenizer")
    pick = lambda i: {name: b[i] for name, b in built.items()}  # noqa: E731

    def merged(states):
        first = next(iter(states.values()))
        return first.replace(params={n: s.params for n, s in states.items()},
                             opt_state={n: s.opt_state for n, s in states.items()})

    return Students(pick(0), pick(1), pick(2), merged(pick(3)), merged(pick(4)), next(iter(vocab.values())))


# ---------------------------------------------------------------------------------------------------------------
# The online teacher: frozen, sharded, never in the train state
# ---------------------------------------------------------------------------------------------------------------


class Teacher(NamedTuple):
    """A frozen teacher for the step: ``kind``, ``model``, ``params`` (device arrays, placed with
    ``shardings``, in the teacher's dtype) and ``shardings`` (from its logical axis names, like a student's)."""

    kind: str
    model: nn.Module
    params: Any
    shardings: Any


def teacher_weights(cfg: TrainConfig) -> tuple[nn.Module, EncoderConfig, Any]:
    """``cfg.teacher``'s model, geometry and float32 host parameters (:func:`starting_weights` of its model; a
    teacher without checkpoint is initialised from ``teacher.seed``, with a warning)."""
    t = cfg.teacher.model
    model, enc, params = starting_weights(t, cfg.data, cfg.teacher.seed, directory_options=True)
    if params is None:
        log.warning("teacher.model.checkpoint is empty: the teacher is randomly initialised (seed %d)",
                    cfg.teacher.seed)
        params = jax.device_get(init_params(model, jax.random.key(cfg.teacher.seed), INIT_LENGTH))
    return model, enc, params


def make_teacher(cfg: TrainConfig, mesh) -> Teacher:
    """Loads ``cfg.teacher`` onto the mesh (:func:`teacher_weights`): a model of any kind from a ``distill-jax
    train`` work directory (its best, else latest, checkpoint: e.g. ``train-teacher`` output or a trained
    ColBERT), an exported / Hugging Face directory, or (no checkpoint) a random initialisation from
    ``teacher.seed`` with the geometry of ``teacher.model``. In bfloat16 the frozen parameters are stored in
    bfloat16 too (no master copy is needed for parameters that never change)."""
    model, _, params = teacher_weights(cfg)
    dtype = compute_dtype(cfg.teacher.model)
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), dummy_batch(INIT_LENGTH, 1))["params"])
    shardings = distributed.logical_shardings(nn.get_partition_spec(boxed), mesh)
    _check_same_tree(nn.unbox(boxed), params)
    params = jax.device_put(jax.tree.map(lambda x: np.asarray(x).astype(dtype), params), shardings)
    return Teacher(cfg.teacher.model.kind, model, params, shardings)
