"""The one writer of teacher-score datasets: shard by shard, atomically, resumable; the last shard finalises."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence

from distill_jax.data.collections import DataError
from distill_jax.data.scores.checks import RecordChecker, validated
from distill_jax.data.scores.schema import (DATASET_NAME, DONE_SUFFIX, VERSION, features, metadata, sha256_file,
                                            shard_done, shard_path)


def build_teacher_scores(records: Callable[[], Iterable[dict]], data_dir: str, teacher_names: Sequence[str],
                         checker: RecordChecker | None = None, num_shards: int = 1) -> str:
    """Writes a whole dataset (through :func:`write_teacher_scores`); returns its directory.

    Args:
      records: a callable returning an iterable of records (:func:`make_record` dicts), called once.
      data_dir: the dataset lands in ``data_dir/teacher_scores/1.0.0``, as TFDS lays out a data directory. A
        dataset already there is replaced, shard files and metadata (never other files).
      teacher_names: one name per score column.
      checker: validates records under its policy (None: the "raise" policy).
      num_shards: shards written (records split contiguously).
    """
    import numpy as np

    out = os.path.join(data_dir, DATASET_NAME, VERSION)
    if os.path.isdir(out):
        for name in os.listdir(out):  # only what this writer writes: a rebuild must not mix old shards in
            if name.startswith(f"{DATASET_NAME}-") or name in ("dataset_info.json", "features.json",
                                                              "metadata.json"):
                os.remove(os.path.join(out, name))
    recs = list(records())
    checker = checker or RecordChecker(out, num_teachers=len(teacher_names))
    good = list(validated(recs, checker))
    bounds = np.linspace(0, len(good), num_shards + 1).round().astype(int)
    for s in range(num_shards):
        write_teacher_scores(good[bounds[s]:bounds[s + 1]], out, s, num_shards, teacher_names, validate=False,
                             checker=RecordChecker(out, num_teachers=len(teacher_names)))
    return out


def write_teacher_scores(records: Iterable[dict], out_dir: str, shard_index: int, num_shards: int,
                         teacher_names: Sequence[str], *, split: str = "train",
                         checker: RecordChecker | None = None, validate: bool = True) -> dict:
    """Writes ONE shard atomically; finalises the dataset when it was the last missing shard.

    Args:
      records: the shard's records (:func:`make_record` dicts), in order.
      out_dir: the dataset directory (all shards and ``dataset_info.json`` live directly in it).
      shard_index, num_shards: this shard's position; the file name carries both (TFDS naming).
      teacher_names: one per score column; must agree across shards.
      checker: validates records (None: a default :class:`RecordChecker` with the "raise" policy).
      validate: False writes records unchecked (only to reproduce a foreign writer's bad data in tests; the
        loader checks every record again anyway).

    Returns:
      the shard summary written next to it: ``{"num_records", "num_bytes", "sha256", "teacher_names",
      "skipped"}``.
    """
    from array_record.python.array_record_module import ArrayRecordWriter

    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index {shard_index} not in [0, {num_shards})")
    os.makedirs(out_dir, exist_ok=True)
    checker = checker or RecordChecker(out_dir, num_teachers=len(teacher_names))
    checker.num_teachers = checker.num_teachers or len(teacher_names)
    if checker.num_teachers != len(teacher_names):
        raise ValueError(f"{len(teacher_names)} teacher names but records have {checker.num_teachers} columns")
    feats = features()
    path = shard_path(out_dir, shard_index, num_shards, split)
    tmp = f"{path}.tmp-{os.getpid()}"
    count = 0
    # group_size:1 makes every record its own chunk: O(1) random access, as TFDS writes it
    writer = ArrayRecordWriter(tmp, "group_size:1")
    try:
        for rec in validated(records, checker) if validate else records:
            writer.write(feats.serialize_example(rec))
            count += 1
    except BaseException:
        writer.close()
        os.remove(tmp)
        raise
    writer.close()
    summary = {"num_records": count, "num_bytes": os.path.getsize(tmp), "sha256": sha256_file(tmp),
               "teacher_names": list(teacher_names), "skipped": checker.finish()}
    os.replace(tmp, path)
    atomic_json(path + DONE_SUFFIX, summary)
    if all(shard_done(out_dir, i, num_shards, split) for i in range(num_shards)):
        finalize_teacher_scores(out_dir, num_shards, teacher_names, split)
    return summary


def finalize_teacher_scores(out_dir: str, num_shards: int, teacher_names: Sequence[str],
                            split: str = "train") -> None:
    """Writes TFDS's ``dataset_info.json``/``features.json``/``metadata.json`` for shards written one by one."""
    import tensorflow_datasets as tfds

    summaries = []
    for i in range(num_shards):
        with open(shard_path(out_dir, i, num_shards, split) + DONE_SUFFIX) as f:
            summaries.append(json.load(f))
        if summaries[-1]["teacher_names"] != list(teacher_names):
            raise DataError(f"{out_dir}: shard {i} was written with teachers {summaries[-1]['teacher_names']}, "
                            f"not {list(teacher_names)}; rewrite it")
    identity = tfds.core.DatasetIdentity(name=DATASET_NAME, version=tfds.core.Version(VERSION), data_dir=out_dir,
                                         module_name="distill_jax.data.scores")
    info = tfds.core.DatasetInfo(builder=identity, features=features(), disable_shuffling=True,
                                 metadata=metadata(teacher_names))
    template = tfds.core.ShardedFileTemplate(data_dir=out_dir, dataset_name=DATASET_NAME, split=split,
                                             filetype_suffix="array_record")
    info.set_file_format("array_record")
    info.set_splits(tfds.core.SplitDict([tfds.core.SplitInfo(
        name=split, shard_lengths=[s["num_records"] for s in summaries],
        num_bytes=sum(s["num_bytes"] for s in summaries), filename_template=template)]))
    info.write_to_directory(out_dir)


def atomic_json(path: str, obj) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)
