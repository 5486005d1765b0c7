"""The TFDS layout of a teacher-score dataset: features of one record, metadata, shard file names."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence

import numpy as np

DATASET_NAME = "teacher_scores"
SCHEMA_VERSION = 1
VERSION = "1.0.0"
DONE_SUFFIX = ".done.json"  # the completion record beside a finished shard


def features():
    """The TFDS features of one record (see the module docstring)."""
    import tensorflow_datasets as tfds

    return tfds.features.FeaturesDict({
        "qid": tfds.features.Text(),
        "pids": tfds.features.Sequence(tfds.features.Text()),
        "labels": tfds.features.Tensor(shape=(None,), dtype=np.int32),
        # two unknown dims need an explicit encoding; "bytes" is raw float32, no compression cost on read
        "scores": tfds.features.Tensor(shape=(None, None), dtype=np.float32, encoding="bytes"),
    })


def metadata(teacher_names: Sequence[str]):
    import tensorflow_datasets as tfds

    return tfds.core.MetadataDict(teacher_names=list(teacher_names), schema_version=SCHEMA_VERSION)


def shard_path(out_dir: str, shard_index: int, num_shards: int, split: str = "train") -> str:
    """TFDS's file name for shard ``shard_index`` of ``num_shards``."""
    return os.path.join(out_dir, f"{DATASET_NAME}-{split}.array_record-{shard_index:05d}-of-{num_shards:05d}")


def shard_done(out_dir: str, shard_index: int, num_shards: int, split: str = "train") -> bool:
    """True when the shard and its completion record were both written (a resumable scorer skips it)."""
    path = shard_path(out_dir, shard_index, num_shards, split)
    return os.path.exists(path) and os.path.exists(path + DONE_SUFFIX)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def shard_sha256(path: str) -> str:
    """The shard's content hash: from its completion record when that matches the file size, else computed
    (about 1 s a GB; a MS MARCO dataset of 500k x 64 candidates is about 0.5 GB)."""
    done = path + DONE_SUFFIX
    if os.path.exists(done):
        with open(done) as f:
            summary = json.load(f)
        if summary.get("num_bytes") == os.path.getsize(path) and "sha256" in summary:
            return summary["sha256"]
    return sha256_file(path)
