"""A run's batches when one tokenisation layout is not enough: the online teacher's own groups when its layout
differs from the student's (a cross-encoder's (query, passage) pairs beside a ColBERT student's query/document
groups, a ColBERT teacher's markers beside a dense student's plain text; a teacher of the student's layout reads
the student's groups), or a second student whose layout differs (ColBERT markers vs SPLADE text).

Each extra view is the run's own loader for another model kind over the same data and seed, so record ``r`` of
step ``s`` is the same in every view (checked on every batch by the record ``index``); its token groups join the
batch under a prefix: ``teacher_pairs`` (``teacher_query``, ``teacher_docs``) for the teacher, ``<student>/query``
and ``<student>/docs`` for a student
(:func:`distill_jax.train.step.student_batch` reads them back).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from distill_jax import kinds
from distill_jax.config import TrainConfig


class ZippedBatches:
    """``main``'s batches with the token groups of ``extras`` added under their prefixes.

    Args:
      main: the first student's loader (its groups, ``mask``, ``weight``, ``index``, ``teacher_scores``).
      extras: ``{prefix: (loader, groups)}``.
      drop: keys of ``main``'s batch to leave out (online: the data's ``teacher_scores``).
    """

    def __init__(self, main, extras: dict[str, tuple[Any, tuple[str, ...]]], drop: tuple[str, ...] = ()):
        self.main, self.extras, self.drop = main, extras, drop

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, Any]:
        batch = {k: v for k, v in next(self.main).items() if k not in self.drop}
        for prefix, (loader, groups) in self.extras.items():
            other = next(loader)
            if not np.array_equal(np.asarray(other["index"]), np.asarray(batch["index"])):
                raise RuntimeError(f"the {prefix!r} view of the data is out of step with the student's "
                                   f"(records {other['index'][:4]} vs {batch['index'][:4]})")
            batch.update({prefix + g: other[g] for g in groups})
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"main": self.main.get_state(), **{p: loader.get_state() for p, (loader, _) in self.extras.items()}}

    def set_state(self, state: dict[str, Any]) -> None:
        self.main.set_state(state["main"])
        for prefix, (loader, _) in self.extras.items():
            loader.set_state(state[prefix])


def loader_for_run(cfg: TrainConfig, vocab_size: int, teacher_vocab_size: int | None = None):
    """The batch iterator of a run: :func:`distill_jax.data.pipeline.loader_for` of its (first) student, zipped
    with the views an online teacher or a student of another layout needs (see the module docstring)."""
    from distill_jax.data.pipeline import loader_for

    subs = cfg.student_configs()
    first = subs[0][1]
    main = loader_for(first, vocab_size)
    layout = kinds.get(first.model.kind).layout
    extras = {}
    for name, sub in subs[1:]:
        kind = kinds.get(sub.model.kind)
        if kind.layout != layout:
            extras[f"{name}/"] = (loader_for(sub, vocab_size), kind.groups)
    teacher_kind = kinds.get(cfg.teacher.model.kind)
    if cfg.teacher.online and teacher_kind.layout != layout:
        teacher = dataclasses.replace(first, model=dataclasses.replace(first.model, kind=teacher_kind.name))
        extras["teacher_"] = (loader_for(teacher, teacher_vocab_size or vocab_size), teacher_kind.groups)
    elif cfg.teacher.online and teacher_vocab_size not in (None, vocab_size):
        raise ValueError(f"the online teacher reads the student's tokens (same layout), but its vocabulary has "
                         f"{teacher_vocab_size} rows and the student's {vocab_size}: teacher and student need the "
                         "same tokenizer")
    if not extras:
        return main
    return ZippedBatches(main, extras, drop=("teacher_scores",) if cfg.teacher.online else ())
