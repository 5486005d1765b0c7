"""Opening a teacher-score dataset (no TensorFlow: TFDS's ``as_data_source`` over ArrayRecord shards)."""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os

import numpy as np

from distill_jax.data.collections import DataError
from distill_jax.data.scores.schema import DATASET_NAME, DONE_SUFFIX, SCHEMA_VERSION, verified_sha256


@dataclasses.dataclass(frozen=True)
class TeacherScoreDataset:
    """An opened teacher-score dataset.

    Attributes:
      source: random-access TFDS data source (``len``, ``[i]`` -> record dict with bytes ids).
      teacher_names: the score columns' names.
      fingerprint: sha256 over the schema, teacher names, shard names, shard content hashes and record counts
        (stable when the directory is copied): the loader refuses to resume onto different data.
      path: the dataset directory.
    """

    source: object
    teacher_names: tuple[str, ...]
    fingerprint: str
    path: str

    def __len__(self) -> int:
        return len(self.source)

    def record(self, index: int) -> dict:
        """Record ``index`` with str ids: ``{"qid", "pids", "labels" [M], "scores" [M, T]}``."""
        return decode(self.source[index])


def decode(raw: dict) -> dict:
    dec = lambda x: x.decode("utf-8") if isinstance(x, bytes) else str(x)  # noqa: E731
    return {"qid": dec(raw["qid"]), "pids": [dec(p) for p in raw["pids"]],
            "labels": np.asarray(raw["labels"], np.int32), "scores": np.asarray(raw["scores"], np.float32)}


def find_dataset_dir(path: str) -> str:
    """The directory holding ``dataset_info.json``: ``path`` itself or ``path/teacher_scores/<version>``."""
    for cand in [path, *sorted(glob.glob(os.path.join(path, DATASET_NAME, "*")), reverse=True)]:
        if os.path.exists(os.path.join(cand, "dataset_info.json")):
            return cand
    raise DataError(f"{path}: no dataset_info.json here nor in {DATASET_NAME}/<version>/; write the dataset "
                    "with `distill-jax import-scores` or `distill-jax score` first (an unfinished shard-by-shard "
                    "write has no dataset_info.json until its last shard is written)")


def load_teacher_scores(path: str, split: str = "train") -> TeacherScoreDataset:
    """Opens a dataset written by either writer (no TensorFlow involved).

    Every shard is checked against its completion record first (size, then sha256 once per process: see
    :func:`~distill_jax.data.scores.schema.verified_sha256`), so a truncated or corrupted shard is named here with
    its file, not met later as a decoding error deep in the loader.
    """
    import tensorflow_datasets as tfds

    directory = find_dataset_dir(path)
    builder = tfds.builder_from_directory(directory)
    meta = dict(builder.info.metadata or {})
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise DataError(f"{directory}: schema_version {meta.get('schema_version')!r}, this code reads "
                        f"{SCHEMA_VERSION}; rewrite the dataset with this version")
    info = builder.info.splits[split]
    files = [os.path.basename(f) for f in info.filenames]
    lengths = [int(x) for x in info.shard_lengths]
    digests = [verified_sha256(os.path.join(directory, f)) for f in files]
    for name, length in zip(files, lengths):
        done = os.path.join(directory, name + DONE_SUFFIX)
        if os.path.exists(done):
            with open(done) as f:
                written = json.load(f).get("num_records", length)
            if written != length:
                raise DataError(f"{os.path.join(directory, name)}: {written} records written but dataset_info.json "
                                f"lists {length}: the metadata belongs to another write; rerun the command that "
                                "wrote this dataset (it rewrites dataset_info.json)")
    ident = {"schema": SCHEMA_VERSION, "teachers": list(meta["teacher_names"]), "files": files,
             "sha256": digests, "lengths": lengths}
    fingerprint = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
    return TeacherScoreDataset(builder.as_data_source(split), tuple(meta["teacher_names"]), fingerprint,
                               directory)
