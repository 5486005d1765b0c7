"""The one writer of teacher-score datasets: shard by shard, atomically, resumable; the last shard finalises."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence

from distill_jax.data.collections import DataError
from distill_jax.data.scores.checks import RecordChecker, validated
from distill_jax.data.scores.schema import (DATASET_NAME, DONE_SUFFIX, VERSION, features, metadata, own_files,
                                            record_serializer, sha256_file, shard_done, shard_path)


MANIFEST = "import_manifest.json"  # what build_teacher_scores wrote a dataset from (its own file)


def build_teacher_scores(records: Callable[[], Iterable[dict]], data_dir: str, teacher_names: Sequence[str],
                         checker: RecordChecker | None = None, num_shards: int = 1, *,
                         inputs: Mapping | None = None, overwrite: bool = False) -> str:
    """Writes a whole dataset (through :func:`write_teacher_scores`); returns its directory.

    Args:
      records: a callable returning an iterable of records (:func:`make_record` dicts), called once.
      data_dir: the dataset lands in ``data_dir/teacher_scores/1.0.0``, as TFDS lays out a data directory.
      teacher_names: one name per score column.
      checker: validates records under its policy (None: the "raise" policy).
      num_shards: shards written (records split contiguously).
      inputs: JSON-able description of where the records came from (input file sizes and hashes, arguments);
        recorded in ``import_manifest.json`` with the records' own hash.
      overwrite: replace a dataset that was written from other inputs.

    A dataset already in place is rewritten when it was written from the same inputs (same manifest). One written
    from other inputs, or by another writer (no manifest of this writer), is refused with a :class:`DataError`
    naming what changed, unless ``overwrite``; then only this writer's files (shards, completion records, TFDS
    metadata, manifest) are removed, never other files. The records are read and checked before anything is
    removed, so a bad input never costs the dataset already there.
    """
    import hashlib

    import numpy as np

    out = os.path.join(data_dir, DATASET_NAME, VERSION)
    if os.path.exists(out) and not os.path.isdir(out):
        raise DataError(f"{out} is a file, not a dataset directory; pass another output directory")
    checker = checker or RecordChecker(out, num_teachers=len(teacher_names))
    good = list(validated(records(), checker))
    digest = hashlib.sha256()
    for rec in good:  # the records' content, in order: what the shards will hold
        digest.update(json.dumps([rec["qid"], list(rec["pids"])]).encode())
        digest.update(np.ascontiguousarray(rec["labels"], np.int32).tobytes())
        digest.update(np.ascontiguousarray(rec["scores"], np.float32).tobytes())
    manifest = {"writer": "build_teacher_scores", "teacher_names": list(teacher_names), "num_shards": num_shards,
                "inputs": json.loads(json.dumps(inputs)) if inputs is not None else None,
                "records": len(good), "records_sha256": digest.hexdigest()}
    existing = own_files(out)
    if existing:
        old = _read_json(os.path.join(out, MANIFEST))
        if old != manifest and not overwrite:
            what = (f"it was written from other inputs ({manifest_difference(old, manifest)})" if old else
                    f"it holds a dataset ({existing[0]}, ...) with no {MANIFEST}: written by another command")
            raise DataError(f"{out}: {what}. Pass --overwrite (overwrite=True) to replace it (only the dataset's "
                            "own files are removed), or write to another --out")
        for name in existing + ([MANIFEST] if os.path.exists(os.path.join(out, MANIFEST)) else []):
            os.remove(os.path.join(out, name))  # this writer's names only (schema.own_files)
    os.makedirs(out, exist_ok=True)
    atomic_json(os.path.join(out, MANIFEST), manifest)
    bounds = np.linspace(0, len(good), num_shards + 1).round().astype(int)
    for s in range(num_shards):
        write_teacher_scores(good[bounds[s]:bounds[s + 1]], out, s, num_shards, teacher_names, validate=False,
                             checker=RecordChecker(out, num_teachers=len(teacher_names)))
    return out


def manifest_difference(old: Mapping | None, new: Mapping, prefix: str = "") -> str:
    """The first field where two manifests differ, as ``field: old -> new`` (nested fields dotted)."""
    old = old or {}
    for key in list(new) + [k for k in old if k not in new]:
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            return manifest_difference(a, b, f"{prefix}{key}.")
        short = lambda v: (json.dumps(v)[:77] + "...") if len(json.dumps(v)) > 80 else json.dumps(v)  # noqa: E731
        return f"{prefix}{key}: {short(a)} -> {short(b)}"
    return "no difference"


def _read_json(path: str):
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError:
        return None


def write_teacher_scores(records: Iterable[dict], out_dir: str, shard_index: int, num_shards: int,
                         teacher_names: Sequence[str], *, split: str = "train",
                         checker: RecordChecker | None = None, validate: bool = True,
                         finalize: bool = True) -> dict:
    """Writes ONE shard atomically; finalises the dataset when it was the last missing shard.

    Args:
      records: the shard's records (:func:`make_record` dicts), in order.
      out_dir: the dataset directory (all shards and ``dataset_info.json`` live directly in it).
      shard_index, num_shards: this shard's position; the file name carries both (TFDS naming).
      teacher_names: one per score column; must agree across shards.
      checker: validates records (None: a default :class:`RecordChecker` with the "raise" policy).
      validate: False writes records unchecked (only to reproduce a foreign writer's bad data in tests; the
        loader checks every record again anyway).
      finalize: write the dataset metadata when this was the last missing shard (False: the caller finalises,
        e.g. one process of a multi-host scorer after a barrier, so two writers never race on it).

    The shard's bytes are a function of the records only (deterministic serialisation, no timestamps), so two
    identical runs write identical files and dataset fingerprints.

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
    serialize = record_serializer()
    path = shard_path(out_dir, shard_index, num_shards, split)
    tmp = f"{path}.tmp-{os.getpid()}"
    count = 0
    # group_size:1 makes every record its own chunk: O(1) random access, as TFDS writes it
    writer = ArrayRecordWriter(tmp, "group_size:1")
    try:
        for rec in validated(records, checker) if validate else records:
            writer.write(serialize(rec))
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
    if finalize and all(shard_done(out_dir, i, num_shards, split) for i in range(num_shards)):
        finalize_teacher_scores(out_dir, num_shards, teacher_names, split)
    return summary


def finalize_teacher_scores(out_dir: str, num_shards: int, teacher_names: Sequence[str],
                            split: str = "train") -> None:
    """Writes TFDS's ``dataset_info.json``/``features.json``/``metadata.json`` for shards written one by one
    (each file atomically; the content is a function of the shards' completion records only)."""
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
    # written beside, then renamed into place one file at a time (dataset_info.json, which readers look for,
    # last): a reader never sees a half-written file, and two finalisers (independent jobs finishing together)
    # each rename complete, identical files
    tmp = tempfile.mkdtemp(prefix=".finalize-", dir=out_dir)
    try:
        info.write_to_directory(tmp)
        names = sorted(os.listdir(tmp), key=lambda n: n == "dataset_info.json")
        for name in names:
            os.replace(os.path.join(tmp, name), os.path.join(out_dir, name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # our own temporary directory only


def atomic_json(path: str, obj) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)
